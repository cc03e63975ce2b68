"""Shared fixtures. Real GAN training is the expensive part of the suite, so each variant is
trained at most once per session (``trained``) and every test that needs a trained generator
shares that run."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.data import ImageDataset, load_dataset
from bench.engine import TrainConfig, Trainer
from bench.scoring import Scorer

FID_SAMPLES = 2000
# Generator steps per variant at its paper defaults: about one minute each on the 2-core
# reference machine (1.5 for the fast but slow-learning MLP GAN; WGANs do n_critic=5 critic
# updates per generator step, hence fewer steps).
LEARNING_STEPS = {"gan": 3000, "dcgan": 900, "cgan": 800, "infogan": 800, "ragan": 900,
                  "wgan": 360, "wgan_gp": 200}


@pytest.fixture(scope="session")
def fashion_train() -> ImageDataset:
    return load_dataset("fashion-mnist", "train")


@pytest.fixture(scope="session")
def fashion_test() -> ImageDataset:
    return load_dataset("fashion-mnist", "test")


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def scorer(feature_cache) -> Scorer:
    """fid_domain and class metrics against Fashion-MNIST's 10,000 test images."""
    return Scorer("fashion-mnist", "domain", cache_dir=feature_cache)


@pytest.fixture(scope="session")
def project_folder(scorer, feature_cache, tmp_path_factory):
    """project_folder(name) -> a fresh folder to run `bench` in, its results/cache already holding
    the real test-split features (computing them is a tested path of its own, not repeated here)."""

    def make(name: str) -> Path:
        folder = tmp_path_factory.mktemp(name)
        shutil.copytree(feature_cache, folder / "results" / "cache")
        return folder

    return make


@dataclass
class TrainedVariant:
    trainer: Trainer
    untrained: dict[str, float]
    """Scores of the generator before its first step."""
    scores: dict[str, float]
    images_per_second: float


@pytest.fixture(scope="session")
def trained(scorer):
    """trained(name) -> TrainedVariant, trained once per session on real Fashion-MNIST."""
    runs: dict[str, TrainedVariant] = {}

    def get(name: str) -> TrainedVariant:
        if name not in runs:
            trainer = Trainer(TrainConfig(name, steps=LEARNING_STEPS[name], seed=0), progress=False)
            untrained = scorer.score(trainer.variant, FID_SAMPLES, seed=1)
            result = trainer.run()
            scores = scorer.score(trainer.variant, FID_SAMPLES, seed=1)
            runs[name] = TrainedVariant(trainer, untrained, scores, result.images_per_second)
            print(f"\n{name}: {LEARNING_STEPS[name]} steps, {result.images_per_second:.0f} images/s; "
                  f"untrained {untrained}; trained {scores}")
        return runs[name]

    return get
