"""The small-data study's table, from what `bench run --study small_data` recorded in MLflow:
DiffAugment's effect on fid_domain, precision and recall for each variant, paired by seed, and
when the doctor said D was memorising.

    bench run --study small_data
    python scripts/small_data.py [--study small_data] [--tracking-uri URI] [-o docs/results/small_data.csv]
                                 [--landed COMMIT]

One row per variant x arm, over its complete trials: the mean of each score (the run's last
evaluation), and for an arm other than the baseline the mean of (arm - baseline) over the seeds
both have with its 95% Student's t interval (bench.ranking.paired_effect, as `bench leaderboard
--effects` computes it); the lowest fid_domain of each run's evaluations, averaged over the seeds
(how far FID had come down before the end); and the steps at which the doctor's `memorising`
finding came, one per run that got it. The provenance columns are the runs' own tags; runs made
with uncommitted changes record '<commit>-dirty', and ``--landed`` names the later commit that holds
those changes (checked to descend from <commit>), which the table then records.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pandas as pd

from bench.errors import BenchError
from bench.ranking import paired_effect
from bench.schema import HEALTH_PREFIX, VERSION_PREFIX, Tag, tag_column
from bench.study import BASELINE
from bench.tracking import TrackingStore
from memorisation import write

SCORES = {"fid_domain": "{:.1f}", "precision_domain": "{:.3f}", "recall_domain": "{:.3f}"}
"""The scores shown, each with its format."""


def effect_text(values: pd.Series, baseline: pd.Series, form: str) -> str:
    effect, low, high = paired_effect(values, baseline, 0.95)
    signed = "{:+" + form[2:]
    return f"{signed.format(effect)} [{form.format(low)}, {form.format(high)}]".replace("-", "−")


def first_step(store: TrackingStore, run_id: str, metric: str) -> int | None:
    history = store.client.get_metric_history(run_id, metric)
    return min(m.step for m in history) if history else None


def one(values: pd.Series) -> str:
    """The value all runs recorded, several joined by ' / ' where they differ."""
    return " / ".join(sorted(set(values.astype(str))))


def commit_of(recorded: str, landed: str | None) -> str:
    """A run's recorded commit, short; one recorded as '<base>-dirty' is ``landed`` when that commit
    descends from <base> (it holds the changes the run ran with), else stays '-dirty'."""
    base = recorded.removesuffix("-dirty")
    if base == recorded or not landed:
        return base[:7] + recorded[len(base):]
    if subprocess.run(["git", "merge-base", "--is-ancestor", base, landed]).returncode != 0:
        raise SystemExit(f"error: --landed {landed} does not descend from {base[:7]}, the commit the runs record")
    return subprocess.run(["git", "rev-parse", "--short=7", landed], capture_output=True, text=True).stdout.strip()


def table(store: TrackingStore, study: str, command: str, landed: str | None) -> list[dict]:
    runs = store.trial_runs(study)
    arm = tag_column(Tag.ARM)
    if arm not in runs:
        raise SystemExit(f"study '{study}' has no ablation trials (no {Tag.ARM} tag); run `bench run --study {study}`")
    # Complete trials of the study's arms (an external entry has no arm).
    runs = runs[(runs[tag_column(Tag.STATE)] == "complete") & runs[arm].notna()].copy()
    if runs.empty:
        raise SystemExit(f"study '{study}' has no complete trial yet; let `bench run --study {study}` finish some")
    runs["seed"] = runs["params.seed"].astype(int)
    runs = runs.sort_values("start_time")  # variants in the order the study ran them
    rows = []
    for variant, group in runs.groupby(tag_column(Tag.VARIANT), sort=False):
        arms = {name: trials.set_index("seed") for name, trials in group.groupby(arm)}
        for name, trials in sorted(arms.items(), key=lambda item: item[0] != BASELINE):
            if not trials.index.is_unique:
                raise SystemExit(f"{variant}, arm {name}: more than one complete trial with a seed; one per seed "
                                 "is what the pairing needs (a study run twice into one MLflow experiment?)")
            baseline = arms.get(BASELINE)
            row = {"variant": variant, "arm": name, "seeds": len(trials)}
            for score, form in SCORES.items():
                values = trials[f"metrics.{score}"]
                row[score] = form.format(values.mean())
                row[f"{score} effect [95% CI]"] = ("" if name == BASELINE or baseline is None else
                                                   effect_text(values, baseline[f"metrics.{score}"], form))
            lowest = [min(m.value for m in store.client.get_metric_history(run_id, "fid_domain"))
                      for run_id in trials["run_id"]]
            row["lowest fid_domain"] = f"{sum(lowest) / len(lowest):.1f}"
            at_end = sum(low == end for low, end in zip(lowest, trials["metrics.fid_domain"]))
            row["runs lowest at the end"] = f"{at_end} of {len(trials)}"
            fired = {seed: first_step(store, run_id, HEALTH_PREFIX + "memorising")
                     for seed, run_id in trials["run_id"].items()}
            row["memorising found (seed: step)"] = ", ".join(
                f"{seed}: {step}" for seed, step in sorted(fired.items()) if step is not None) or "never"
            rows.append({**row, **provenance(trials, command, landed)})
    return rows


def provenance(trials: pd.DataFrame, command: str, landed: str | None) -> dict[str, str]:
    """Where a row's figures came from, read from its runs' own tags and params (``trials`` indexed by seed)."""
    machine = trials[tag_column(Tag.MACHINE)].str.rsplit(", ", n=1, expand=True)
    commits = {commit_of(recorded, landed) for recorded in trials[tag_column(Tag.GIT_COMMIT)]}
    return {"command": command, "commit": " / ".join(sorted(commits)),
            "seed": ",".join(str(seed) for seed in sorted(trials.index)),
            "device": one(trials[tag_column(Tag.DEVICE)]),
            "precision": one(trials[tag_column(Tag.PRECISION)]),
            "dataset": one(trials[tag_column(Tag.DATASET)]),
            "budget": " / ".join(sorted({
                f"{r['params.real_batches']} real batches of {r['params.batch_size']} ({r['params.steps']} "
                f"G steps); scores on {r['params.eval_samples']} samples every {r['params.eval_every']} G "
                "steps against the test split" for _, r in trials.iterrows()})),
            "machine": one(machine[0]), "cores": one(machine[1].str.removesuffix(" cores")),
            "torch": one(trials[tag_column(VERSION_PREFIX + "torch")].str.split("+").str[0]),
            "date": trials["end_time"].max().strftime("%Y-%m-%d")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default="small_data")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/results/small_data.csv"))
    parser.add_argument("--landed", metavar="COMMIT", help="for runs recorded as '<base>-dirty' (changes not yet "
                        "committed when they ran): the commit, descended from <base>, where those changes landed")
    args = parser.parse_args()
    command = f"bench run --study {args.study}; python scripts/small_data.py --study {args.study}"
    if args.landed:
        command += f" --landed {args.landed}"
    try:
        rows = table(TrackingStore.open(args.tracking_uri), args.study, command, args.landed)
    except BenchError as exc:  # no such study or store: its one line
        raise SystemExit(f"error: {exc}") from None
    write(args.output, rows)
    figures = [column for column in rows[0] if column != "command" and column not in ("commit", "seed", "device")]
    print(pd.DataFrame(rows)[figures[:figures.index("memorising found (seed: step)") + 1]].to_string(index=False))


if __name__ == "__main__":
    main()
