"""The leaderboard: one row per study x variant x dataset x metric, built from what MLflow recorded."""

from __future__ import annotations

import pandas as pd

from bench.errors import ConfigError
from bench.scores import higher_is_better, is_score
from bench.study import BASELINE, StudySpec
from bench.schema import COUNTED_STATES, RUN_PARAMS, Tag, state_counts, tag_column
from bench.tracking import TrackingStore

KEYS = ["study", "variant", "dataset"]
NAMED = {tag_column(tag): tag.name.lower() for tag in (Tag.STUDY, Tag.VARIANT, Tag.DATASET, Tag.TRIAL, Tag.STATE,
                                                      Tag.ARM, Tag.OBJECTIVE, Tag.EXTERNAL)}
"""The tag columns the leaderboard and the effects read, by the names they read them under."""
COLUMNS = KEYS + ["metric", "direction", "best", "best_trial", "best_run_id", "best_params", *COUNTED_STATES,
                  "top_k", "top_k_mean", "top_k_std", "external"]
"""``external``: the provenance of an entry scored from images made elsewhere (`bench eval --images --name`),
empty for a variant ganbench trained."""


def leaderboard(tracking: TrackingStore | str | None = None, study: str | None = None, variant: str | None = None,
                top_k: int = 3) -> pd.DataFrame:
    """Best value, its hyperparameters and run, trial counts, and the mean and standard deviation
    over the best ``top_k`` complete trials, for every score the trials recorded. ``tracking``: a
    store or its URI (see :meth:`TrackingStore.open`)."""
    return rank(TrackingStore.open(tracking).trial_runs(study), variant, top_k)


def rank(runs: pd.DataFrame, variant: str | None = None, top_k: int = 3) -> pd.DataFrame:
    """The leaderboard of trial runs already read (:meth:`TrackingStore.trial_runs`): only complete
    trials are ranked; those still running are counted."""
    if runs.empty:
        return pd.DataFrame(columns=COLUMNS)
    runs = runs.rename(columns=NAMED)
    if variant is not None:
        runs = runs[runs["variant"] == variant]
    rows = []
    for (study_name, variant_name, dataset), group in runs.groupby(KEYS):
        counts = state_counts(group["state"])
        complete = group[group["state"] == "complete"]
        params = [column for column in group.columns
                  if column.startswith("params.") and column.removeprefix("params.") not in RUN_PARAMS]
        for column in sorted(c for c in group.columns if c.startswith("metrics.") and is_score(c[8:])):
            scored = complete.dropna(subset=[column])
            if scored.empty:
                continue
            maximise = higher_is_better(column[8:])
            ranked = scored.sort_values(column, ascending=not maximise)
            best, top = ranked.iloc[0], ranked[column].head(top_k)
            rows.append({
                "study": study_name, "variant": variant_name, "dataset": dataset, "metric": column[8:],
                "direction": "max" if maximise else "min", "best": best[column], "best_trial": int(best["trial"]),
                "best_run_id": best["run_id"],
                "best_params": " ".join(f"{c[7:]}={best[c]}" for c in params if pd.notna(best[c])),
                **counts, "top_k": len(top), "top_k_mean": top.mean(),
                "top_k_std": top.std(ddof=1) if len(top) > 1 else float("nan"),
                "external": best["external"] if pd.notna(best.get("external")) else ""})
    return pd.DataFrame(rows, columns=COLUMNS)


EFFECT_COLUMNS = KEYS + ["arm", "settings", "seeds", "metric", "mean", "effect", "ci_low", "ci_high", "verdict",
                         "classes_covered", "coverage_effect", "class_kl", "class_kl_effect"]


def mean_interval(values: pd.Series, confidence: float) -> tuple[float, float, float]:
    """(mean, CI low, CI high) of ``values`` (NaN left out): Student's t interval on their mean."""
    from scipy import stats

    values = values.dropna()
    n = len(values)
    mean = values.mean() if n else float("nan")
    if n < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf((1 + confidence) / 2, n - 1) * values.std(ddof=1) / n ** 0.5
    return mean, mean - half, mean + half


