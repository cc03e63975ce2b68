"""Variants compared at equal budget, as Lucic et al. 2018 did ("Are GANs Created Equal?").

With enough trials most variants reach similar scores, so a fair comparison asks what each
reaches with the same number of trials k. The expected best of k trials drawn without
replacement from a variant's complete trials answers it (k = 1 gives the mean trial, k = n the
best one); how far that could move with k other trials is the bootstrap's answer (draws with
replacement, as Lucic et al. resampled): the 95% band and the odds that one variant's best beats
another's come from it. Both distributions are computed exactly here, without resampling noise.
By training seconds instead of trials, the trials' order is drawn at random many times.
"""

from __future__ import annotations

import io
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bench.errors import ConfigError
from bench.scores import extractor_of, higher_is_better
from bench.schema import RUNNING, Tag, state_counts, tag_column
from bench.tracking import TrackingStore

BAND = (0.025, 0.975)
"""The band drawn around each expected best: the central 95% of its distribution."""
SECONDS_DRAWS = 2000
"""Random trial orders behind the best-by-seconds curves."""


def best_of_k_distribution(values: np.ndarray, k: int, maximise: bool,
                           replace: bool) -> tuple[np.ndarray, np.ndarray]:
    """(values sorted best first, the probability that each is the best of k of them). Without
    replacement the i-th best (from 0) is the best of a k-subset when the other k - 1 come from the
    n - 1 - i worse ones: C(n - 1 - i, k - 1) / C(n, k). With replacement the best is at rank i or
    better with probability 1 - ((n - 1 - i) / n)^k."""
    ranked = np.sort(values)[::-1] if maximise else np.sort(values)
    n = len(ranked)
    if replace:
        at_or_better = 1 - ((n - 1 - np.arange(n)) / n) ** k
        return ranked, np.diff(at_or_better, prepend=0.0)
    probabilities = np.array([math.comb(n - 1 - i, k - 1) for i in range(n)], dtype=float) / math.comb(n, k)
    return ranked, probabilities


def best_of_k(values: np.ndarray, maximise: bool) -> pd.DataFrame:
    """For k = 1..n: the expected best of k of the trials (drawn without replacement), and the
    central 95% of the bootstrap's best of k (drawn with replacement)."""
    rows = []
    for k in range(1, len(values) + 1):
        ranked, probabilities = best_of_k_distribution(values, k, maximise, replace=False)
        _, bootstrap = best_of_k_distribution(values, k, maximise, replace=True)
        cumulative = np.cumsum(bootstrap)
        edges = [ranked[min(np.searchsorted(cumulative, q - 1e-12), len(ranked) - 1)] for q in BAND]
        rows.append({"k": k, "expected": float(probabilities @ ranked), "low": float(min(edges)),
                     "high": float(max(edges))})
    return pd.DataFrame(rows)


def probability_better(a: np.ndarray, b: np.ndarray, k: int, maximise: bool) -> float:
    """P(the best of k of ``a``'s trials beats the best of k of ``b``'s), each drawn with replacement
    (the bootstrap), a tie counting half."""
    a_values, a_probabilities = best_of_k_distribution(a, k, maximise, replace=True)
    b_values, b_probabilities = best_of_k_distribution(b, k, maximise, replace=True)
    difference = a_values[:, None] - b_values[None, :]
    better = (difference > 0) if maximise else (difference < 0)
    weight = np.outer(a_probabilities, b_probabilities)
    return float((weight * (better + 0.5 * (difference == 0))).sum())


def best_by_seconds(values: np.ndarray, seconds: np.ndarray, grid: np.ndarray, maximise: bool,
                    seed: int = 0) -> pd.DataFrame:
    """The expected best after spending each of ``grid``'s seconds on trials taken in a random order
    (and the 95% band), over SECONDS_DRAWS orders; NaN where no order has finished a trial yet."""
    generator = np.random.default_rng(seed)
    orders = np.argsort(generator.random((SECONDS_DRAWS, len(values))), axis=1)
    spent = np.cumsum(seconds[orders], axis=1)
    running = (np.maximum if maximise else np.minimum).accumulate(values[orders], axis=1)
    rows = []
    for budget in grid:
        done = (spent <= budget).sum(axis=1)
        reached = running[np.arange(SECONDS_DRAWS), np.maximum(done - 1, 0)][done > 0]
        rows.append({"seconds": float(budget),
                     "expected": float(reached.mean()) if len(reached) else math.nan,
                     "low": float(np.quantile(reached, BAND[0])) if len(reached) else math.nan,
                     "high": float(np.quantile(reached, BAND[1])) if len(reached) else math.nan})
    return pd.DataFrame(rows)


