"""What ganbench records in MLflow is named in bench/schema.py only, and reads back as it was written."""

from __future__ import annotations

import ast
import math
import os
import platform
import subprocess
from pathlib import Path

import mlflow
import pytest

import bench
from bench.config import TrainConfig
from bench.ranking import rank
from bench.registry import ENTRY_POINT_GROUP
from bench.schema import (HEALTH_PREFIX, PACKAGES, RUN_PARAMS, RUNNING, TRIAL_TAGS, VERSION_PREFIX, StudyAttr, Tag,
                          study_tags, tag_column, trial_tags)
from bench.tracking import Tracking, TrackingStore

PACKAGE = Path(bench.__file__).parent
MODULES = {f"bench.{path.stem}" for path in PACKAGE.glob("*.py")}
RECORDED = {*Tag, *StudyAttr}


def recorded_names(source: str) -> list[tuple[int, str]]:
    """Every ``bench.`` name spelled out in the code of ``source`` (string constants and f-string parts,
    docstrings aside) that is a recorded name (a :class:`Tag` or :class:`StudyAttr`), or that is neither
    a module of the package nor the plugins' entry-point group: a tag or attribute written by hand."""
    tree = ast.parse(source)
    docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}  # and attribute ones
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            for word in node.value.replace("`", " ").replace("'", " ").split():
                if "bench." not in word:
                    continue
                name = word[word.index("bench."):].rstrip(".,:;)")
                module = name in MODULES or any(name.startswith(f"{m}.") for m in MODULES)
                if name in RECORDED or not (module or name == ENTRY_POINT_GROUP):
                    found.append((node.lineno, name))
    return found


def test_no_module_but_the_schema_spells_out_a_recorded_name():
    spelled = {f"{path.name}:{line}": name for path in sorted(PACKAGE.glob("*.py")) if path.name != "schema.py"
               for line, name in recorded_names(path.read_text())}
    assert spelled == {}, "name these through bench.schema (Tag, StudyAttr, VERSION_PREFIX)"


def test_the_rule_sees_a_tag_written_as_a_literal_in_every_form():
    source = '''
def f():
    "A docstring may name bench.study, the module."
    tags = {"bench.study": name}
query = "tags.`bench.kind` = 'trial'"
column = f"tags.bench.{key}"
fine = ["bench.cli", "bench.variants", "bench.readers.MAX_IMAGE_PIXELS", "not a name"]
'''
    assert sorted(name for _, name in recorded_names(source)) == ["bench", "bench.kind", "bench.study"]


def test_each_submodule_imports_as_a_module_beside_the_api_names():
    import importlib

    for module in sorted(MODULES):
        assert isinstance(importlib.import_module(module), type(bench)), module
    compare, ranking = importlib.import_module("bench.compare"), importlib.import_module("bench.ranking")

    assert bench.compare is compare and compare.__name__ == "bench.compare"  # `import bench.compare` gives the module
    assert compare.compare_study is bench.compare_study and ranking.leaderboard is bench.leaderboard
    assert not set(bench.__all__) & {module.removeprefix("bench.") for module in MODULES}


def test_every_tag_and_attribute_is_namespaced_and_distinct():
    names = [*Tag, *StudyAttr]
    assert all(name.startswith("bench.") for name in names) and len(set(names)) == len(names)
    assert VERSION_PREFIX.startswith("bench.") and not any(name.startswith(VERSION_PREFIX) for name in names)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # Tracking sets it process-wide
    previous = mlflow.get_tracking_uri()
    yield TrackingStore.open(f"sqlite:///{tmp_path / 'mlflow.db'}", create=True), tmp_path
    mlflow.flush_async_logging()
    mlflow.set_tracking_uri(previous)


def cpu_model() -> str:
    """The CPU's model as lscpu names it where the kernel gives a model name (x86), else the architecture."""
    if "model name" not in Path("/proc/cpuinfo").read_text(errors="replace"):
        return platform.processor() or platform.machine()
    shown = subprocess.run(["lscpu"], capture_output=True, text=True, check=True, env={**os.environ, "LC_ALL": "C"})
    return next(line.split(":", 1)[1].strip() for line in shown.stdout.splitlines() if line.startswith("Model name"))


