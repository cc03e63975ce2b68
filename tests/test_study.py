"""Study files, and `bench run` end to end: real digits (scikit-learn's 8x8 images), real journal file, real SQLite
MLflow store."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

import mlflow
import pandas as pd
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from bench.cli import main
from bench.config import Budget
from bench.errors import ConfigError
from bench.registry import get_variant, variants
from bench.runner import run_studies, run_study
from bench.study import available_studies, load_study
from bench.connections import redact
from tests.helpers import (BENCH, TINY_STUDY, bench, bench_here, clean_env, mlflow_runs, optuna_trials,
                           write_study)

# -- study files -------------------------------------------------------------------------------

def test_every_shipped_study_is_valid_for_the_variants_it_is_meant_for():
    assert {"quick", "lr_sweep", "beta1_sweep", "clip_sweep", "n_critic_sweep", "gp_lambda_sweep",
            "lucic_wide", "literature", "lucic", "lucic_narrow"} <= set(available_studies())
    for name in ("quick", "lr_sweep", "lucic_wide", "literature", "lucic", "lucic_narrow"):
        for variant in variants().values():
            load_study(name).for_variant(variant)
    assert [d.name for d in load_study("clip_sweep").for_variant(get_variant("wgan")).dimensions] == ["clip_c"]
    assert [d.name for d in load_study("lucic_wide").for_variant(get_variant("wgan")).dimensions] == \
        ["lr", "n_critic", "clip_c"]
    assert load_study("lucic_wide").for_variant(get_variant("gan")).dimensions[0].low == 1e-5
    assert [d.name for d in load_study("lucic_narrow").for_variant(get_variant("began")).dimensions] == \
        ["lr", "arch", "beta1", "gamma"]
    # The ablations run every arm on every variant they name: none skipped for a tip the variant lacks.
    for name in ("kurach", "kurach_losses", "ema", "small_data", "small_data_10", "tricks_ablation"):
        spec = load_study(name)
        for variant in spec.variant.split(","):
            resolved = spec.for_variant(get_variant(variant))
            assert resolved.arms == spec.arms and not resolved.skipped_arms, (name, variant, resolved.skipped_arms)
    assert [d.name for d in load_study("lucic").for_variant(get_variant("gan")).dimensions] == ["arch", "loss"]
    for name in ("ema", "small_data", "small_data_10", "tricks_ablation"):  # ablations, for the variants they name
        spec = load_study(name)
        for variant in spec.variant.split(","):
            assert [arm.name for arm in spec.for_variant(get_variant(variant)).arms][0] == "baseline"
    assert load_study("small_data").dataset == "fashion-mnist[1200]"


@pytest.mark.parametrize("text, fragment", [
    ('[space]\nclip_c = { low = 0.001, high = 0.1 }', "has no hyperparameter 'clip_c'"),
    ('[space]\nlr = { low = 1e-5, high = 2.0, log = true }', "out of range"),
    ('[space]\nlr = { low = 0.1, high = 0.01 }', "low < high"),
    ('[space]\nlr = [1, 2]', "write either"),
    ('[space]\nlr = { low = 0.001, high = 0.01, step = 2 }', "unknown key 'step'"),
    ("[budget]\nepochs = -1\neval_every = 10", "budget.epochs must be 0"),
    ("[budget]\nreal_batches = -5\neval_every = 10", "budget.real_batches must be 0"),
    ("[budget]\nreal_batches = 5\nepochs = 1\neval_every = 10", "keep one of them"),
    ("[budget]\nfinal_samples = 1\neval_every = 10", "final_samples"),
    ("[budget]\neval_every = 0", "or 0 with budget.final_samples set"),
    ('pruner = "hyperband"\n[budget]\nepochs = 2\neval_every = 10', "hyperband pruner needs budget.steps"),
])
def test_bad_space_or_budget_names_file_key_and_fix(tmp_path, text, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        load_study(path).for_variant(get_variant("dcgan"))
    assert str(path) in str(info.value) and fragment in str(info.value)


def test_malformed_study_file_and_unknown_study_are_user_errors(tmp_path):
    (tmp_path / "broken.toml").write_text("sampler = tpe\n")  # unquoted string
    result = bench("run", "--variant", "dcgan", "--study", str(tmp_path / "broken.toml"), cwd=tmp_path)
    assert result.returncode == 2 and "not valid TOML" in result.stderr and "Traceback" not in result.stderr
    for args, message in [(["--variant", "wgan", "--study", "beta1_sweep"], "beta1_sweep.toml: [space] beta1"),
                          (["--variant", "dcgan", "--study", "no_such_study"], "available: "),
                          (["--variant", "dcgan", "--study", "quick", "--workers", "0"], "at least 1")]:
        result = CliRunner().invoke(main, ["run", *args])
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit) and message in result.stderr


# -- a real study with two workers -----------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_study(project_folder):
    """`bench run` with 2 worker processes on a 3-trial study, then `bench leaderboard -o`. Each trial trains
    for seconds, so that the second worker, starting a moment after the first, finds a trial left to take."""
    cwd = project_folder("study")
    study = write_study(cwd, "tiny", steps=200, eval_every=100)
    result = bench("run", "--variant", "dcgan", "--study", str(study), "--workers", "2", "--seed", "7", cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    board = bench_here("leaderboard", "--study", "tiny", "-o", "results/board.csv", cwd=cwd)
    assert board.returncode == 0, board.stderr[-3000:]
    return cwd, result


@pytest.mark.e2e
def test_two_workers_finish_the_study_without_lost_or_duplicated_trials(finished_study):
    cwd, result = finished_study
    trials = optuna_trials(cwd, "tiny:dcgan:digits")
    assert [t.number for t in trials] == [0, 1, 2]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["worker"]["pid"] for t in trials}) == 2  # both workers took trials
    assert sorted(t.user_attrs["seed"] for t in trials) == [7, 8, 9]
    assert all(t.intermediate_values.keys() == {100, 200} for t in trials)  # reported for the pruner
    assert "database is locked" not in result.stderr
    assert "bench ui --study tiny" in result.stdout


@pytest.mark.e2e
def test_mlflow_holds_parent_and_child_runs_with_params_metrics_and_images(finished_study):
    cwd, _ = finished_study
    runs = mlflow_runs(cwd, "tiny")
    parents = runs[runs["tags.bench.kind"] == "study"]
    children = runs[runs["tags.bench.kind"] == "trial"]
    assert len(parents) == 1 and len(children) == 3
    assert (children["tags.mlflow.parentRunId"] == parents["run_id"].iloc[0]).all()
    assert (runs["status"] == "FINISHED").all() and (children["tags.bench.state"] == "complete").all()
    for key in ("variant", "dataset", "extractor", "seed", "trial", "git_commit", "device", "version.torch"):
        assert children[f"tags.bench.{key}"].notna().all(), key
    assert children["params.lr"].astype(float).between(1e-4, 1e-3).all()

    client = mlflow.MlflowClient()
    run_id = children["run_id"].iloc[0]
    assert [m.step for m in client.get_metric_history(run_id, "fid_domain")] == [100, 200]
    assert [m.step for m in client.get_metric_history(run_id, "loss_d")] == list(range(1, 201))
    images = [a.path for a in client.list_artifacts(run_id, "images")]
    assert {int(m.group(1)) for path in images if (m := re.search(r"samples\+step\+(\d+)\+", path))} == {100, 200}
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"checkpoint", "final_samples"} <= artifacts


@pytest.mark.e2e
def test_leaderboard_csv_has_one_row_per_metric_with_best_run_and_counts(finished_study):
    cwd, _ = finished_study
    board = pd.read_csv(cwd / "results" / "board.csv")
    assert {"study", "variant", "dataset", "metric", "best", "best_run_id", "best_params", "complete", "pruned",
            "failed", "top_k_mean", "top_k_std"} <= set(board.columns)
    fid = board[board["metric"] == "fid_domain"].iloc[0]
    assert (fid["study"], fid["variant"], fid["dataset"], fid["complete"], fid["failed"]) == (
        "tiny", "dcgan", "digits", 3, 0)
    children = mlflow_runs(cwd, "tiny").dropna(subset=["metrics.fid_domain"])
    assert fid["best"] == pytest.approx(children["metrics.fid_domain"].min())
    assert fid["best_run_id"] == children.loc[children["metrics.fid_domain"].idxmin(), "run_id"]
    assert fid["best_params"].startswith("lr=")
    assert fid["top_k_mean"] >= fid["best"]
    assert set(board["metric"]) >= {"fid_domain", "kid_domain", "classes_covered", "class_kl"}
    assert not board["metric"].str.startswith("loss").any()


# -- the literature's protocol: a budget in epochs, a final Inception scoring -----------------------

LITERATURE_STUDY = """
dataset = "digits"
objective = "fid_inception"
pruner = "none"
trials = 1

