"""`bench report`: one self-contained HTML page per study (images embedded, no script, nothing
fetched), to read offline or send: the leaderboard, the comparison at equal budget and its
plots, each variant's best samples and doctor findings, what failed or was pruned and why, and
how the numbers were made. Everything read from MLflow is escaped: a tag is untrusted text."""

from __future__ import annotations

import base64
import html
import io
import time
from pathlib import Path

import pandas as pd

from bench.compare import Comparison, compare_study, figure_images
from bench.errors import ConfigError
from bench.ranking import rank
from bench.scores import SCORES, score_of
from bench.schema import HEALTH_PREFIX, RETRIED, RUNNING, STUDY_PARAMS, VERSION_PREFIX, Tag, tag_column
from bench.tracking import TrackingStore

STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child{text-align:left}img{max-width:100%}.variant{display:inline-block;
margin:0 1em 1em 0;vertical-align:top;text-align:center}.variant img{width:260px;image-rendering:pixelated}
.warning{color:#a40}.wide{overflow-x:auto;max-width:100%;margin:.5em 0 1.5em}.wide table{margin:0}
h1,h2,h3{overflow-wrap:anywhere}"""


def png(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def table(frame: pd.DataFrame) -> str:
    """A table that scrolls inside its own box when it is wider than the page."""
    html_table = frame.to_html(index=False, float_format="{:.4g}".format, na_rep="", border=0, escape=True)
    return f"<div class='wide'>{html_table}</div>"


def render(study: str, store: TrackingStore) -> str:
    """The report of ``study`` as an HTML string."""
    from PIL import Image

    runs = store.trial_runs(study)  # read once: the comparison and the leaderboard both rank them
    running = int((runs[tag_column(Tag.STATE)] == RUNNING).sum()) if len(runs) else 0
    try:
        comparison: Comparison = compare_study(study, store, runs)
    except ConfigError:
        if not running:
            raise
        return first_trials_page(study, store, runs, running)
    board = rank(runs)
    board = board[board["metric"] == comparison.objective].sort_values("variant")
    escape = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>ganbench report: {escape(study)}</title>"
             f"<style>{STYLE}</style></head><body><h1>Study {escape(study)}</h1>"
             f"<p>Generated {time.strftime('%Y-%m-%d %H:%M')} from {escape(str(len(runs)))} trial runs. Objective "
             f"<b>{escape(comparison.objective)}</b> ({escape(score_of(comparison.objective).summary)}), "
             f"{'higher' if comparison.maximise else 'lower'} is better.</p>"]
    if comparison.running:  # a live study: what is ranked is what has ended so far
        parts.append(f"<p class='running'>The study is still running: {comparison.running} "
                     f"trial{'s' if comparison.running > 1 else ''} running, not ranked until "
                     f"{'they end' if comparison.running > 1 else 'it ends'}.</p>")
    fidelity = pd.concat([comparison.trials, comparison.external]).set_index("run_id")[["precision", "recall"]]

    parts.append("<h2>Each variant's best trial</h2>")
    for row in board.itertuples():
        variant, grid = row.variant, comparison.samples(store, row.best_run_id)
        image = ""
        if grid is not None:
            buffer = io.BytesIO()
            Image.fromarray(grid).save(buffer, format="png")
            image = png(buffer.getvalue(), f"samples of {variant}")
        precision, recall = fidelity.loc[row.best_run_id] if row.best_run_id in fidelity.index else (None, None)
        balance = (f"<br>precision {precision:.2f}, recall {recall:.2f} ({escape(comparison.fidelity_extractor)})"
                   if pd.notna(precision) and pd.notna(recall) else "")
        where = (f"<br><span class='external'>external: {escape(row.external)}</span>" if row.external
                 else f" (trial {int(row.best_trial)})")
        parts.append(f"<div class='variant' data-variant='{escape(variant)}'><h3>{escape(variant)}</h3>{image}"
                     f"<p>best {escape(comparison.objective)} <b class='best'>{row.best:.4g}</b>"
                     f"{where}{balance}</p></div>")

    parts.append("<h2>Leaderboard</h2>" + table(board.drop(columns=["study", "best_run_id"])))
    parts.append(f"<h2>At equal budget</h2><p>Expected best {escape(comparison.objective)} of k trials drawn "
                 f"from each variant's complete trials (Lucic et al. 2018); k = {comparison.common_k} is the "
                 "largest every variant has.</p>")
    if comparison.pruned:
        parts.append("<p class='warning'>This study pruned trials: best-of-k over the complete ones is biased.</p>")
    parts.append(table(comparison.summary))
    if len(comparison.external):
        parts.append("<p>External entries: images a generator made elsewhere, scored as the trials are "
                     "(`bench eval --images --name`); ranked in the leaderboard, not drawn into best-of-k.</p>"
                     + table(comparison.external.drop(columns=["run_id"]).rename(columns={"value": comparison.objective})))
    if len(comparison.pairs):
        parts.append(table(comparison.pairs.rename(columns={"p_better": "P(variant's best beats other's)"})))
    for name, data in figure_images(comparison, store).items():
        parts.append(png(data, name.removesuffix(".png").replace("_", " ")))
    parts.append("<h2>What the scores mean</h2>" + table(pd.DataFrame(
        [(score.name, "higher" if score.higher_is_better else "lower", score.summary) for score in SCORES],
        columns=["score", "better", "what it measures"])))

    parts.append("<h2>Doctor findings, failures and pruning</h2>")
    found = problems(runs)
    parts.append(table(found) if len(found) else "<p>None: no finding, no failed or pruned trial.</p>")

    parts.append("<h2>How the numbers were made</h2>" + table(provenance(store, study, runs)))
    parts.append("</body></html>")
    return "\n".join(parts)


def first_trials_page(study: str, store: TrackingStore, runs: pd.DataFrame, running: int) -> str:
    """The report of a study that has no complete trial yet, only running ones (and perhaps failed
    or pruned ones): what runs, what went wrong so far, and how the numbers are being made."""
    escape = html.escape
    found = problems(runs)
    return "\n".join([
        f"<!doctype html><html><head><meta charset='utf-8'><title>ganbench report: {escape(study)}</title>"
        f"<style>{STYLE}</style></head><body><h1>Study {escape(study)}</h1>",
        f"<p>Generated {time.strftime('%Y-%m-%d %H:%M')} from {len(runs)} trial runs.</p>",
        f"<p class='running'>The study is still running: {running} trial{'s' if running > 1 else ''} running, "
        "none complete yet. Run `bench report` again when one is, for the ranking and its plots.</p>",
        "<h2>Doctor findings, failures and pruning</h2>",
        table(found) if len(found) else "<p>None so far.</p>",
        "<h2>How the numbers are made</h2>" + table(provenance(store, study, runs)),
        "</body></html>"])


def problems(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per doctor finding, failed or pruned trial, and stop after which a trial was queued
    again: variant, trial, what, and the reason."""
    rows = []
    variant, trial, state = tag_column(Tag.VARIANT), tag_column(Tag.TRIAL), tag_column(Tag.STATE)
    health = tag_column(HEALTH_PREFIX)
    for _, run in runs.sort_values([variant, trial]).iterrows():
        for name in sorted(c for c in runs.columns if c.startswith(health)):
            if pd.notna(run[name]):
                rows.append({"variant": run[variant], "trial": run[trial],
                             "what": f"doctor: {name.removeprefix(health)}", "detail": run[name]})
        if run[state] in ("failed", "pruned", RETRIED):
            rows.append({"variant": run[variant], "trial": run[trial],
                         "what": "stopped and retried" if run[state] == RETRIED else run[state],
                         "detail": run.get(tag_column(Tag.END_REASON), "")})
    return pd.DataFrame(rows, columns=["variant", "trial", "what", "detail"])


def provenance(store: TrackingStore, study: str, runs: pd.DataFrame) -> pd.DataFrame:
    """Dataset, extractor, budget, seeds, device, machine, precision, versions and git commit, as recorded."""
    rows = {}
    parent = store.parent_run(study)
    if parent is not None:
        recorded = store.client.get_run(parent).data
        for key in STUDY_PARAMS:
            if key in recorded.params:
                rows[key] = recorded.params[key]
    for tag in (Tag.DATASET, Tag.EXTRACTOR, Tag.DEVICE, Tag.MACHINE, Tag.PRECISION, Tag.GIT_COMMIT, Tag.PYTHON):
        if tag_column(tag) in runs:
            rows[tag.name.lower()] = ", ".join(sorted(runs[tag_column(tag)].dropna().astype(str).unique()))
    if tag_column(Tag.SEED) in runs:
        seeds = sorted(runs[tag_column(Tag.SEED)].dropna().astype(int).unique())
        rows["seeds"] = f"{seeds[0]}..{seeds[-1]} ({len(seeds)} distinct)" if seeds else ""
    versions = tag_column(VERSION_PREFIX)
    for name in sorted(c for c in runs.columns if c.startswith(versions)):
        rows[name.removeprefix(versions)] = ", ".join(sorted(runs[name].dropna().unique()))
    return pd.DataFrame({"what": list(rows), "value": list(rows.values())})


def write_report(study: str, out: Path | str, tracking: TrackingStore | str | None = None) -> Path:
    """Writes the report of ``study`` to ``out`` (an .html file). ``tracking``: a store or its URI
    (see :meth:`TrackingStore.open`)."""
    out, page = Path(out), render(study, TrackingStore.open(tracking))  # a study that cannot be read leaves no folder behind
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
