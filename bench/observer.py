"""The interface through which tracking, pruning and the doctor watch a training run."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, ClassVar

import torch

from bench.registry import Variant


@dataclass(frozen=True)
class Finding:
    """A problem an observer (the training doctor) saw in a run, with the cause and the fix in its message."""

    check: str
    """no_generator_gradient, data_range, output_range, nonfinite_weights, discriminator_wins, mode_collapse,
    few_classes, memorising, clipping, or a check a variant declares (registry.Expected)"""
    step: int
    """The step it was first seen at."""
    message: str
    fatal: bool
    """True when the run was stopped for it."""

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """The message, and whether the run was stopped for it."""
        return self.message + (" (the run was stopped)" if self.fatal else "")


@dataclass(frozen=True)
class RunStart:
    """What the engine tells every observer before a run's first step."""

    variant: Variant
    """On the training device; an observer may read its networks and sample from it, never train it."""
    device: torch.device
    precision: str
    """What the run trains in: 'bfloat16 autocast' or 'float32'."""
    report: Callable[[Finding], None]
    """Where an observer sends a problem it sees: the engine keeps the first finding of each check,
    prints it, passes it to every observer's on_finding and returns it with the run's result."""


class Observer:
    """Watches a run from outside the loop (tracking, pruning, health checks).

    The engine adds no device sync to call these: the losses, scores and grids come already on
    the host. Around each step an observer gets the device mid-run, so what it reads from there
    (``float()``, ``.tolist()``) makes the device wait: the doctor does it at the first step and
    once every 50. Raising from one stops the run (an Optuna pruner raises TrialPruned).
    """

    name: ClassVar[str | None] = None
    """The key of this observer's state in a run's checkpoints; None when it keeps no state there."""

    def on_start(self, run: RunStart) -> None:
        """Once, when the trainer is ready: variant built, a resumed run's state loaded."""

    def before_step(self, step: int, real: torch.Tensor) -> None:
        """Before generator step ``step`` (from 1), with the real images it will take, on the device."""

    def after_step(self, step: int) -> None:
        """After generator step ``step``: its updates done, its losses still on the device."""

    def on_losses(self, rows: list[dict[str, float]]) -> None:
        """Each ``log_every`` steps: one row per step, 'step' and every loss."""

    def on_scores(self, scores: dict[str, float]) -> None:
        """After each evaluation: 'step' and every metric."""

    def on_grid(self, path: Path, step: int) -> None:
        """After a fixed-noise sample grid was saved."""

    def on_finding(self, finding: Finding) -> None:
        """When an observer first reports a check (before the run is stopped for a fatal one)."""

    def state_dict(self) -> dict:
        """What a resumed run needs for this observer to carry on where it was (with a ``name``)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restores what :meth:`state_dict` returned in the saved run."""