def test_a_trial_reads_back_as_it_was_written_and_ranks(store):
    store, folder = store
    tracking = Tracking(store, "schema", folder / "artifacts")
    parent = tracking.start_parent(study_tags("schema", ["gan", "dcgan"], "digits", "domain", ["schema:gan"]),
                                   {"objective": "fid_domain"})
    written = {}
    # gan's trial 2 was stopped and queued again, and its retry, trial 3, pruned; trial 5 failed for good.
    for number, (variant, fid, state) in enumerate([("gan", 31.5, "complete"), ("dcgan", 12.25, "complete"),
                                                     ("gan", None, "retried"), ("gan", 40.0, "pruned"),
                                                     ("dcgan", None, None), ("gan", None, "failed")]):
        config = TrainConfig(variant, "digits", seed=100 + number, hparams={"lr": 1e-3 * (number + 1)})
        tags = trial_tags(config, number, study="schema", optuna_study=f"schema:{variant}", objective="fid_domain",
                          retry_of=2 if number == 3 else None, resumed_from=2 if number == 3 else None)
        run = tracking.start_trial(parent, config, tags)
        if fid is not None:
            run.on_scores({"step": 20, "fid_domain": fid})
        if state is not None:
            tracking.end(run.run_id, state, "pruned at step 20" if state == "pruned" else "")
        written[run.run_id] = (number, variant, fid, state or RUNNING, config)
    mlflow.flush_async_logging()

    runs = store.trial_runs("schema").set_index("run_id")
    assert set(runs.index) == set(written)  # the parent run is not a trial
    for run_id, (number, variant, fid, state, config) in written.items():
        row = runs.loc[run_id]
        assert [row[tag_column(tag)] for tag in TRIAL_TAGS] == [str(number), variant, state, "schema", "digits"]
        assert int(row[tag_column(Tag.SEED)]) == config.seed and row[tag_column(Tag.OBJECTIVE)] == "fid_domain"
        assert row[tag_column(Tag.KIND)] == "trial" and row[tag_column(Tag.EXTRACTOR)] == config.features
        assert row[tag_column(VERSION_PREFIX + PACKAGES[1])] and int(row[tag_column(Tag.PID)]) > 0
        assert row[tag_column(Tag.MACHINE)] == f"{cpu_model()}, {len(os.sched_getaffinity(0))} cores"
        assert float(row["params.lr"]) == config.hparams["lr"]
        assert {f"params.{key}" for key in RUN_PARAMS} <= set(row.index)
        assert (math.isnan(row["metrics.fid_domain"]) if fid is None else row["metrics.fid_domain"] == fid)
        assert (row["end_time"] is None or row["end_time"] != row["end_time"]) == (state == RUNNING)
    pruned = runs.loc[[key for key, value in written.items() if value[3] == "pruned"][0]]
    assert pruned[tag_column(Tag.RETRY_OF)] == "2" and pruned[tag_column(Tag.RESUMED_FROM)] == "trial 2"
    assert pruned[tag_column(Tag.END_REASON)] == "pruned at step 20"

    board = rank(store.trial_runs("schema")).set_index("variant")
    assert board.loc["dcgan", "best"] == 12.25 and board.loc["dcgan", RUNNING] == 1
    assert board.loc["gan", "best"] == 31.5
    assert board.loc["gan", ["complete", "pruned", "failed", "retried"]].tolist() == [1, 1, 1, 1]


def test_a_doctor_finding_is_a_health_tag_and_metric(store):
    from bench.observer import Finding

    store, folder = store
    tracking = Tracking(store, "health", folder / "artifacts")
    parent = tracking.start_parent(study_tags("health", ["gan"], "digits", "domain", []), {})
    config = TrainConfig("gan", "digits")
    run = tracking.start_trial(parent, config, trial_tags(config, 0, study="health"))
    finding = Finding(check="mode_collapse", step=40, message="samples alike; lower lr", fatal=False)
    run.on_finding(finding)
    recorded = store.client.get_run(run.run_id).data
    assert recorded.tags[HEALTH_PREFIX + "mode_collapse"].startswith("step 40: ")
    assert recorded.metrics[HEALTH_PREFIX + "mode_collapse"] == 1.0
    assert store.findings(run.run_id)[0].check == "mode_collapse"


def test_a_run_closed_because_its_process_was_gone_takes_the_state_its_trial_ends_in(store):
    """close_orphans closes a dead worker's run as failed before the study knows whether the trial is
    queued again; the recovery that knows then closes it as retried. A run its trial ended keeps its state."""
    from bench.schema import RETRIED
    from bench.tracking import ORPHANED

    store, folder = store
    tracking = Tracking(store, "orphans", folder / "artifacts")
    parent = tracking.start_parent(study_tags("orphans", ["gan"], "digits", "domain", ["orphans:gan"]),
                                   {"objective": "fid_domain"})
    states = {}
    for number, reason in enumerate([f"its process 1 on this host {ORPHANED}", "loss_d became nan"]):
        config = TrainConfig("gan", "digits", seed=number)
        tags = trial_tags(config, number, study="orphans", optuna_study="orphans:gan", objective="fid_domain")
        run = tracking.start_trial(parent, config, tags)
        tracking.end(run.run_id, "failed", reason)
        tracking.end_if_open(run.run_id, RETRIED, "its worker stopped sending heartbeats; queued to run again")
        tags = store.client.get_run(run.run_id).data.tags
        states[reason] = (tags[Tag.STATE], store.client.get_run(run.run_id).info.status)
    assert list(states.values()) == [(RETRIED, "KILLED"), ("failed", "FAILED")]
