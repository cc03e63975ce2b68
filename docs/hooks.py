"""MkDocs hooks: the tables a page marks are generated at build time, never typed.

``<!-- table: results/lucic.csv -->`` becomes that data file's table (its figure columns), followed
by where each row came from (command, commit, seed, device, precision, dataset, budget, machine,
date). ``<!-- scores -->`` becomes the table of scores defined in ``bench/scores.py``."""

from __future__ import annotations

import csv
import re
from pathlib import Path

DOCS = Path(__file__).resolve().parent
PROVENANCE = ("command", "commit", "seed", "device", "precision", "dataset", "budget", "machine", "cores", "torch",
              "date")
"""The columns every data file has besides its figures: how each row's figures were produced."""
TABLE = re.compile(r"^<!-- table: (\S+\.csv) -->$", re.M)
SCORES = "<!-- scores -->"


def read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    missing = [column for column in PROVENANCE if rows and column not in rows[0]]
    if not rows or missing:
        raise ValueError(f"{path}: no rows, or without the provenance columns {missing}")
    for number, row in enumerate(rows, 2):
        empty = [column for column in PROVENANCE if column != "torch" and not row[column].strip()]
        if empty:
            raise ValueError(f"{path}, line {number}: {', '.join(empty)} not recorded")
    return rows


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def figures_of(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The figure columns of a data file (every column but the provenance ones) and its rows."""
    rows = read(path)
    return [column for column in rows[0] if column not in PROVENANCE], rows


def render_table(path: Path, link: str) -> str:
    columns, rows = figures_of(path)
    table = markdown_table(columns, [[row[column] for column in columns] for row in rows])
    runs: dict[tuple, list[str]] = {}
    for row in rows:
        key = tuple(row[column] for column in PROVENANCE)
        runs.setdefault(key, []).append(row[columns[0]])
    sources = []
    for key, names in runs.items():
        run = dict(zip(PROVENANCE, key))
        commands = "; ".join(f"`{command.strip()}`" for command in run["command"].split(";"))
        torch = f", torch {run['torch']}" if run["torch"] else ""
        sources.append(f"- {', '.join(names)}: {commands}; seed {run['seed']}, {run['device']}, {run['precision']}, "
                       f"{run['dataset']}, {run['budget']}; {run['machine']}, {run['cores']} cores{torch}; "
                       f"commit {run['commit']}, {run['date']}")
    return f"{table}\n\nData: [{link}]({link}). Each row's run:\n\n" + "\n".join(sources) + "\n"


def render_scores() -> str:
    from bench.scores import SCORES as DEFINED

    needs = {"": "generated images", "classifier": "the domain classifier", "labels": "a conditional generator",
             "codes": "a categorical latent code",
             "logits": "Inception's classification weights"}
    rows = [[f"`{score.name}_EXTRACTOR`" if score.per_extractor else f"`{score.name}`",
             ("higher" if score.higher_is_better else "lower") if score.ranked else "(not ranked)",
             needs.get(score.needs, score.needs), score.summary]
            for score in DEFINED]
    return markdown_table(["score", "better", "needs", "what it measures"], rows)


def expand(markdown: str, page_path: Path) -> str:
    """The page's markdown with every marker replaced by its generated table."""
    def table(match: re.Match) -> str:
        return render_table((page_path.parent / match.group(1)).resolve(), match.group(1))

    markdown = TABLE.sub(table, markdown)
    return markdown.replace(SCORES, render_scores()) if SCORES in markdown else markdown


def on_page_markdown(markdown, page, config, files):
    return expand(markdown, DOCS / page.file.src_path)
