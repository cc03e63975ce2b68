"""compare, report and leaderboard on live and damaged studies, read from real MLflow stores (SQLite,
runs written by bench.tracking's own writer): a trial still running is shown and counted, never
ranked; a damaged run is skipped with one warning naming it; an oversized or special-file samples
artifact is left out with one warning. Then `bench compare` and `bench report` on a real `bench run`
caught with a trial running, and hypothesis's MLflow run records fed to the reader."""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import time
import warnings
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow.entities import Metric, Param, Run, RunData, RunInfo, RunTag
from optuna.trial import TrialState
from PIL import Image

from bench.cli import main
from bench.compare import compare_study, figure_images, report_lines
from bench.config import TrainConfig
from bench.errors import BenchError, ConfigError
from bench.progress import StudyProgress
from bench.ranking import leaderboard, rank
from bench.registry import get_variant
from bench.readers import MAX_IMAGE_PIXELS
from bench.report import render
from bench.schema import RUNNING, TRIAL_STATES, DamagedRun, Tag, study_tags, tag_column, trial_frame, trial_tags
from bench.storage import MAX_RETRIES
from bench.study import load_study
from bench.tracking import FINAL_SAMPLES, MAX_SAMPLES_BYTES, Tracking, TrackingStore
from bench.trials import run_again
from tests.helpers import BENCH, TINY_STUDY, bench_here, clean_env

STUDY = "live"
OBJECTIVE = "fid_domain"


class Study:
    """A study in a fresh SQLite store, its trials written as `bench run` writes them."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.uri = f"sqlite:///{folder / 'mlflow.db'}"
        self.store = TrackingStore.open(self.uri, create=True)
        self.tracking = Tracking(self.store, STUDY, folder / "artifacts")
        self.parent = self.tracking.start_parent(study_tags(STUDY, ["gan", "dcgan"], "digits", "domain", []), {})
        self.trials = 0

    def trial(self, variant: str, value: float | None, state: str | None = "complete",
              objective: str = OBJECTIVE, samples: Path | None = None) -> str:
        """A trial of ``variant`` that recorded ``value`` and ended in ``state`` (None: still running)."""
        config = TrainConfig(variant, "digits", seed=self.trials)
        run = self.tracking.start_trial(self.parent, config, trial_tags(config, self.trials, study=STUDY,
                                                                        objective=objective))
        self.trials += 1
        if value is not None:
            self.store.client.log_metric(run.run_id, objective, value, step=20)
        if samples is not None:
            self.store.client.log_artifact(run.run_id, str(samples), FINAL_SAMPLES)
        if state is not None:
            self.tracking.end(run.run_id, state)
        return run.run_id

    def artifact_path(self, run_id: str, name: str) -> Path:
        uri = self.store.client.get_run(run_id).info.artifact_uri
        return Path(uri.removeprefix("file://")) / FINAL_SAMPLES / name


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An empty MLflow store, its tables made once (seconds) and copied for each test."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    TrackingStore.open(f"sqlite:///{path}", create=True)
    return path


@pytest.fixture
def study(tmp_path, monkeypatch, empty_store):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the writer sets it process-wide
    previous = mlflow.get_tracking_uri()
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    yield Study(tmp_path)
    mlflow.flush_async_logging()
    mlflow.set_tracking_uri(previous)


def grid(folder: Path, name: str = "step_0000040.png", side: int = 64) -> Path:
    path = folder / name
    Image.fromarray((np.arange(side * side * 3) % 251).astype(np.uint8).reshape(side, side, 3)).save(path)
    return path


def command(*args: str):
    """`bench ARGS` run in this process: exit code, stdout, and stderr (each warning a line of it)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr + "".join(f"{m}\n" for m in damaged(caught))


def damaged(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, DamagedRun)]


# -- a trial still running ------------------------------------------------------------------------