[budget]
epochs = 1
batch_size = 64
eval_every = 8
eval_samples = 200
final_samples = 32
real_samples = 64
"""


@pytest.mark.e2e
def test_an_epoch_budget_gives_every_variant_the_same_real_batches_and_a_final_inception_score(tmp_path):
    (tmp_path / "lit.toml").write_text(LITERATURE_STUDY)
    run = bench("run", "--variant", "gan,wgan", "--study", "lit.toml", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    real_batches = math.ceil(1437 / 64)  # one pass over the digits training split
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    runs = mlflow_runs(tmp_path, "lit")
    trials = runs[runs["tags.bench.kind"] == "trial"]
    assert sorted(trials["tags.bench.variant"]) == ["gan", "wgan"]
    for _, row in trials.iterrows():
        n_critic = 5 if row["tags.bench.variant"] == "wgan" else 1
        steps = math.ceil(real_batches / n_critic)
        assert (row["params.epochs"], row["params.steps"], row["params.real_samples"]) == ("1", str(steps), "64")
        domain = [m.step for m in client.get_metric_history(row["run_id"], "fid_domain")]
        inception = [m.step for m in client.get_metric_history(row["run_id"], "fid_inception")]
        assert domain == [*range(8, steps, 8), steps] and inception == [steps]  # Inception only at the end
        assert (row["tags.bench.extractor"], row["tags.bench.device"], row["tags.bench.precision"]) == (
            "domain", "cpu", "float32")  # as the engine resolved them
    # Scored against the study's 64 real test images, with either extractor: statistics computed once.
    cache = tmp_path / "results" / "cache" / "real-features"
    cached = sorted(path.name.split("-")[:4] for path in cache.glob("*-float32.pt"))
    assert cached == [["digits", "test", "64", "domain"], ["digits", "test", "64", "inception"]], cached
    for variant in ("gan", "wgan"):
        for trial in optuna_trials(tmp_path, f"lit:{variant}:digits"):
            run_row = trials[trials["run_id"] == trial.user_attrs["mlflow_run_id"]].iloc[0]
            assert trial.value == pytest.approx(run_row["metrics.fid_inception"])


# -- the MLflow UI, read by a real browser ----------------------------------------------------

def mlflow_display(value: float) -> str:
    """A metric as the MLflow UI prints it (Utils.formatMetric: fewer decimals for larger values)."""
    decimals = 3 if abs(value) < 10 else 2 if abs(value) < 100 else 1
    return str(round(value, decimals)).removesuffix(".0")


def browse(url: str) -> str:
    """The page's text after its scripts ran, from headless Chromium."""
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed (.ci/run installs it: apt-get install chromium)"
    dom = subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                          "--window-size=2400,1600", "--virtual-time-budget=30000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120).stdout
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


