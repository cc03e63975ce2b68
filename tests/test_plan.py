"""A run's plan: its configuration resolved once, its dataset loaded once, and what is recorded is what trains."""

from __future__ import annotations

import dataclasses
import math

import mlflow
import pytest
from optuna.trial import TrialState

from bench import data
from bench.config import Budget, TrainConfig
from bench.engine import Trainer
from bench.plan import RunPlan
from bench.runner import run_studies
from bench.study import load_study
from tests.helpers import TINY_STUDY


@pytest.fixture
def train_loads(monkeypatch) -> list[str]:
    """The datasets read from disk for training (split 'train'), in order."""
    loads: list[str] = []
    read = data._digits

    def counted(split: str):
        if split == "train":
            loads.append("digits")
        return read(split)

    monkeypatch.setattr(data, "_digits", counted)
    return loads


def test_a_plan_resolves_steps_and_extractor_from_one_load_and_the_trainer_keeps_it(train_loads):
    config = TrainConfig("wgan", "digits", batch_size=32, epochs=2, features="auto", hparams={"n_critic": 5})
    plan = RunPlan.resolve(config)
    assert train_loads == ["digits"]
    # Two passes over digits' 1,437 training images in batches of 32, five real batches per generator step.
    assert len(plan.data) == 1437 and plan.config.steps == math.ceil(math.ceil(2 * 1437 / 32) / 5)
    assert plan.config.features == "domain" and plan.precision == "float32" and plan.device.type == "cpu"
    trainer = Trainer(plan, out=None, progress=False)
    assert train_loads == ["digits"] and trainer.config is plan.config and trainer.data is plan.data


def test_bad_settings_fail_before_the_dataset_is_read(train_loads):
    with pytest.raises(Exception, match="n_critic"):
        RunPlan.resolve(TrainConfig("wgan", "digits", hparams={"n_critic": 0}))
    assert train_loads == []


@pytest.mark.e2e
def test_a_study_trial_with_an_epoch_budget_loads_its_dataset_once(tmp_path, monkeypatch, train_loads):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    previous = mlflow.get_tracking_uri()
    path = tmp_path / "epochs.toml"
    path.write_text(TINY_STUDY.format(steps=10, eval_every=5))
    spec = dataclasses.replace(load_study(path), trials=1,
                               budget=Budget(epochs=0.05, batch_size=32, eval_every=3, eval_samples=64))
    try:
        [study] = run_studies(["gan"], spec, storage=str(tmp_path / "journal.log"),
                              tracking=f"sqlite:///{tmp_path / 'mlflow.db'}").values()
    finally:
        mlflow.flush_async_logging()
        mlflow.set_tracking_uri(previous)
    assert [trial.state for trial in study.get_trials()] == [TrialState.COMPLETE]
    # One load checks the study before it starts (batch size against the split); the trial loads it once.
    assert train_loads == ["digits", "digits"]