def test_a_running_trial_is_shown_and_counted_never_ranked(study, tmp_path):
    for variant, values in (("gan", [40.0, 30.0]), ("dcgan", [25.0, 35.0])):
        for value in values:
            study.trial(variant, value)
    running = study.trial("gan", 1.0, state=None)  # better than all, but not over: not ranked yet

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        comparison = compare_study(STUDY, study.uri)
        board = leaderboard(study.uri, STUDY)
        page = render(STUDY, study.store)
    assert not damaged(caught)
    assert comparison.running == 1
    row = comparison.trials.set_index("run_id").loc[running]
    assert row["state"] == RUNNING and math.isnan(row["seconds"])
    summary = comparison.summary.set_index("variant")
    assert summary.loc["gan", ["complete", RUNNING]].tolist() == [2, 1]
    assert summary.loc["gan", "best"] == 30.0 and summary.loc["dcgan", "best"] == 25.0
    fid = board[board["metric"] == OBJECTIVE].set_index("variant")
    assert fid.loc["gan", "best"] == 30.0 and fid.loc["gan", RUNNING] == 1 and fid.loc["dcgan", RUNNING] == 0
    assert "The study is still running: 1 trial running" in page

    code, out, err = command("compare", "--study", STUDY, "--tracking-uri", study.uri, "-o", str(tmp_path / "c"))
    assert code == 0, err
    assert "still running: 1 trial running" in out
    assert (tmp_path / "c" / "best_by_seconds.png").stat().st_size > 5000
    code, out, err = command("report", "--study", STUDY, "--tracking-uri", study.uri, "-o", str(tmp_path / "r.html"))
    assert code == 0, err
    assert "still running: 1 trial running" in (tmp_path / "r.html").read_text()


def test_a_study_whose_every_trial_is_running_is_reported_as_such_and_compared_in_one_line(study, tmp_path):
    study.trial("gan", None, state=None)
    study.trial("dcgan", 12.0, state=None)  # kill -9 before the first trial ended leaves this

    with pytest.raises(ConfigError, match=r"no complete trial with fid_domain yet \(2 running\)"):
        compare_study(STUDY, study.uri)
    assert leaderboard(study.uri, STUDY).empty
    for args in (("compare", "--study", STUDY), ("leaderboard", "--study", STUDY)):
        code, out, err = command(*args, "--tracking-uri", study.uri)
        assert code == 2, (args, out, err)
        assert err.strip().count("\n") == 0 and err.startswith("Error:"), err
    code, out, err = command("report", "--study", STUDY, "--tracking-uri", study.uri, "-o", str(tmp_path / "r.html"))
    assert code == 0, err
    page = (tmp_path / "r.html").read_text()
    assert "The study is still running: 2 trials running, none complete yet" in page


# -- damaged runs ----------------------------------------------------------------------------------

DAMAGES = {  # what a damaged run holds, and what its warning says
    f"no {Tag.TRIAL} tag": lambda client, run: client.delete_tag(run, Tag.TRIAL),
    f"no {Tag.VARIANT} tag": lambda client, run: client.delete_tag(run, Tag.VARIANT),
    f"no {Tag.STATE} tag": lambda client, run: client.delete_tag(run, Tag.STATE),
    "no bench.study tag": lambda client, run: client.delete_tag(run, "bench.study"),
    "'seven' is not a whole number": lambda client, run: client.set_tag(run, Tag.TRIAL, "seven"),
    r"'done\\nmaybe' is none of": lambda client, run: client.set_tag(run, Tag.STATE, "done\nmaybe"),
    "complete with fid_domain = inf": lambda client, run: client.log_metric(run, OBJECTIVE, math.inf, step=40),
    "complete with fid_domain = -inf": lambda client, run: client.log_metric(run, OBJECTIVE, -math.inf, step=40),
    "complete with fid_domain = nan": lambda client, run: client.log_metric(run, OBJECTIVE, math.nan, step=40),
    "'nonsense' is not a score": lambda client, run: client.set_tag(run, Tag.OBJECTIVE, "nonsense"),
}


