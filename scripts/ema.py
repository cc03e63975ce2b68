"""What G's moving average (`g_ema`) adds, measured inside each run: every evaluation of a run with
`g_ema` scores the average and, on the same noise, the raw G it averages (`fid_domain_raw`), so
each run is its own pair.

    python scripts/ema.py [--variants dcgan,wgan_gp,sngan] [--seeds 0,1,2] [--decay 0.99]
                          [--real-batches 4000] [--eval-every 800]
    python scripts/ema.py --summary-only

Each run trains VARIANT at its defaults plus ``g_ema = DECAY`` on Fashion-MNIST (batch 64, CPU
float32) for ``--real-batches`` real batches (generator steps: that over the variant's real batches
per step) and scores fid_domain, precision and recall on 2,000 samples against the 10,000 test
images every ``--eval-every`` generator steps (and at the end). ``--runs`` (docs/results/
ema_runs.csv) gets one row per evaluation; rows of other variants and seeds already there are kept.
``--summary`` (docs/results/ema.csv) then gets one row per variant and step: each score's mean over
the seeds for the raw G and the average, and the average's effect (average - raw, same run) with
its 95% Student's t interval. A row's commit is the one the script ran from, '-dirty' when the
training code or this script had uncommitted changes.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

import pandas as pd
import torch

from bench.engine import TrainConfig, Trainer
from bench.schema import machine
from memorisation import read, write
from small_data import SCORES, effect_text

RESULTS = Path("docs/results")
PER_EVALUATION = ("variant", "seed", "step", *SCORES, *(f"{score}_raw" for score in SCORES))


def train(variant: str, seed: int, decay: float, real_batches: int, eval_every: int) -> list[dict]:
    """One run's rows: an evaluation each, the average's scores and the raw G's."""
    config = TrainConfig(variant, dataset="fashion-mnist", real_batches=real_batches, seed=seed, device="cpu",
                         eval_every=eval_every, eval_samples=2000, features="domain", hparams={"g_ema": decay})
    result = Trainer(config, progress=False).run()
    print(f"{variant} seed {seed}:", " ".join(f"{int(row.step)}:{row.fid_domain_raw:.0f}->{row.fid_domain:.0f}"
                                               for row in result.scores.itertuples()), flush=True)
    return [{key: row[key] for key in PER_EVALUATION if key in row} | {"variant": variant, "seed": seed}
            for row in result.scores.to_dict("records")]


def summary(rows: list[dict]) -> list[dict]:
    """One row per variant and step: the raw G's and the average's means, and the average's effect."""
    runs = pd.DataFrame(rows)
    provenance = [column for column in runs.columns if column not in PER_EVALUATION]
    table = []
    for (variant, step), group in runs.groupby(["variant", "step"], sort=False):
        group = group.set_index(group["seed"].astype(int))
        row = {"variant": variant, "G step": int(float(step)), "seeds": len(group)}
        for score, form in SCORES.items():
            raw, average = group[f"{score}_raw"].astype(float), group[score].astype(float)
            row |= {f"{score} raw G": form.format(raw.mean()), f"{score} average": form.format(average.mean()),
                    f"{score} effect [95% CI]": effect_text(average, raw, form)}
        table.append(row | {column: group[column].iloc[0] for column in provenance}
                     | {"seed": ",".join(str(seed) for seed in sorted(group.index))})
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="dcgan,wgan_gp,sngan")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--decay", type=float, default=0.99)
    parser.add_argument("--real-batches", type=int, default=4000)
    parser.add_argument("--eval-every", type=int, default=800)
    parser.add_argument("--runs", type=Path, default=RESULTS / "ema_runs.csv")
    parser.add_argument("--summary", type=Path, default=RESULTS / "ema.csv")
    parser.add_argument("--summary-only", action="store_true", help="only rewrite --summary from --runs")
    args = parser.parse_args()
    git = ["git", "-C", str(Path(__file__).resolve().parent)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    changed = subprocess.run([*git, "status", "--porcelain", "--", "../bench", "../variants", "ema.py"],
                             capture_output=True, text=True).stdout.strip()
    commit += "-dirty" if changed else ""
    cpu, cores = machine().rsplit(", ", 1)
    for variant in args.variants.split(",") if not args.summary_only else []:
        for seed in map(int, args.seeds.split(",")):
            provenance = {
                "command": f"python scripts/ema.py --variants {args.variants} --seeds {args.seeds} "
                           f"--decay {args.decay} --real-batches {args.real_batches} --eval-every {args.eval_every}",
                "commit": commit, "device": "cpu", "precision": "float32", "dataset": "fashion-mnist",
                "budget": f"{args.real_batches} real batches of 64, g_ema = {args.decay}; fid_domain, precision and "
                          f"recall on 2,000 samples every {args.eval_every} G steps",
                "machine": cpu, "cores": cores.removesuffix(" cores"), "torch": torch.__version__.split("+")[0],
                "date": time.strftime("%Y-%m-%d")}
            rows = [row | provenance for row in train(variant, seed, args.decay, args.real_batches, args.eval_every)]
            kept = [row for row in read(args.runs) if (row["variant"], row["seed"]) != (variant, str(seed))]
            write(args.runs, kept + rows)  # after each run: a long measurement keeps what finished
    write(args.summary, summary(read(args.runs)))


if __name__ == "__main__":
    main()
