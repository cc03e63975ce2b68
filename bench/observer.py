"""The interface through which tracking, pruning and the doctor watch a training run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.doctor import Finding


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
