"""Several `bench run`s on one study or one folder: a rerun, or a second run, goes on from what
was tried instead of proposing it again; runs starting at once in a fresh folder all start."""

import shutil
import subprocess
import sys

from bench.runner import run_study

STUDY = """
objective = "fid_domain"
trials = 2
sampler = "random"
pruner = "none"

[budget]
steps = 2
eval_every = 2
eval_samples = 64

[space]
lr = { low = 1e-4, high = 1e-3, log = true }
"""


def test_a_rerun_with_more_trials_proposes_new_points_and_a_fresh_study_repeats_its_first(tmp_path, feature_cache,
                                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(feature_cache, tmp_path / "results" / "cache")
    (tmp_path / "rerun.toml").write_text(STUDY)
    options = dict(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", device="cpu", seed=0)
    run_study("gan", tmp_path / "rerun.toml", storage=str(tmp_path / "first.log"), **options)
    study = run_study("gan", tmp_path / "rerun.toml", trials=4, storage=str(tmp_path / "first.log"), **options)
    tried = [trial.params["lr"] for trial in study.trials]
    assert len(tried) == 4 and len(set(tried)) == 4, tried
    fresh = run_study("gan", tmp_path / "rerun.toml", storage=str(tmp_path / "fresh.log"), **options)
    assert [trial.params["lr"] for trial in fresh.trials] == tried[:2], "--seed alone fixes a fresh study's points"


def test_runs_starting_at_once_in_a_fresh_folder_create_mlflows_store_once(tmp_path):
    connect = "from bench.tracking import Tracking; Tracking('sqlite:///results/mlflow.db', 'race')"
    for attempt in range(3):
        folder = tmp_path / str(attempt)
        folder.mkdir()
        runs = [subprocess.Popen([sys.executable, "-c", connect], cwd=folder, stderr=subprocess.PIPE, text=True)
                for _ in range(2)]
        for run in runs:
            assert run.wait(timeout=120) == 0, run.stderr.read()