def paired_effect(values: pd.Series, baseline: pd.Series, confidence: float) -> tuple[float, float, float]:
    """(mean difference, CI low, CI high) of ``values - baseline`` over the seeds both have
    (series indexed by seed): Student's t interval on the paired differences."""
    return mean_interval(values - baseline, confidence)


def arm_effect(arm: pd.DataFrame, baseline: pd.DataFrame, metric: str,
               confidence: float) -> tuple[float, float, float, float]:
    """(mean, effect, CI low, CI high) of ``metric`` for an arm's runs against the baseline's
    (both indexed by seed); NaN where the metric was not recorded."""
    column = f"metrics.{metric}"
    if column not in arm:
        return (float("nan"),) * 4
    return (arm[column].mean(), *paired_effect(arm[column], baseline[column], confidence))


def study_table(spec: StudySpec, variant: str, tracking: TrackingStore) -> pd.DataFrame:
    """What `bench run` shows when a study ends: an ablation's effects, or the objective's row of the
    leaderboard (without the run id, which the full leaderboard gives)."""
    if spec.is_ablation:
        return effects(tracking, spec.name, variant)
    table = leaderboard(tracking, spec.name, variant)
    return table[table["metric"] == spec.objective].drop(columns=["best_run_id"])


def effects(tracking: TrackingStore | str | None = None, study: str | None = None, variant: str | None = None,
            confidence: float = 0.95) -> pd.DataFrame:
    """For an ablation study (arms x seeds), each arm's effect on the objective and on mode
    coverage: the mean over seeds of (arm - baseline) with the same seed, and a ``confidence``
    interval on it. Only complete trials count; an arm's verdict is 'better' or 'worse' when
    its interval excludes 0, else 'no clear effect'."""
    runs = TrackingStore.open(tracking).trial_runs(study)
    if runs.empty or tag_column(Tag.ARM) not in runs:
        raise ConfigError(f"no ablation trials (tag {Tag.ARM}) in study '{study}'; effects need a study with "
                          "[arms], run with `bench run --study ...` first")
    runs = runs.rename(columns=NAMED)
    runs = runs[(runs["state"] == "complete") & runs["arm"].notna()]
    if variant is not None:
        runs = runs[runs["variant"] == variant]
    params = sorted(column for column in runs.columns
                    if column.startswith("params.") and column.removeprefix("params.") not in RUN_PARAMS)
    rows = []
    for (study_name, variant_name, dataset), group in runs.groupby(KEYS):
        objective = group["objective"].iloc[0]
        by_arm = {arm: rows_.set_index(rows_["params.seed"].astype(int)) for arm, rows_ in group.groupby("arm")}
        if BASELINE not in by_arm:
            continue
        baseline = by_arm[BASELINE]
        for arm, table in sorted(by_arm.items(), key=lambda item: (item[0] != BASELINE, item[0])):
            mean, effect, low, high = arm_effect(table, baseline, objective, confidence)
            covered, coverage_effect, _, _ = arm_effect(table, baseline, "classes_covered", confidence)
            class_kl, class_kl_effect, _, _ = arm_effect(table, baseline, "class_kl", confidence)
            better, worse = (low > 0, high < 0) if higher_is_better(objective) else (high < 0, low > 0)
            settings = " ".join(f"{c[7:]}={table[c].iloc[0]}" for c in params if pd.notna(table[c].iloc[0]))
            rows.append({
                "study": study_name, "variant": variant_name, "dataset": dataset, "arm": arm,
                "settings": settings or "defaults", "seeds": len(table), "metric": objective, "mean": mean,
                "effect": effect, "ci_low": low, "ci_high": high,
                "verdict": "" if arm == BASELINE else "better" if better else "worse" if worse else "no clear effect",
                "classes_covered": covered, "coverage_effect": coverage_effect, "class_kl": class_kl,
                "class_kl_effect": class_kl_effect})
    return pd.DataFrame(rows, columns=EFFECT_COLUMNS)