@pytest.mark.server
@pytest.mark.browser
@pytest.mark.e2e
def test_mlflow_ui_shows_the_study_with_its_trials_and_their_fid(finished_study):
    cwd, _ = finished_study
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ui = subprocess.Popen([BENCH, "ui", "--study", "tiny", "--port", str(port)], cwd=cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True, start_new_session=True, env=clean_env())
    try:
        address = re.search(r"http://\S+", ui.stdout.readline()).group(0)
        assert address.startswith(f"http://127.0.0.1:{port}/#/experiments/") and address.endswith("/runs")
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "the MLflow UI did not answer within 90 s"
                time.sleep(1)
        runs_page = browse(address)
        assert "tiny" in runs_page and "tiny-dcgan-" in runs_page  # the experiment and its parent run

        trials = mlflow_runs(cwd, "tiny").query("`tags.bench.kind` == 'trial'")
        ids = ",".join(f'"{run_id}"' for run_id in trials["run_id"])
        experiment = address.split("/experiments/")[1].split("/")[0]
        compare = browse(f"http://127.0.0.1:{port}/#/compare-runs?runs=[{ids}]&experiments=[\"{experiment}\"]")
        for _, trial in trials.iterrows():
            assert trial["tags.mlflow.runName"] in compare
        section = compare[compare.index("fid_domain"):]
        for value in trials["metrics.fid_domain"]:
            assert mlflow_display(value) in section[:400], (mlflow_display(value), section[:400])
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)


