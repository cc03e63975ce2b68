"""A run's plan: its TrainConfig resolved once, against its dataset and this machine, before training.

The runner resolves a trial's plan, records it, and hands it to the Trainer, which trains by it: the
dataset is loaded once, and what is recorded is what is trained.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import torch

from bench.config import TrainConfig
from bench.data import ImageDataset, check_scoring_split, load_dataset
from bench.devices import autocast_dtype, resolve_device
from bench.doctor import Doctor
from bench.errors import DatasetNotFound
from bench.observer import Observer
from bench.registry import get_variant
from bench.classifier import default_extractor, no_classifier, weights_path


@dataclass(frozen=True)
class RunPlan:
    """What a run trains: ``config`` with its extractor named and its steps resolved, the training
    split, the device, the autocast dtype (None: float32), and the observers its config switches on."""

    config: TrainConfig
    data: ImageDataset
    device: torch.device
    amp_dtype: torch.dtype | None

    @classmethod
    def resolve(cls, config: TrainConfig) -> RunPlan:
        """Checks ``config`` (bad settings fail before any data is read), then loads its dataset."""
        config.validate()
        device = resolve_device(config.device)
        amp_dtype = autocast_dtype(device, config.amp)
        get_variant(config.variant).resolve_hparams(config.hparams)
        config = resolve_features(config)
        data = load_dataset(config.dataset, "train", root=config.data_root, download=config.download)
        plan = cls(resolve_steps(config, data), data, device, amp_dtype)
        test = plan.test_split() if config.eval_every or config.final_samples else None
        if test is not None:  # refused now, not at the first evaluation (a missing split: there, with its fix)
            check_scoring_split(test)
        return plan

    def observers(self) -> list[Observer]:
        """The observers the config switches on, fresh for a run: the training doctor, unless
        ``config.doctor`` is off. The engine adds them before its caller's (tracking, pruning)."""
        return [Doctor(self.config.dataset, self.data, self.test_split)] if self.config.doctor else []

    def test_split(self) -> ImageDataset | None:
        """The dataset's test split, read once, when first asked (by the check of a scoring run's plan,
        or the doctor's memorisation check at its first check); None where it is missing."""
        return self._test_split

    @functools.cached_property
    def _test_split(self) -> ImageDataset | None:
        try:
            return load_dataset(self.config.dataset, "test", root=self.config.data_root, download=self.config.download)
        except DatasetNotFound:
            return None

    @property
    def precision(self) -> str:
        """What the run trains in, in words (recorded with every run)."""
        return "float32" if self.amp_dtype is None else "bfloat16 autocast"


def resolve_steps(config: TrainConfig, data: ImageDataset | None = None) -> TrainConfig:
    """``config`` with ``steps`` set from ``epochs`` or ``real_batches`` (as it is when both are 0): the
    generator steps in which the discriminator sees that many real batches, ``epochs`` passes of the
    training split (``data``, when the caller has it loaded) or ``real_batches`` batches."""
    if not (config.epochs or config.real_batches):
        return config
    if data is None:
        data = load_dataset(config.dataset, "train", root=config.data_root, download=config.download)
    real_batches = config.real_batches or math.ceil(config.epochs * len(data) / config.batch_size)
    with torch.device("meta"):  # only to read how many real batches a step takes with these hparams
        variant = get_variant(config.variant)(data.image_shape, data.num_classes, **config.hparams)
    return dataclasses.replace(config, steps=math.ceil(real_batches / variant.real_batches_per_step))


def resolve_features(config: TrainConfig) -> TrainConfig:
    """``config`` with its evaluations' extractor named, refused when it needs a domain classifier the
    dataset lacks."""
    if config.features == "auto":
        return dataclasses.replace(config, features=default_extractor(config.dataset))
    if config.features == "domain" and weights_path(config.dataset) is None:
        raise no_classifier(config.dataset, "--features domain")
    return config


