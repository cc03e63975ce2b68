"""Kurach et al. 2019's one-factor-at-a-time table, from what `bench run --study kurach`,
`bench run --study kurach_losses` and the follow-up `bench run --study kurach_minibatch` recorded in
MLflow: one row per cell (a variant's arm), its loss, D's normalisation, minibatch std and penalty,
fid_domain's mean over the seeds with the cell's own 95% Student's t interval, its effect against the
baseline (sngan at its defaults: the non-saturating loss with spectral normalisation; a later study's
cells, against that study's own run of it) paired by seed, precision and recall, and the expected best
fid_domain of k trials drawn from the cell (`bench compare`'s best-of-k, each cell taken as a variant).
Also writes each run's scores (fid_domain also with every digit MLflow holds) and the
precision-recall scatter of every run, each cell's best starred.

    bench run --study kurach; bench run --study kurach_losses; bench run --study kurach_minibatch
    python scripts/kurach.py [--tracking-uri URI] [-o docs/results/kurach.csv] [--landed COMMIT]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from bench.compare import compare_study, precision_recall_figure
from bench.errors import BenchError
from bench.ranking import mean_interval
from bench.registry import get_variant
from bench.schema import Tag, tag_column
from bench.study import BASELINE
from bench.tracking import TrackingStore
from memorisation import write
from small_data import SCORES, effect_text, provenance
from variants.blocks import resolved_norm

STUDIES = ("kurach", "kurach_losses", "kurach_minibatch")
BASELINE_CELL = f"sngan {BASELINE}"
REPEATED_CELL = f"{BASELINE_CELL}, repeated"
"""The baseline of a later study (the same seeds, budget and scoring as kurach's): a cell of its own,
whose effect against the baseline is how far two runs of one seed land apart; that study's other
cells are paired with it."""


def curve_text(values: pd.Series) -> dict[str, str]:
    """A curve's figures as text: fid_domain to 0.1, D's loss to 0.001."""
    return {key: f"{value:.3f}" if key.startswith("loss") else f"{value:.1f}" for key, value in values.items()}
LOSSES = {"lsgan": "least squares", "wgan_gp": "Wasserstein"}
"""The loss of the variants that have one loss; sngan's is its `loss` hyperparameter."""


def design(variant: str, params: pd.Series) -> dict[str, str]:
    """A run's loss, D's normalisation, whether D sees the batch's spread (minibatch std) and its
    penalty, from its recorded hyperparameters."""
    cls = get_variant(variant)
    hparams = {name: spec.parse(name, str(params[f"params.{name}"])) for name, spec in cls.hparams.items()
               if f"params.{name}" in params and pd.notna(params[f"params.{name}"])}
    built = cls((1, 28, 28), 10, **hparams)
    penalties = [f"GP λ {built.hp.gp_lambda:g} (its own)"] if "gp_lambda" in cls.hparams else []
    penalties += [f"GP λ {built.tip('gp_weight'):g}"] if built.tip("gp_weight") else []
    penalties += [f"R1 γ {built.tip('r1_gamma'):g}"] if built.tip("r1_gamma") else []
    return {"loss": LOSSES.get(variant) or built.hp.loss.replace("nonsaturating", "non-saturating"),
            "D norm": resolved_norm(built, built.architecture()["d_norm"]),
            "minibatch std": "yes" if built.tip("minibatch_std") else "no",
            "penalty": ", ".join(penalties) or "none"}


def interval(values: pd.Series) -> str:
    mean, low, high = mean_interval(values, 0.95)
    return f"{mean:.1f} [{low:.1f}, {high:.1f}]".replace("-", "−")


def complete_runs(store: TrackingStore) -> pd.DataFrame:
    frames = []
    for study in STUDIES:
        try:
            frames.append(store.trial_runs(study))
        except BenchError:  # a study not run yet
            continue
    runs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if runs.empty or tag_column(Tag.ARM) not in runs:
        raise SystemExit(f"no trials of {' or '.join(STUDIES)}; run `bench run --study kurach` first")
    runs = runs[(runs[tag_column(Tag.STATE)] == "complete") & runs[tag_column(Tag.ARM)].notna()].copy()
    runs["seed"] = runs["params.seed"].astype(int)
    runs["cell"] = runs[tag_column(Tag.VARIANT)] + " " + runs[tag_column(Tag.ARM)]
    runs.loc[(runs["cell"] == BASELINE_CELL) & (runs[tag_column(Tag.STUDY)] != STUDIES[0]), "cell"] = REPEATED_CELL
    # The baseline first, then each study's cells in the order they ran.
    runs["order"] = (runs["cell"] != BASELINE_CELL).astype(int) * (1 + runs[tag_column(Tag.STUDY)].map(STUDIES.index))
    return runs.sort_values(["order", "start_time"])


def curve(store: TrackingStore, run: pd.Series, last: int = 500) -> dict[str, float]:
    """How a run got where it ended: its fid_domain at each evaluation, by the real batches it had
    trained on then (wgan_gp's generator steps take five), and D's mean loss over its ``last``
    generator steps (how well D tells real from fake; log 4 = 1.386 for a non-saturating D that cannot)."""
    batches_per_step = int(run["params.real_batches"]) // int(run["params.steps"])
    history = store.client.get_metric_history(run["run_id"], "fid_domain")
    losses = sorted((m.step, m.value) for m in store.client.get_metric_history(run["run_id"], "loss_d"))
    tail = [value for step, value in losses if step > losses[-1][0] - last]
    return {**{f"fid_domain at {m.step * batches_per_step:,} real batches": m.value for m in history},
            f"loss_d, last {last} steps": sum(tail) / len(tail)}


def same_columns(rows: list[dict]) -> list[dict]:
    """``rows`` with every column any of them has ("" where a row has none), in the order first seen,
    but the evaluations together, by their real batches (a wgan_gp run has only its last)."""
    seen = list(dict.fromkeys(column for row in rows for column in row))
    evaluations = [column for column in seen if column.startswith("fid_domain at ")]
    at = seen.index(evaluations[0])
    rest = [column for column in seen if column not in evaluations]
    columns = rest[:at] + sorted(evaluations, key=lambda column: int(column.split()[2].replace(",", ""))) + rest[at:]
    return [{column: row.get(column, "") for column in columns} for row in rows]


def tables(store: TrackingStore, command: str, landed: str | None) -> tuple[list[dict], list[dict]]:
    runs = complete_runs(store)
    # Each cell as a variant of its own: bench compare's best-of-k and scatter per cell.
    comparison = compare_study("kurach", runs=runs.assign(**{tag_column(Tag.VARIANT): runs["cell"]}))
    best = comparison.summary.set_index("variant")
    k = comparison.common_k
    baseline = runs[runs["cell"] == BASELINE_CELL].set_index("seed")
    repeats = runs[runs["cell"] == REPEATED_CELL]
    rows, each = [], []
    for cell, trials in runs.groupby("cell", sort=False):
        trials = trials.set_index("seed").sort_index()
        own = repeats[repeats[tag_column(Tag.STUDY)] == trials[tag_column(Tag.STUDY)].iloc[0]]
        paired = baseline if cell == REPEATED_CELL or own.empty else own.set_index("seed")
        if not trials.index.is_unique:
            raise SystemExit(f"{cell}: more than one complete trial with a seed (a study run twice into one MLflow "
                             "experiment?); one per seed is what the pairing needs")
        row = {"cell": cell, **design(trials[tag_column(Tag.VARIANT)].iloc[0], trials.iloc[0]),
               "seeds": len(trials), "fid_domain [95% CI]": interval(trials["metrics.fid_domain"])}
        for score, form in SCORES.items():
            if score != "fid_domain":
                row[score] = form.format(trials[f"metrics.{score}"].mean())
            row[f"{score} effect [95% CI]"] = ("" if cell == BASELINE_CELL or paired.empty else
                                               effect_text(trials[f"metrics.{score}"],
                                                           paired[f"metrics.{score}"], SCORES[score]))
        row[f"best of {k}"] = f"{best.loc[cell, f'best_of_{k}']:.1f}"
        curves = pd.DataFrame([curve(store, run) for _, run in trials.iterrows()], index=trials.index)
        rows.append({**row, **curve_text(curves.mean()), **provenance(trials, command, landed)})
        each += [{"cell": cell, "seed": seed, **curve_text(curves.loc[seed].dropna()),
                  **{score: form.format(run[f"metrics.{score}"]) for score, form in SCORES.items()},
                  "fid_domain as recorded": repr(float(run["metrics.fid_domain"])),  # every digit: repeats compare exactly
                  **provenance(trials.loc[[seed]], command, landed)} for seed, run in trials.iterrows()]
    values = comparison.trials.groupby("variant")["value"]
    rows, each = same_columns(rows), same_columns(each)
    figure = precision_recall_figure(comparison.trials, comparison.trials.loc[
        values.idxmax() if comparison.maximise else values.idxmin()], comparison)
    return rows, each, figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/results/kurach.csv"))
    parser.add_argument("--landed", metavar="COMMIT", help="for runs recorded as '<base>-dirty': the commit, "
                        "descended from <base>, where those changes landed")
    args = parser.parse_args()
    command = f"{'; '.join(f'bench run --study {study}' for study in STUDIES)}; python scripts/kurach.py"
    if args.landed:
        command += f" --landed {args.landed}"
    try:
        rows, each, figure = tables(TrackingStore.open(args.tracking_uri), command, args.landed)
    except BenchError as exc:  # no such store, or nothing to compare: its one line
        raise SystemExit(f"error: {exc}") from None
    write(args.output, rows)
    write(args.output.with_name(args.output.stem + "_runs.csv"), each)
    image = args.output.parent.parent / "figures" / f"{args.output.stem}-precision_recall.png"  # docs/figures/
    image.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(image, dpi=100)
    figures = list(rows[0])[:list(rows[0]).index("command")]  # the provenance columns come last
    print(pd.DataFrame(rows)[figures].to_string(index=False))
    print(f"wrote {args.output}, {args.output.stem}_runs.csv beside it, and {image}")


if __name__ == "__main__":
    main()