def test_each_damaged_run_is_skipped_with_one_warning_that_names_it_and_what_is_wrong(study, tmp_path):
    kept = [study.trial("gan", 30.0), study.trial("gan", 40.0), study.trial("dcgan", 20.0)]
    broken = {}
    for says, damage in DAMAGES.items():  # each better than every kept trial, had it been read
        broken[says] = study.trial("dcgan", 10.0, samples=grid(tmp_path))
        damage(study.store.client, broken[says])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        comparison = compare_study(STUDY, study.uri)
        images = figure_images(comparison, study.store)
    messages = damaged(caught)
    assert len(messages) == len(DAMAGES), messages
    for says, run in broken.items():
        assert [m for m in messages if run in m], (run, messages)
        assert re.fullmatch(f"skipped MLflow run {run}: .*{says}.*", next(m for m in messages if run in m))
    assert sorted(comparison.trials["run_id"]) == sorted(kept)
    assert comparison.summary.set_index("variant").loc["dcgan", "best"] == 20.0
    assert {"best_of_k.png", "best_by_seconds.png", "trial_scores.png"} <= set(images)
    assert "best_samples.png" not in images  # only the skipped runs logged samples

    with pytest.warns(DamagedRun, match=broken["'nonsense' is not a score"]):
        board = leaderboard(study.uri, STUDY)
    assert board[board["metric"] == OBJECTIVE].set_index("variant")["best"].to_dict() == {"gan": 30.0, "dcgan": 20.0}
    with pytest.warns(DamagedRun, match=broken["no bench.trial tag"]):
        page = render(STUDY, study.store)
    assert "<b class='best'>20</b>" in page
    code, out, err = command("report", "--study", STUDY, "--tracking-uri", study.uri,
                                     "-o", str(tmp_path / "r.html"))
    assert code == 0 and all(run in err for run in broken.values()), err


def test_an_infinite_objective_on_a_trial_that_did_not_complete_is_no_score_and_no_crash(study):
    study.trial("gan", 30.0)
    study.trial("gan", math.inf, state="failed")
    study.trial("gan", -math.inf, state=None)
    study.trial("gan", None, state="retried")  # stopped and queued again: not a failure
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        comparison = compare_study(STUDY, study.uri)
        images = figure_images(comparison, study.store)
    assert not damaged(caught)
    counts = comparison.summary.set_index("variant").loc["gan", ["complete", "failed", RUNNING, "retried"]]
    assert counts.tolist() == [1, 1, 1, 1]
    assert comparison.trials["value"].isna().sum() == 3 and "best_by_seconds.png" in images


# -- artifacts -------------------------------------------------------------------------------------

def test_a_samples_artifact_over_the_pixel_limit_is_refused_from_its_header_with_one_warning(study, tmp_path):
    huge = tmp_path / "huge"
    huge.mkdir()
    side = 12000  # 144 megapixels: under PIL's own limit, a minute to decode and draw
    assert side * side > MAX_IMAGE_PIXELS
    Image.new("1", (side, side)).save(huge / "step_0000040.png")  # 1 bit a pixel compresses to a few kB
    run = study.trial("gan", 20.0, samples=huge / "step_0000040.png")
    study.trial("dcgan", 25.0, samples=grid(tmp_path))

    started = time.monotonic()
    with pytest.warns(DamagedRun) as caught:
        page = render(STUDY, study.store)
    assert time.monotonic() - started < 30
    assert len(damaged(caught)) == 1, damaged(caught)  # the card and the figure share one read
    assert re.search(rf"final samples of MLflow run {run} .* is 12000x12000 pixels, over the", damaged(caught)[0])
    assert not re.search(r'<img alt="samples of gan"', page)
    assert re.search(r'<img alt="samples of dcgan" src="data:image/png;base64,', page)

    code, out, err = command("compare", "--study", STUDY, "--tracking-uri", study.uri, "-o", str(tmp_path / "c"))
    assert code == 0 and "12000x12000" in err, err
    assert (tmp_path / "c" / "best_samples.png").exists()  # dcgan's grid


def test_a_samples_artifact_of_too_many_bytes_is_refused_before_it_is_read(study, tmp_path):
    run = study.trial("gan", 20.0, samples=grid(tmp_path))
    with study.artifact_path(run, "step_0000040.png").open("r+b") as artifact:
        artifact.truncate(MAX_SAMPLES_BYTES + 1)  # sparse: no disk, nothing written
    with pytest.warns(DamagedRun, match=rf"final samples of MLflow run {run} .* hold 67,108,865 bytes, over"):
        page = render(STUDY, study.store)
    assert "<b class='best'>20</b>" in page and '<img alt="samples of gan"' not in page


