"""The documentation's Python runs: each ```python block of README.md and of the pages under docs/,
as written, against the installed package, with only its training budget cut to a test's size, so
the docs cannot rot unnoticed; each ```toml block is a file TOML reads."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import TINY_STUDY, clean_env

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
BUDGET_CUTS = {
    "import leaderboard, run_study": [('"lr_sweep", trials=8, workers=2', '"tiny.toml", trials=2, workers=2'),
                                      ('study="lr_sweep"', 'study="tiny"')],
    "import TrainConfig, evaluate, train": [("steps=500", "steps=20"), ("samples=2000", "samples=300")],
    "class LeastSquaresGAN": [("steps=2000", "steps=20")],
}
"""For each block (by text it contains): the budget it spends, and what the test spends instead.
Every block must be listed, and every cut must find its text."""
WRITES = {
    "import leaderboard, run_study": "results/optuna/journal.log",
    "import TrainConfig, evaluate, train": "results/train/dcgan-1e-4/checkpoint.pt",
    "class LeastSquaresGAN": "results/train/my_lsgan/checkpoint.pt",
}


def blocks(language: str) -> list[str]:
    return [block for page in PAGES
            for block in re.findall(rf"^```{language}\n(.*?)^```", page.read_text(), flags=re.S | re.M)]


def python_blocks() -> list[str]:
    return blocks("python")


def test_every_toml_block_of_the_docs_parses():
    import tomllib

    assert len(blocks("toml")) >= 3
    for block in blocks("toml"):
        tomllib.loads(block)


def test_every_python_block_of_the_docs_has_a_budget_cut():
    blocks = python_blocks()
    assert len(blocks) == len(BUDGET_CUTS)
    assert all(sum(key in block for block in blocks) == 1 for key in BUDGET_CUTS)
    called = "".join(blocks)
    assert all(f"{api}(" in called for api in ("train", "evaluate", "run_study", "leaderboard")), \
        "the docs show each function of the Python API that a command wraps"


@pytest.mark.e2e
@pytest.mark.parametrize("key", list(BUDGET_CUTS))
def test_the_docs_python_block_runs(key, project_folder):
    folder = project_folder("readme")
    (folder / "tiny.toml").write_text(TINY_STUDY.format(steps=20, eval_every=20))
    [code] = [block for block in python_blocks() if key in block]
    for written, cut in BUDGET_CUTS[key]:
        assert written in code, f"the docs block changed its budget: {written!r} not found"
        code = code.replace(written, cut)
    result = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=300,
                            env=clean_env())
    assert result.returncode == 0, result.stderr[-3000:]
    assert (folder / WRITES[key]).exists()
