"""What a user sets: a training run's budget and settings (Budget, TrainConfig), and a study run's
defaults, each with its checks. Light to import (no pandas, Optuna or MLflow), so that the command
line builds its options and their defaults from these fields."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field

from bench.errors import ConfigError
from bench.registry import HParamValue
from bench.scores import EXTRACTORS, REAL_SAMPLES, check_samples

HEARTBEAT_SECONDS = 10
"""How often a running trial records its heartbeat in a database storage."""
PROGRESS_SECONDS = 60.0
"""Between two progress lines when the output is not a terminal (a log file, CI)."""


@dataclass(kw_only=True)
class Budget:
    """How long a run trains and how its generator is scored. A run's TrainConfig, a study file's
    [budget] and the params every trial records in MLflow all come from these fields."""

    steps: int = 2000
    """Generator updates (set from ``epochs`` when that is given)."""
    epochs: int = 0
    """When set, the run lasts this many passes of the discriminator over the training split
    instead of ``steps``: a variant that takes n_critic real batches per generator step makes
    n_critic times fewer generator steps, so that every variant sees the same data (see :func:`resolve_steps`)."""
    real_batches: int = 0
    """When set, the run lasts this many real batches through the discriminator instead of ``steps`` or
    ``epochs``, rounded up to whole generator steps: compare_gan's ``training_steps`` (Lucic et al. 2018 count
    20 epochs of Fashion-MNIST as 20 * 50000 // 64 = 15,625 discriminator batches)."""
    batch_size: int = 64
    eval_every: int = 0
    """Steps between scorings of the generator (0: only when asked); results in ``scores``."""
    eval_samples: int = 2000
    final_samples: int = 0
    """When set, the finished generator is scored once more, on this many samples, with every
    feature extractor (the papers' protocol: 10,000 samples against the 10,000 test images), as
    the last row of ``scores``; evaluations during training stay at ``eval_samples`` with ``features``."""
    real_samples: int = REAL_SAMPLES
    """The real statistics every scoring compares with come from this many test images (the whole split
    where it has fewer). Fewer make Inception's real features cheaper on a CPU and FID larger (its bias
    grows as either side shrinks): compare only scores made against the same number."""

    def validate(self) -> None:
        """Refuses a value no run can have, naming the field (a study file prefixes its path)."""
        if self.steps < 1:
            raise ConfigError(f"steps must be at least 1, got {self.steps}")
        if self.batch_size < 2:
            raise ConfigError(f"batch_size must be at least 2, got {self.batch_size}: batch norm, the minibatch "
                              "statistics and a discriminator's verdict on a batch need two images or more")
        check_samples("eval_samples is", self.eval_samples)
        check_samples("real_samples is", self.real_samples)
        for key in ("eval_samples", "final_samples", "real_samples"):
            if getattr(self, key) > MAX_SAMPLES:
                raise ConfigError(f"{key} {getattr(self, key)} is more than anyone scores ({MAX_SAMPLES:,} at most; "
                                  "FID is usually reported on 10,000 or 50,000)")
        if self.eval_every < 0:
            raise ConfigError(f"eval_every must be 0 (off) or positive, got {self.eval_every}")
        for key in ("epochs", "real_batches"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be 0 (use steps) or positive, got {getattr(self, key)}")
        if self.epochs and self.real_batches:
            raise ConfigError(f"epochs ({self.epochs}) and real_batches ({self.real_batches}) both set the "
                              "length of the run; keep one of them")
        if self.final_samples < 0:
            raise ConfigError(f"final_samples must be 0 (off) or positive, got {self.final_samples}")
        if self.final_samples:
            check_samples("final_samples is", self.final_samples, " (or 0: no final scoring)")


MAX_SAMPLES = 200_000
"""The most samples a score may take: 4x the largest standard protocol (50k), hours of Inception
on a CPU already; more is a typo, found before training rather than when the scoring starts."""
BUDGET_KEYS = tuple(field.name for field in dataclasses.fields(Budget))
AMP_MODES = ("auto", "on", "off")
MAX_SEED = 2**63 - 1
"""The largest seed a run may have: --seed (up to 2**31 - 1) plus a study's trial number fits with room
to spare; every generator seeded from it takes it (torch's take 64 bits), and so does an int64 column
where a store keeps it. A checkpoint's config with a larger one is refused at load."""


@dataclass
class TrainConfig(Budget):
    """Everything that defines one training run; saved whole beside its outputs."""

    variant: str
    dataset: str = "fashion-mnist"
    seed: int = 0
    device: str = "auto"
    hparams: dict[str, HParamValue] = field(default_factory=dict)
    log_every: int = 25
    """Steps between reads of the losses from the device (the only host sync in the loop)."""
    sample_every: int = 500
    """Steps between sample grids (with ``out``); one is also written at the end, and 0 means only then."""
    checkpoint_every: int = 1000
    """Steps between checkpoints (with ``out``); 0: none by step count. One is also written at the end, after
    ``checkpoint_seconds`` of training without one, and on SIGINT/SIGTERM."""
    checkpoint_seconds: float = 300.0
    """Training seconds after which a checkpoint is written even if ``checkpoint_every`` steps have not passed."""
    features: str = "auto"
    """Feature extractor for the evaluations: domain, inception, or auto (domain where the dataset has a
    domain classifier, else inception)."""
    amp: str = "auto"
    """Training precision (scoring is always float32): 'auto' is bfloat16 autocast on a CUDA GPU that
    supports it and float32 on the CPU; 'on' also uses it on a CPU that computes bfloat16
    natively; 'off' is float32 everywhere. See :func:`autocast_dtype`."""
    doctor: bool = True
    """Watch the run for the classic silent GAN failures, and stop it for the fatal ones (bench/doctor.py)."""
    data_root: str | None = None
    download: bool = False

    def validate(self) -> None:
        if self.features not in EXTRACTORS + ("auto",):
            raise ConfigError(f"unknown feature extractor '{self.features}'; choose one of: "
                              f"{', '.join(EXTRACTORS)}, auto")
        super().validate()
        if self.log_every < 1:
            raise ConfigError(f"log_every must be at least 1, got {self.log_every}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed {self.seed} is out of range; a seed is from 0 to {MAX_SEED}")
        for key in ("sample_every", "checkpoint_every"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be 0 (only at the end) or positive, got {getattr(self, key)}")
        if not self.checkpoint_seconds > 0:
            raise ConfigError(f"checkpoint_seconds must be positive, got {self.checkpoint_seconds}")
        if self.amp not in AMP_MODES:
            raise ConfigError(f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")

    @classmethod
    def from_saved(cls, saved: dict) -> TrainConfig:
        """The config a checkpoint holds, each field of its declared type (a file may hold anything), validated."""
        hints = typing.get_type_hints(cls)
        for key, value in saved.items():
            if key in hints and not _of_type(value, hints[key]):
                raise ConfigError(f"config field '{key}' is {value!r}, not of type {hints[key]}")
        config = cls(**saved)
        config.validate()
        return config


def _of_type(value, hint) -> bool:
    """Whether ``value`` is of the type hint of a TrainConfig field (int and float exclude bool; an int is a float)."""
    if isinstance(hint, types.UnionType):
        return any(_of_type(value, arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) is dict:
        return isinstance(value, dict) and all(isinstance(key, str) for key in value)
    if hint is float:
        hint = (int, float)
    return isinstance(value, hint) and (hint is bool or not isinstance(value, bool))