def test_a_fifo_as_samples_artifact_is_refused_by_type_unopened(study, tmp_path):
    run = study.trial("gan", 20.0, samples=grid(tmp_path))
    artifact = study.artifact_path(run, "step_0000040.png")
    artifact.unlink()
    os.mkfifo(artifact)  # opening it for reading would block for ever

    code, out, err = command("report", "--study", STUDY, "--tracking-uri", study.uri, "-o", str(tmp_path / "r.html"))
    assert code == 0, err
    assert re.search(rf"final samples of MLflow run {run} .* is a FIFO, refused unopened", err), err
    assert "tracking server" not in err
    code, out, err = command("compare", "--study", STUDY, "--tracking-uri", study.uri, "-o", str(tmp_path / "c"))
    assert code == 0 and "is a FIFO" in err, err
    assert not (tmp_path / "c" / "best_samples.png").exists()


# -- a real study, caught with a trial running ----------------------------------------------------

LIVE_STUDY = TINY_STUDY.format(steps=40, eval_every=20)


@pytest.mark.e2e
def test_compare_and_report_on_a_real_study_with_a_trial_still_running(tmp_path):
    """`bench run` is stopped (SIGSTOP) once trial 0 is complete and trial 1's run is open, so that
    the trial stays running while `bench compare` and `bench report` read the study."""
    (tmp_path / "live.toml").write_text(LIVE_STUDY)
    process = subprocess.Popen([BENCH, "run", "--variant", "gan", "--study", "live.toml"], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                               env=clean_env())
    uri = f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("gan trial 0 complete"):
                break
        assert lines and lines[-1].startswith("gan trial 0 complete"), "".join(lines)
        client = mlflow.MlflowClient(uri)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            runs = client.search_runs([client.get_experiment_by_name("live").experiment_id],
                                      "tags.`bench.kind` = 'trial'")
            if len(runs) == 2 and {run.info.status for run in runs} == {"FINISHED", "RUNNING"}:
                break
            time.sleep(0.05)
        else:
            pytest.fail("trial 1 never started: " + "".join(lines))
        os.killpg(process.pid, signal.SIGSTOP)

        compared = bench_here("compare", "--study", "live", "-o", "out", cwd=tmp_path)
        assert compared.returncode == 0, compared.stderr[-3000:]
        assert "the study is still running: 1 trial running" in compared.stdout, compared.stdout
        assert re.search(r"^\s*gan\s+1\s+0\s+0\s+1\s", compared.stdout, re.MULTILINE), compared.stdout
        reported = bench_here("report", "--study", "live", "-o", "report.html", cwd=tmp_path)
        assert reported.returncode == 0, reported.stderr[-3000:]
        page = (tmp_path / "report.html").read_text()
        assert "The study is still running: 1 trial running" in page
        assert re.search(r'<img alt="samples of gan" src="data:image/png;base64,', page)
    finally:
        os.killpg(process.pid, signal.SIGCONT)
        os.killpg(process.pid, signal.SIGTERM)
        process.communicate(timeout=120)


# -- hypothesis: MLflow run records ---------------------------------------------------------------

TEXT = st.one_of(st.text(max_size=8), st.sampled_from(["", "0", "1", "-1", "07", "x", "1e3", " 2", "9" * 30]))
TAG_VALUES = {
    Tag.TRIAL: st.one_of(st.integers(0, 50).map(str), TEXT),
    Tag.VARIANT: st.one_of(st.sampled_from(["gan", "dcgan", "<b>x</b>"]), TEXT),
    Tag.STATE: st.one_of(st.sampled_from(TRIAL_STATES), TEXT),
    Tag.OBJECTIVE: st.one_of(st.sampled_from(["fid_domain", "precision_domain", "classes_covered", "loss_g"]),
                             TEXT),
    "bench.seed": st.one_of(st.integers(-(2**70), 2**70).map(str), TEXT),
    "bench.study": st.one_of(st.just("hypothesis"), TEXT), "bench.dataset": st.one_of(st.just("digits"), TEXT),
}
WELL_FORMED = st.fixed_dictionaries({  # as `bench run` writes them, so that records reach the ranking too
    Tag.TRIAL: st.integers(0, 50).map(str), Tag.VARIANT: st.sampled_from(["gan", "dcgan"]),
    "bench.study": st.just("hypothesis"), "bench.dataset": st.sampled_from(["digits", "x"]),
    Tag.STATE: st.sampled_from(["running", "complete", "complete", "pruned", "failed"]),
    Tag.OBJECTIVE: st.sampled_from(["fid_domain", "precision_domain"])})