@dataclass
class Comparison:
    """What `bench compare` shows and plots."""

    study: str
    objective: str
    maximise: bool
    trials: pd.DataFrame
    """Every trial run: variant, state, objective value, seconds, run id, and its precision and recall
    on ``fidelity_extractor`` (NaN without them)."""
    summary: pd.DataFrame
    """Per variant: trial counts, the expected best of k at k = 1, 5 and the largest k all share, and the best."""
    pairs: pd.DataFrame
    """Per pair of variants: P(the first's best of k beats the second's) at the common k."""
    by_trials: pd.DataFrame
    """variant, k, expected, low, high."""
    by_seconds: pd.DataFrame
    """variant, seconds, expected, low, high."""
    common_k: int
    """The largest k every variant has complete trials for."""
    pruned: bool
    """Some trials were pruned: the best-of-k of the complete ones is then biased."""
    fidelity_extractor: str | None = None
    """The features the trials' precision and recall come from: the objective's, else the final
    scoring's Inception ones, else domain; None when the trials logged neither."""
    running: int = 0
    """Trials still running: shown and counted, not ranked until they end."""
    external: pd.DataFrame = field(default_factory=pd.DataFrame)
    """Entries scored from images made elsewhere (`bench eval --images --name`): name, value, precision,
    recall, provenance, run id. Ranked beside the variants, never drawn into a best-of-k."""
    grids: dict[str, np.ndarray | None] = field(default_factory=dict, repr=False)
    """The final samples read so far, by run id (each artifact is read, and warned about, once)."""

    def samples(self, store: TrackingStore, run_id: str) -> np.ndarray | None:
        """Run ``run_id``'s final sample grid (an RGB array), or None (see :meth:`TrackingStore.final_samples`)."""
        if run_id not in self.grids:
            image = store.final_samples(run_id)
            self.grids[run_id] = None if image is None else np.asarray(image.convert("RGB"))
        return self.grids[run_id]


def compare_study(study: str, tracking: TrackingStore | str | None = None, runs: pd.DataFrame | None = None) -> Comparison:
    """Compares the study's variants at equal budget, from its trial runs in MLflow (``runs``
    when they are already read, :meth:`TrackingStore.trial_runs`). ``tracking``: a store or its URI
    (see :meth:`TrackingStore.open`)."""
    runs = TrackingStore.open(tracking).trial_runs(study) if runs is None else runs
    marked = runs[tag_column(Tag.EXTERNAL)].notna() if tag_column(Tag.EXTERNAL) in runs else pd.Series(False, runs.index)
    outside, runs = runs[marked], runs[~marked]
    objectives = runs[tag_column(Tag.OBJECTIVE)].dropna() if tag_column(Tag.OBJECTIVE) in runs else pd.Series()
    if objectives.empty:
        raise ConfigError(f"study '{study}' has no trials to compare yet; run `bench run --study {study}` first")
    objective = objectives.iloc[0]  # the reader has checked that each one is a score
    maximise = higher_is_better(objective)
    metric = f"metrics.{objective}"
    seconds = (runs["end_time"] - runs["start_time"]).dt.total_seconds()  # NaN while a trial runs
    trials = pd.DataFrame({"variant": runs[tag_column(Tag.VARIANT)], "state": runs[tag_column(Tag.STATE)],
                           "value": runs[metric] if metric in runs else math.nan, "seconds": seconds,
                           "run_id": runs["run_id"], "trial": runs[tag_column(Tag.TRIAL)].astype(int)})
    extractor = fidelity_extractor(objective, runs)
    for score in ("precision", "recall"):
        trials[score] = runs[f"metrics.{score}_{extractor}"] if extractor else math.nan
    complete = trials[(trials["state"] == "complete") & trials["value"].notna()]
    running = int((trials["state"] == RUNNING).sum())
    if complete.empty:
        raise ConfigError(f"study '{study}' has no complete trial with {objective} yet"
                          + (f" ({running} running)" if running else "") + "; let `bench run` finish one")
    summary_rows, by_trials, by_seconds = [], [], []
    values = {name: group["value"].to_numpy() for name, group in complete.groupby("variant")}
    common = int(min(len(v) for v in values.values()))
    shown = sorted({k for k in (1, 5, common) if k <= max(len(v) for v in values.values())})
    for name, group in trials.groupby("variant"):
        row = {"variant": name, **state_counts(group["state"])}
        if name in values:
            curve = best_of_k(values[name], maximise).assign(variant=name)
            for k in shown:
                row[f"best_of_{k}"] = float(curve["expected"].iloc[k - 1]) if k <= len(curve) else math.nan
            by_trials.append(curve)
            done = complete[complete["variant"] == name]
            grid = np.linspace(done["seconds"].max(), done["seconds"].sum(), 24)
            by_seconds.append(best_by_seconds(done["value"].to_numpy(), done["seconds"].to_numpy(), grid,
                                              maximise).assign(variant=name))
            row["best"] = float(curve["expected"].iloc[-1])
        summary_rows.append(row)
    summary = pd.DataFrame(summary_rows)
    names = sorted(values)
    pairs = pd.DataFrame([{"variant": a, "other": b, "k": common,
                           "p_better": probability_better(values[a], values[b], common, maximise)}
                          for i, a in enumerate(names) for b in names[i + 1:]],
                         columns=["variant", "other", "k", "p_better"])
    external = pd.DataFrame({
        "name": outside[tag_column(Tag.VARIANT)], "value": outside.get(metric, math.nan),
        **{score: outside.get(f"metrics.{score}_{extractor}", math.nan) for score in ("precision", "recall")},
        "provenance": outside.get(tag_column(Tag.EXTERNAL)), "run_id": outside["run_id"]},
        columns=["name", "value", "precision", "recall", "provenance", "run_id"]).sort_values("value", ascending=not maximise)
    return Comparison(study, objective, maximise, trials, summary, pairs,
                      pd.concat(by_trials, ignore_index=True), pd.concat(by_seconds, ignore_index=True),
                      common_k=common, pruned=bool((trials["state"] == "pruned").any()), fidelity_extractor=extractor,
                      running=running, external=external)


