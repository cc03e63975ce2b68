"""Shared fixtures. Real GAN training is the expensive part of the suite, so each variant is
trained at most once per session (``trained``) and every test that needs a trained generator
shares that run."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from bench.data import ImageDataset, load_dataset, to_unit_range
from bench.engine import TrainConfig, Trainer
from bench.scoring import domain_fid, load_domain_classifier

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
def fid_metric(fashion_test):
    """fid_domain with the real statistics of Fashion-MNIST's test split, computed once."""
    metric = domain_fid(load_domain_classifier("fashion-mnist"))
    for chunk in fashion_test.images.split(1000):
        metric.update(to_unit_range(chunk), real=True)
    return metric


@pytest.fixture(scope="session")
def score(fid_metric):
    """score(images in [-1, 1]) -> fid_domain against the test split."""

    def fid(images: torch.Tensor) -> float:
        fid_metric.reset()  # keeps the real statistics
        for chunk in images.split(500):
            fid_metric.update(chunk, real=False)
        return float(fid_metric.compute())

    return fid


@dataclass
class TrainedVariant:
    trainer: Trainer
    untrained_fid: float
    fid: float
    images_per_second: float


@pytest.fixture(scope="session")
def trained(score):
    """trained(name) -> TrainedVariant, trained once per session on real Fashion-MNIST."""
    runs: dict[str, TrainedVariant] = {}

    def get(name: str) -> TrainedVariant:
        if name not in runs:
            trainer = Trainer(TrainConfig(name, steps=LEARNING_STEPS[name], seed=0), progress=False)
            generator = torch.Generator().manual_seed(1)
            untrained = score(trainer.variant.sample(FID_SAMPLES, generator=generator))
            result = trainer.run()
            fid = score(trainer.variant.sample(FID_SAMPLES, generator=torch.Generator().manual_seed(1)))
            runs[name] = TrainedVariant(trainer, untrained, fid, result.images_per_second)
            print(f"\n{name}: fid_domain {untrained:.1f} -> {fid:.1f} after {LEARNING_STEPS[name]} steps, "
                  f"{result.images_per_second:.0f} images/s")
        return runs[name]

    return get
