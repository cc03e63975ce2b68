"""The interface through which tracking, pruning and the doctor watch a training run."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Finding:
    """A problem the training doctor saw in a run, with the cause and the fix in its message."""

    check: str
    """no_generator_gradient, data_range, nonfinite_weights, discriminator_wins, mode_collapse,
    few_classes, clipping, or a check a variant declares (registry.Expected)"""
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


class Observer:
    """Watches a run from outside the loop (tracking, pruning, health checks).

    The engine calls these only where it already holds values on the host, so an observer
    adds no device sync. Raising from one stops the run (an Optuna pruner raises TrialPruned).
    """

    def on_losses(self, rows: list[dict[str, float]]) -> None:
        """Each ``log_every`` steps: one row per step, 'step' and every loss."""

    def on_scores(self, scores: dict[str, float]) -> None:
        """After each evaluation: 'step' and every metric."""

    def on_grid(self, path: Path, step: int) -> None:
        """After a fixed-noise sample grid was saved."""

    def on_finding(self, finding: Finding) -> None:
        """When the training doctor first sees a problem (before it stops a fatal one)."""