def fidelity_extractor(objective: str, runs: pd.DataFrame) -> str | None:
    for extractor in filter(None, (extractor_of(objective), "inception", "domain")):
        if {f"metrics.precision_{extractor}", f"metrics.recall_{extractor}"} <= set(runs.columns):
            return extractor
    return None


def report_lines(comparison: Comparison) -> list[str]:
    """The comparison as `bench compare` prints it."""
    c = comparison
    lines = [f"study {c.study}: expected best {c.objective} ({'higher' if c.maximise else 'lower'} is better) "
             f"of k trials drawn from each variant's complete trials; k = {c.common_k} is the largest all share"]
    if c.pruned:
        lines.append("warning: this study pruned trials; a pruned trial might have ended better, so best-of-k "
                     "from the complete ones is biased. Compare with a study without a pruner (e.g. lucic_wide).")
    if c.running:
        lines.append(f"the study is still running: {c.running} trial{'s' if c.running > 1 else ''} running, "
                     f"not ranked until {'they end' if c.running > 1 else 'it ends'}")
    lines += c.summary.to_string(index=False, float_format="{:.4g}".format).splitlines()
    for pair in c.pairs.itertuples():
        lines.append(f"P({pair.variant} beats {pair.other}, best of {pair.k}, bootstrap) = {pair.p_better:.2f}")
    if len(c.external):
        lines.append(f"external entries (images made elsewhere, scored as the trials; not in best-of-k): {c.objective}")
        lines += c.external.drop(columns=["run_id"]).to_string(index=False, float_format="{:.4g}".format).splitlines()
    return lines


