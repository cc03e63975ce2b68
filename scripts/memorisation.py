"""The doctor's memorisation check against FID: how far D ranks its training images above held-out
ones (the share of pairs, 0.5 when it treats them alike), beside the run's FID, on a small subset
and on the whole of Fashion-MNIST, so that the threshold is read off runs.

    python scripts/memorisation.py [--runs dcgan:fashion-mnist[500],dcgan:fashion-mnist] [--steps 4000]
                                   [--eval-every 400] [--seed 0]
    python scripts/memorisation.py --summary-only

Each run trains VARIANT at its defaults on DATASET (batch 64, CPU float32) with the doctor on, and
scores fid_domain on 2,000 samples every ``--eval-every`` steps. ``--checks`` (docs/results/
memorisation_checks.csv) gets one row per memorisation check (every 200 steps): the share, the FID
of the evaluation at that step (blank between evaluations), and the step at which the doctor
reported `memorising` (blank when it did not); rows of other runs already there are kept (the same
variant, dataset and steps are replaced). ``--summary`` (docs/results/memorisation.csv) then gets one
row per run in that file, which docs/small-data.md renders.
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

RESULTS = Path("docs/results")


def train(variant: str, dataset: str, steps: int, eval_every: int, seed: int) -> list[dict]:
    """One run's rows: a memorisation check each, with the FID evaluated at that step."""
    config = TrainConfig(variant, dataset=dataset, steps=steps, seed=seed, device="cpu", eval_every=eval_every,
                         eval_samples=2000, features="domain")
    trainer = Trainer(config, progress=False)
    result = trainer.run()
    doctor = next(observer for observer in trainer.observers if observer.name == "doctor")
    fid = {int(row.step): row.fid_domain for row in result.scores.itertuples()}
    fired = next((finding.step for finding in result.findings if finding.check == "memorising"), "")
    print(f"{variant} on {dataset}: fired at {fired or 'never'};",
          " ".join(f"{step}:{share:.2f}" + (f"/{fid[step]:.0f}" if step in fid else "")
                   for step, share in doctor.memorising), flush=True)
    return [{"variant": variant, "dataset": dataset, "steps": steps, "step": step, "share": f"{share:.3f}",
             "fid_domain": f"{fid[step]:.1f}" if step in fid else "", "doctor fired at": fired}
            for step, share in doctor.memorising]


def summary(rows: list[dict]) -> list[dict]:
    """One row per run: when the doctor fired and what FID did, before and after."""
    runs: dict[tuple, list[dict]] = {}
    for row in rows:
        runs.setdefault((row["variant"], row["dataset"], row["steps"]), []).append(row)
    table = []
    for (variant, dataset, steps), checks in runs.items():
        scored = [(int(row["step"]), float(row["fid_domain"])) for row in checks if row["fid_domain"]]
        best_step, best = min(scored, key=lambda pair: pair[1])
        fired = checks[0]["doctor fired at"]
        at_fire = next((row for row in checks if row["step"] == fired), None)
        fid_then = [fid for step, fid in scored if step <= int(fired)] if fired else []
        table.append({"variant": variant, "training images": dataset, "G steps": steps,
                      "share at step 400": next(row["share"] for row in checks if row["step"] == "400"),
                      "doctor fired at": fired or "never", "share there": at_fire["share"] if at_fire else "",
                      "last fid_domain before": f"{fid_then[-1]:.1f}" if fid_then else "",
                      "lowest fid_domain (step)": f"{best:.1f} ({best_step})",
                      "final fid_domain": f"{scored[-1][1]:.1f}", "final share": checks[-1]["share"],
                      **{key: value for key, value in checks[0].items() if key not in PER_CHECK}})
    return table


PER_CHECK = ("variant", "steps", "step", "share", "fid_domain", "doctor fired at")
"""The figures of a check's row (train); its other columns say how the run was made, the dataset among them."""


def read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="dcgan:fashion-mnist[500],dcgan:fashion-mnist")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--eval-every", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checks", type=Path, default=RESULTS / "memorisation_checks.csv")
    parser.add_argument("--summary", type=Path, default=RESULTS / "memorisation.csv")
    parser.add_argument("--summary-only", action="store_true", help="only rewrite --summary from --checks")
    args = parser.parse_args()
    if not args.summary_only:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        provenance = {"command": f"python scripts/memorisation.py --runs {args.runs} --steps {args.steps} "
                                 f"--eval-every {args.eval_every} --seed {args.seed}",
                      "commit": commit, "seed": args.seed, "device": "cpu", "precision": "float32",
                      "budget": f"{args.steps} G steps, batch 64; fid_domain on 2,000 samples every {args.eval_every}",
                      "machine": cpu_model(), "cores": torch.get_num_threads(),
                      "torch": torch.__version__.split("+")[0], "date": time.strftime("%Y-%m-%d")}
        for run in args.runs.split(","):
            variant, dataset = run.split(":", 1)
            rows = [{**row, **provenance, "dataset": dataset}
                    for row in train(variant, dataset, args.steps, args.eval_every, args.seed)]
            same = (variant, dataset, str(args.steps))
            kept = [row for row in read(args.checks) if (row["variant"], row["dataset"], row["steps"]) != same]
            write(args.checks, kept + rows)  # after each run: a long list keeps what finished
    write(args.summary, summary(read(args.checks)))


if __name__ == "__main__":
    main()
