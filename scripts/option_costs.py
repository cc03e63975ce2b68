"""What the modern options cost per generator step: spectral normalisation of D, R1, G's moving
average, and sngan beside dcgan, timed with the engine on the same data and batch.

    python scripts/option_costs.py [--variant dcgan] [--steps 200] [--repeats 5] [-o docs/results/option_costs.csv]

Each setting trains one Trainer (fashion-mnist, batch 64, CPU or --device, doctor and scoring off);
after 20 warm-up steps, ``--repeats`` timed stretches of ``--steps`` generator steps are interleaved
across the settings (so that a machine's drift falls on all of them alike), and the median seconds
per step is reported with its ratio to the baseline's. The moving average's own update is also timed
alone (``average_generator`` on the trained G, 1,000 calls), as its share of a baseline step. Run it
with nothing else on the machine: a timing beside another job is noise.
"""

from __future__ import annotations

import argparse
import csv
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

from bench.engine import TrainConfig, Trainer

SETTINGS = {"baseline": {}, "d_norm=spectral": {"d_norm": "spectral"}, "r1_gamma=10": {"r1_gamma": 10.0},
            "g_ema=0.999": {"g_ema": 0.999}}


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (lscpu's "Model name")."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def trainer(variant: str, hparams: dict, steps: int, device: str) -> Trainer:
    config = TrainConfig(variant, steps=10 ** 9, seed=0, eval_every=0, device=device, hparams=hparams, doctor=False,
                         log_every=steps)
    return Trainer(config, progress=False)


def timed(run: Trainer, steps: int) -> float:
    start = time.perf_counter()
    run.run(until=run.step + steps)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="dcgan")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/results/option_costs.csv"))
    args = parser.parse_args()
    runs = {name: trainer(args.variant, hparams, args.steps, args.device) for name, hparams in SETTINGS.items()}
    runs["sngan"] = trainer("sngan", {}, args.steps, args.device)
    for run in runs.values():
        run.run(until=20)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            seconds[name].append(timed(run, args.steps))
    averaged = runs["g_ema=0.999"].variant
    start = time.perf_counter()
    for step in range(1000):
        averaged.average_generator(10 ** 6 + step)
    update = (time.perf_counter() - start) / 1000
    base = statistics.median(seconds["baseline"])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    command = (f"python scripts/option_costs.py --variant {args.variant} --steps {args.steps} "
               f"--repeats {args.repeats} --device {args.device}")
    rows = []
    for name, values in seconds.items():
        median = statistics.median(values)
        variant = "sngan" if name == "sngan" else args.variant
        rows.append({"variant": variant, "setting": "defaults" if name == "sngan" else name,
                     "ms per G step": f"{1000 * median:.1f}", "÷ baseline": f"{median / base:.2f}",
                     "ms per G step, each repeat": " ".join(f"{1000 * v:.1f}" for v in values)})
    rows.append({"variant": args.variant, "setting": "g_ema update alone", "ms per G step": f"{1000 * update:.2f}",
                 "÷ baseline": f"{update / base:.3f}", "ms per G step, each repeat": "1,000 calls"})
    provenance = {"command": command, "commit": commit, "seed": 0, "device": args.device, "precision": "float32",
                  "dataset": "fashion-mnist", "budget": f"batch 64; {args.repeats} x {args.steps} G steps after 20, "
                                                        "doctor and scoring off",
                  "machine": cpu_model(),
                  "cores": torch.get_num_threads(), "torch": torch.__version__.split("+")[0],
                  "date": time.strftime("%Y-%m-%d")}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, [*rows[0], *provenance])
        writer.writeheader()
        writer.writerows({**row, **provenance} for row in rows)
    for row in rows:
        print(f"{row['variant']:7} {row['setting']:18} {row['ms per G step']:>7} ms  x{row['÷ baseline']}")


if __name__ == "__main__":
    main()