VALUES = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 1.0, 1e308, -1e308]))
RECORDS = st.fixed_dictionaries({
    "status": st.sampled_from(["RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED"]),
    "start": st.integers(0, 2**42),
    "length": st.one_of(st.none(), st.integers(-10**6, 10**7)),
    "tags": st.one_of(WELL_FORMED, st.fixed_dictionaries({}, optional=TAG_VALUES)),
    "metrics": st.dictionaries(st.sampled_from(["fid_domain", "precision_domain", "recall_domain",
                                                "classes_covered", "loss_g"]), VALUES, max_size=4),
    "seed": st.one_of(st.none(), TEXT),
})


def run_of(number: int, record: dict) -> Run:
    """An MLflow run record as the store hands it back."""
    start, length = record["start"], record["length"]
    end = None if length is None else start + length
    tags = [RunTag(key, value) for key, value in record["tags"].items()] + [RunTag("bench.kind", "trial")]
    params = [Param("seed", record["seed"])] if record["seed"] is not None else []
    metrics = [Metric(key, value, 0, 1) for key, value in record["metrics"].items()]
    info = RunInfo(f"run{number:03d}", "1", "user", record["status"], start, end, "active")
    return Run(info, RunData(metrics=metrics, params=params, tags=tags))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(RECORDS, min_size=1, max_size=6))
def test_every_mlflow_run_record_is_read_or_skipped_with_a_warning_and_never_crashes_a_reader(records):
    runs = [run_of(number, record) for number, record in enumerate(records)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame = trial_frame(runs)
    skipped = damaged(caught)
    assert len(frame) + len(skipped) == len(runs)
    assert all(message.count("\n") == 0 for message in skipped)
    assert {re.match(r"skipped MLflow run (run\d+):", m).group(1) for m in skipped} | set(frame["run_id"]) == {
        run.info.run_id for run in runs}
    if len(frame):
        states = frame[tag_column(Tag.STATE)]
        assert states.isin(TRIAL_STATES).all()
        assert (frame["end_time"].isna() == (states == RUNNING)).all()  # ended, or running with no end
    rank(frame)
    try:
        comparison = compare_study("hypothesis", runs=frame)
    except BenchError:
        return
    assert report_lines(comparison)
    ranked = comparison.trials[comparison.trials["state"] == "complete"]["value"].dropna()
    assert np.isfinite(ranked).all()
    assert comparison.running == int((frame[tag_column(Tag.STATE)] == RUNNING).sum())


def test_a_stopped_trial_is_queued_again_until_its_retries_are_spent_and_counted_as_retried_not_failed():
    """Each stop of a trial queues a retry that lists it (run_again), MAX_RETRIES times; the progress line
    counts those stops as retried, and the last, queued no more, as failed."""
    resolved = load_study("quick").for_variant(get_variant("dcgan"), trials=3)
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name=resolved.name, storage=storage)
    study.tell(study.ask(), 120.0)
    queued = []
    for _ in range(MAX_RETRIES + 1):  # the trial, then each of its retries, stopped
        stopped = study.ask()  # a queued retry comes first
        study.tell(stopped, state=TrialState.FAIL)
        queued.append(run_again(study, stopped.number))
    assert queued == [True] * MAX_RETRIES + [False]
    assert study.trials[-1].system_attrs["retry_history"] == list(range(1, MAX_RETRIES + 1))
    [line], _, finished, wanted = StudyProgress(storage, [(resolved, study)], live=False, every=60, log=None).tally()
    assert line == f"dcgan 1/3 done (0 pruned, 1 failed, {MAX_RETRIES} stopped and retried), best 120", line
    assert (finished, wanted) == (1, 3)