def figures(comparison: Comparison, store: TrackingStore) -> dict[str, object]:
    """The comparison's plots as matplotlib figures, by file name: best of k, best by seconds, the
    spread of each variant's trial scores, precision against recall, each best trial's objective by
    step and its samples."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    c = comparison
    result = {}
    for name, curves, x, xlabel in (("best_of_k.png", c.by_trials, "k", "trials (k)"),
                                    ("best_by_seconds.png", c.by_seconds, "seconds", "training seconds spent")):
        figure = Figure(figsize=(6, 4), layout="constrained")
        axis = figure.subplots()
        for variant, curve in curves.groupby("variant"):
            line, = axis.plot(curve[x], curve["expected"], marker=".", label=variant)
            axis.fill_between(curve[x], curve["low"], curve["high"], color=line.get_color(), alpha=0.15)
        axis.set(xscale="log", xlabel=xlabel, ylabel=f"expected best {c.objective}")
        axis.set_title(f"{c.study}: best {c.objective} at equal budget, 95% bootstrap band", fontsize="medium")
        if x == "k":  # whole trial counts, not powers of ten
            ks = sorted(curves["k"].unique())
            axis.set_xticks(ks[::max(1, len(ks) // 10)], minor=False)
            axis.xaxis.set_major_formatter(ScalarFormatter())
            axis.xaxis.set_minor_formatter(NullFormatter())
        axis.legend()
        result[name] = figure

    complete = c.trials[(c.trials["state"] == "complete") & c.trials["value"].notna()]
    names = sorted(complete["variant"].unique())
    figure = Figure(figsize=(max(6.0, 1.2 * len(names) + 2), 4), layout="constrained")  # the title fits
    axis = figure.subplots()
    axis.boxplot([complete.loc[complete["variant"] == name, "value"] for name in names], tick_labels=names)
    axis.set(ylabel=c.objective, title="every complete trial: sensitivity to the hyperparameters")
    result["trial_scores.png"] = figure

    best = complete.sort_values("value", ascending=not c.maximise).groupby("variant").head(1).sort_values("variant")
    scored = complete.dropna(subset=["precision", "recall"])
    if len(scored):
        result["precision_recall.png"] = precision_recall_figure(scored, best, c)
    client = store.client
    figure = Figure(figsize=(6, 4), layout="constrained")
    axis = figure.subplots()
    for row in best.itertuples():
        history = client.get_metric_history(row.run_id, c.objective)
        axis.plot([m.step for m in history], [m.value for m in history], marker=".",
                  label=f"{row.variant} (trial {row.trial})")
    axis.set(xlabel="generator step", ylabel=c.objective, title="each variant's best trial during training")
    axis.legend()
    result["best_trial_curves.png"] = figure

    grids = {row.variant: c.samples(store, row.run_id) for row in best.itertuples()}
    grids = {name: grid for name, grid in grids.items() if grid is not None}
    if grids:
        figure = Figure(figsize=(3 * len(grids), 3.4), layout="constrained")
        for axis, (name, grid) in zip(np.atleast_1d(figure.subplots(1, len(grids))), grids.items()):
            axis.imshow(grid, cmap="gray")
            axis.set(title=name, xticks=[], yticks=[])
        result["best_samples.png"] = figure
    return result


def precision_recall_figure(trials: pd.DataFrame, best: pd.DataFrame, c: Comparison):
    """Fidelity against diversity: every trial a dot, each variant's best trial (by the objective) a
    star. Mode collapse sits top left: real-looking samples of a small part of the data."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5, 5), layout="constrained")
    axis = figure.subplots()
    many = len(best) > 10  # past the default cycle's 10 colours: tab20's dark ten, then its light ten
    for index, variant in enumerate(best["variant"]):  # every variant in its colour of the other plots
        color = colormaps["tab20"]((2 * index) % 20 + (index // 10) % 2) if many else f"C{index}"
        group = trials[trials["variant"] == variant]
        axis.scatter(group["recall"], group["precision"], s=18, alpha=0.4, color=color)
        top = best[best["variant"] == variant]
        axis.scatter(top["recall"], top["precision"], s=160, marker="*", color=color, edgecolors="black",
                     label=variant)
    extractor = c.fidelity_extractor
    axis.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel=f"recall_{extractor} (diversity)",
             ylabel=f"precision_{extractor} (fidelity)")
    axis.set_title(f"every trial; star: each variant's best by {c.objective}", fontsize="medium")
    axis.legend(loc="lower right")
    return figure


def figure_images(comparison: Comparison, store: TrackingStore) -> dict[str, bytes]:
    """:func:`figures` rendered as PNG bytes, by file name."""
    images = {}
    for name, figure in figures(comparison, store).items():
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100)
        images[name] = buffer.getvalue()
    return images


def write(comparison: Comparison, out: Path | None, store: TrackingStore, run_id: str | None = None) -> dict[str, bytes]:
    """Renders the figures (PNG bytes by file name), writes them and the tables to ``out`` and logs
    them to the MLflow run ``run_id`` (the study's latest parent run by default)."""
    images = figure_images(comparison, store)
    tables = {"comparison.csv": comparison.summary, "pairs.csv": comparison.pairs, "trials.csv": comparison.trials,
              "best_of_k.csv": comparison.by_trials, "best_by_seconds.csv": comparison.by_seconds}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for name, data in images.items():
            (out / name).write_bytes(data)
        for name, table in tables.items():
            table.to_csv(out / name, index=False)
    run_id = run_id or store.parent_run(comparison.study)
    if run_id is not None:
        with tempfile.TemporaryDirectory() as folder:
            for name, data in images.items():
                (Path(folder) / name).write_bytes(data)
            for name, table in tables.items():
                table.to_csv(Path(folder) / name, index=False)
            store.client.log_artifacts(run_id, folder, "comparison")
    return images
