"""Scoring a trained generator (`bench eval`): a checkpoint, checked and loaded, then scored with
FID and KID by its extractor and the class-aware metrics, on samples drawn with the run's seed."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from bench import checkpoint
from bench.classifier import default_extractor
from bench.config import TrainConfig
from bench.devices import resolve_device
from bench.errors import ConfigError
from bench.registry import Variant, get_variant
from bench.scoring import shared_scorer


def load_trained(path: Path | str, device: str = "auto") -> tuple[Variant, TrainConfig, int]:
    """(variant, its config, its step) from a checkpoint file or a run folder holding one."""
    device = resolve_device(device)
    state = checkpoint.load(path)
    path = checkpoint.locate(path)
    with checkpoint.damaged(path):
        config = TrainConfig.from_saved(state["config"])
        build = functools.partial(get_variant(config.variant), tuple(state["image_shape"]), state["num_classes"],
                                  **config.hparams)
        with torch.device("meta"):  # the shapes the weights must have, before any memory is taken for them
            expected = {key: value.shape for key, value in build().state_dict().items()}
        wrong = [key for key, value in state["variant"].items()
                 if not isinstance(value, torch.Tensor) or expected.get(key, value.shape) != value.shape]
        if wrong:
            raise ValueError(f"weights {', '.join(wrong[:3])} do not fit {config.variant} on images "
                             f"{state['image_shape']} with {state['num_classes']} classes")
        variant = build()
        variant.load_state_dict(state["variant"])
    return variant.to(device).eval(), config, state["step"]


@dataclass(frozen=True)
class Evaluation:
    """A trained generator's scores, and what they were measured on."""

    config: TrainConfig
    step: int
    samples: int
    features: str
    real_split: str
    real_features_source: str
    """Where the real statistics came from: computed now, or the cache file."""
    scores: dict[str, float]
    """fid_<features>, kid_<features> and the class-aware metrics."""


def evaluate(checkpoint: Path | str, *, features: str | None = None, samples: int = 10000,
             device: str = "auto") -> Evaluation:
    """Scores the generator saved in a checkpoint file or run folder with FID and KID (named by
    their extractor) and the class-aware metrics, on ``samples`` samples drawn with the run's seed.
    ``features``: inception or domain (default: inception on a GPU; on a CPU, domain where the dataset
    has a domain classifier).

    Example::

        evaluate("results/train/dcgan-1e-4", samples=2000).scores["fid_domain"]
    """
    if samples < 2:
        raise ConfigError(f"samples must be at least 2 (FID needs a covariance), got {samples}")
    variant, config, step = load_trained(checkpoint, device)
    # The standard Inception FID is what papers quote, but at a few images/s it is for GPUs only.
    features = features or ("inception" if variant.device.type == "cuda" else default_extractor(config.dataset))
    scorer = shared_scorer(config.dataset, features, variant.device, config.data_root)  # refuses unknown features
    scores = scorer.score(variant, samples, seed=config.seed)
    return Evaluation(config, step, samples, features, scorer.real_split, scorer.real_features_source, scores)
