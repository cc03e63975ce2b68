"""Several `bench run`s on one study or one folder: a rerun, or a second run, goes on from what
was tried instead of proposing it again; runs starting at once in a fresh folder all start."""

import shutil
import subprocess
import sys

import mlflow
import pytest

from bench.runner import run_study

STUDY = """
objective = "fid_domain"
trials = 2
sampler = "{sampler}"
pruner = "none"

[budget]
steps = 2
eval_every = 2
eval_samples = 64

[space]
lr = {{ low = 1e-4, high = 1e-3, log = true }}
"""


@pytest.mark.e2e
@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_reruns_propose_new_points_and_a_fresh_study_repeats_its_first(sampler, tmp_path, feature_cache, monkeypatch):
    """Rerun twice, each time with one more trial (as after an interruption, or a second `bench run`
    joining): no point twice. The same --seed on a fresh study gives its first points again."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(feature_cache, tmp_path / "results" / "cache")
    (tmp_path / "rerun.toml").write_text(STUDY.format(sampler=sampler))
    options = dict(tracking=f"sqlite:///{tmp_path}/mlflow.db", device="cpu", seed=0)
    for trials in (2, 3, 4):
        study = run_study("gan", tmp_path / "rerun.toml", trials=trials, storage=str(tmp_path / "first.log"), **options)
    tried = [trial.params["lr"] for trial in study.trials]
    assert len(tried) == 4 and len(set(tried)) == 4, tried
    fresh = run_study("gan", tmp_path / "rerun.toml", storage=str(tmp_path / "fresh.log"), **options)
    assert [trial.params["lr"] for trial in fresh.trials] == tried[:2], "--seed alone fixes a fresh study's points"


@pytest.mark.e2e
def test_runs_starting_at_once_in_a_fresh_folder_create_mlflows_store_once(tmp_path):
    connect = "from bench.tracking import Tracking, TrackingStore; Tracking(TrackingStore.open('sqlite:///results/mlflow.db', create=True), 'race')"
    for attempt in range(3):
        folder = tmp_path / str(attempt)
        folder.mkdir()
        runs = [subprocess.Popen([sys.executable, "-c", connect], cwd=folder, stderr=subprocess.PIPE, text=True)
                for _ in range(2)]
        for run in runs:
            assert run.wait(timeout=120) == 0, run.stderr.read()
        # One store with one experiment of that name, both processes' Tracking on it.
        client = mlflow.MlflowClient(f"sqlite:///{folder}/results/mlflow.db")
        assert [e.name for e in client.search_experiments() if e.name == "race"] == ["race"]
