"""Shared fixtures. Real GAN training is the expensive part of the suite, so each variant is
trained at most once per session (``trained``) and every test that needs a trained generator
shares that run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.data import ImageDataset, load_dataset
from bench.engine import TrainConfig, Trainer
from bench.scoring import Scorer

FID_SAMPLES = 2000
LEARNING_SECONDS = 40
"""The suite's learning budget, the same for every variant: 40 s of training on the reference
machine (2 CPU cores, AMD EPYC, torch 2.15), given as generator steps so that runs are
deterministic: each variant's generator steps per second as this fixture measured them there,
doctor and loss logging included (the WGANs make n_critic = 5 critic updates per generator
step), times LEARNING_SECONDS. On that machine this fixture trains for about six minutes in
all. test_quarter.py trains each variant much longer, apart from the suite."""
STEPS_PER_SECOND = {"gan": 60.6, "dcgan": 30.2, "ragan": 30.2, "cgan": 27.3, "infogan": 25.6, "ebgan": 14.9,
                    "wgan": 8.94, "wgan_gp": 4.94,
                    # Measured with the engine on another 2-core machine (Intel Xeon, torch 2.14), partly under load
                    # from other jobs, and scaled to the reference machine by dcgan's and ebgan's rates measured
                    # beside them (48.3 and 24.5 there, a factor 1.62): lsgan 49.1, dragan 34.2, began 24.5 G steps/s.
                    "lsgan": 30.3, "dragan": 21.1, "began": 15.1}
LEARNING_STEPS = {name: round(rate * LEARNING_SECONDS) for name, rate in STEPS_PER_SECOND.items()}


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    """tests/plugins/ganbench_test_plugin pip-installed (with its entry points) into a folder of its
    own: put it on PYTHONPATH and `bench` finds its variants as a user's installed package."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(Path(__file__).parent / "plugins" / "ganbench_test_plugin")],
                   check=True)
    return target


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
    """trained(name) -> TrainedVariant, trained once per session on real Fashion-MNIST, on the CPU
    whatever the machine has: the budgets and the thresholds the tests hold these runs to were set
    on the reference machine's float32 runs, which repeat exactly; a GPU would train another run
    (bfloat16 autocast by default, other kernels)."""
    runs: dict[str, TrainedVariant] = {}

    def get(name: str) -> TrainedVariant:
        if name not in runs:
            trainer = Trainer(TrainConfig(name, steps=LEARNING_STEPS[name], seed=0, device="cpu"), progress=False)
            untrained = scorer.score(trainer.variant, FID_SAMPLES, seed=1)
            result = trainer.run()
            scores = scorer.score(trainer.variant, FID_SAMPLES, seed=1)
            runs[name] = TrainedVariant(trainer, untrained, scores, result.images_per_second)
            print(f"\n{name}: {LEARNING_STEPS[name]} steps, {result.images_per_second:.0f} images/s; "
                  f"untrained {untrained}; trained {scores}")
        return runs[name]

    return get
