"""The doctor's memorisation check against FID: how far D ranks its training images above held-out
ones (the share of pairs, 0.5 when it treats them alike), beside the run's FID, on a small subset
and on the whole of Fashion-MNIST, so that the threshold is read off runs.

    python scripts/memorisation.py [--runs dcgan:fashion-mnist[500],dcgan:fashion-mnist] [--steps 4000]
                                   [--eval-every 400] [--seed 0] [-o docs/results/memorisation.csv]

Each run trains VARIANT at its defaults on DATASET (batch 64, CPU float32) with the doctor on, and
scores fid_domain on 2,000 samples every ``--eval-every`` steps. One row per memorisation check
(every 200 steps): the share, the FID of the evaluation at that step (blank between evaluations),
and the step at which the doctor reported `memorising` (blank when it did not).
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import time
from pathlib import Path

import torch

from bench.engine import TrainConfig, Trainer
from option_costs import cpu_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="dcgan:fashion-mnist[500],dcgan:fashion-mnist")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--eval-every", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/results/memorisation.csv"))
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    command = (f"python scripts/memorisation.py --runs {args.runs} --steps {args.steps} "
               f"--eval-every {args.eval_every} --seed {args.seed}")
    provenance = {"command": command, "commit": commit, "seed": args.seed, "device": "cpu", "precision": "float32",
                  "budget": f"{args.steps} G steps, batch 64; fid_domain on 2,000 samples every {args.eval_every}",
                  "machine": cpu_model(), "cores": torch.get_num_threads(),
                  "torch": torch.__version__.split("+")[0], "date": time.strftime("%Y-%m-%d")}
    rows = []
    for run in args.runs.split(","):
        variant, dataset = run.split(":", 1)
        config = TrainConfig(variant, dataset=dataset, steps=args.steps, seed=args.seed, device="cpu",
                             eval_every=args.eval_every, eval_samples=2000, features="domain")
        trainer = Trainer(config, progress=False)
        result = trainer.run()
        doctor = next(observer for observer in trainer.observers if observer.name == "doctor")
        fid = {int(row.step): row.fid_domain for row in result.scores.itertuples()}
        fired = next((finding.step for finding in trainer.findings() if finding.check == "memorising"), "")
        for step, share in doctor.memorising:
            rows.append({"variant": variant, "dataset": dataset, "step": step, "share": f"{share:.3f}",
                         "fid_domain": f"{fid[step]:.1f}" if step in fid else "", "doctor fired at": fired})
        print(f"{variant} on {dataset}: fired at {fired or 'never'};",
              " ".join(f"{step}:{share:.2f}" + (f"/{fid[step]:.0f}" if step in fid else "")
                       for step, share in doctor.memorising), flush=True)
        write(args.output, rows, provenance)  # after each run: a long list keeps what finished


def write(path: Path, rows: list[dict], provenance: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, [*rows[0], *provenance])
        writer.writeheader()
        writer.writerows({**row, **provenance} for row in rows)


if __name__ == "__main__":
    main()
