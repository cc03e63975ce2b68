"""The observers a run's config switches on, beside those its caller passes (tracking, pruning).

The engine knows observers only through their interface (bench/observer.py); this is where a
TrainConfig's switches become observers.
"""

from __future__ import annotations

from bench.config import TrainConfig
from bench.doctor import Doctor
from bench.observer import Observer


def configured_observers(config: TrainConfig) -> list[Observer]:
    """The training doctor, unless ``config.doctor`` is off."""
    return [Doctor(config.dataset)] if config.doctor else []
