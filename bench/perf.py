"""Training throughput, measured the way a user can rerun it (`bench perf`).

The machine is noisy, so every figure is the median of several repeats, each timed after a
warm-up on the same trainer.
"""

from __future__ import annotations

import json
import platform
import statistics
from pathlib import Path

import torch

from bench.engine import TrainConfig, Trainer


def training_throughput(variant: str, *, dataset: str = "fashion-mnist", steps: int = 40, repeats: int = 3,
                        batch_size: int = 64, device: str = "auto") -> dict:
    """Median real images/s (through D) and generator steps/s of the engine for ``variant``."""
    trainer = Trainer(TrainConfig(variant, dataset=dataset, steps=5, batch_size=batch_size, device=device,
                                  log_every=steps), progress=False)
    trainer.run()  # warm-up: allocator, oneDNN/cuDNN kernel choice
    rates = []
    for _ in range(repeats):
        trainer.config.steps = trainer.step + steps
        rates.append(trainer.run().images_per_second)
    images_per_second = statistics.median(rates)
    return {"variant": variant, "dataset": dataset, "batch_size": batch_size, "device": str(trainer.device),
            "images_per_second": round(images_per_second, 1),
            "g_steps_per_second": round(images_per_second / (batch_size * trainer.variant.real_batches_per_step), 2),
            "repeats": [round(rate, 1) for rate in rates]}


def run_perf(variants: list[str], out: Path | None, **options) -> list[dict]:
    rows = [training_throughput(name, **options) for name in variants]
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
                "processor": platform.processor()}
        out.write_text(json.dumps({"meta": meta, "training": rows}, indent=2) + "\n")
    return rows