def test_passwords_in_storage_urls_are_redacted():
    assert redact("postgresql://bench:s3cret@db.example:5432/studies") == "postgresql://bench:***@db.example:5432/studies"
    assert redact("postgresql://bench@db.example/studies") == "postgresql://bench@db.example/studies"
    assert redact("results/optuna/journal.log") == "results/optuna/journal.log"


@pytest.mark.e2e
def test_lucic_narrow_searches_their_ranges_on_their_network_at_a_tiny_budget(tmp_path, monkeypatch):
    """The best-of-k study of Lucic et al. (a GPU's budget), run here on digits for a few batches."""
    monkeypatch.chdir(tmp_path)
    spec = dataclasses.replace(load_study("lucic_narrow"), dataset="digits", objective="fid_domain", trials=2,
                               budget=Budget(real_batches=4, batch_size=16, eval_every=4, eval_samples=64))
    studies = run_studies(["wgan", "began"], spec, storage=str(tmp_path / "journal.log"),
                          tracking=f"sqlite:///{tmp_path / 'mlflow.db'}")
    for study in studies.values():
        trials = study.get_trials()
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
        for trial in trials:
            params = trial.params
            assert params["arch"] == "lucic" and 1e-4 <= params["lr"] <= 1e-3
            assert params.get("n_critic", 1) == 1 and params.get("beta1", 0.5) == 0.5
            assert 0.01 <= params.get("clip_c", 0.1) <= 1 and 0.6 <= params.get("gamma", 0.7) <= 0.9
    assert {"discriminator_batchnorm", "clip_c"} <= set(studies["wgan"].trials[0].params)
    assert "gamma" in studies["began"].trials[0].params


@pytest.mark.e2e
def test_workers_train_the_study_they_are_given_not_its_file_again(tmp_path, monkeypatch):
    """A spec built or changed in Python reaches every worker process as it is."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "digits.toml"
    path.write_text(TINY_STUDY.format(steps=40, eval_every=20))
    spec = dataclasses.replace(load_study(path), trials=2,
                               budget=Budget(steps=4, eval_every=2, eval_samples=64, batch_size=16))
    study = run_study("gan", spec, workers=2, storage=str(tmp_path / "journal.log"),
                      tracking=f"sqlite:///{tmp_path / 'mlflow.db'}")
    trials = study.get_trials()
    assert len(trials) == 2 and all(set(t.intermediate_values) == {2, 4} for t in trials), trials
