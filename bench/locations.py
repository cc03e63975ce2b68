"""Where bench keeps things: the results folder and its parts, relative to the folder it runs in,
and the check that a command's output can be written before any work is done. The stores' URLs
and connections are bench/connections.py."""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.errors import ConfigError

RESULTS = Path("results")
"""Where bench writes by default, relative to the folder it runs in."""
MLFLOW_DB = RESULTS / "mlflow.db"
MLFLOW_ARTIFACTS = RESULTS / "mlartifacts"
OPTUNA_JOURNAL = RESULTS / "optuna" / "journal.log"
STUDY_RUNS = RESULTS / "studies"
"""A trial's folder (checkpoint, samples, losses) is STUDY_RUNS/OPTUNA_STUDY/trial-NNNN."""
TRAIN_RUNS = RESULTS / "train"
"""Where `bench train` writes a run when not told: TRAIN_RUNS/VARIANT-TIMESTAMP."""
FEATURE_CACHE = RESULTS / "cache"
CLASSIFIERS = RESULTS / "classifiers"
"""Domain classifiers trained by `bench features train`; scoring prefers them to the shipped ones."""
DATA_ROOT = RESULTS / "data"


def unwritable_folder(folder: Path) -> Path | None:
    """None when files can be made in ``folder``, or in the nearest folder above it that exists (where
    it would be made); else that folder. Creates nothing that stays."""
    while not folder.exists():
        folder = folder.parent
    try:  # a file made and removed at once: permissions alone do not tell (root, /proc, a read-only mount)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError:
        return folder
    return None


def check_output(output: Path) -> None:
    """ConfigError when ``output`` (a command's -o) cannot be written (a folder, or a place no file can be
    made in); creates nothing."""
    if output.is_dir():
        raise ConfigError(f"cannot write {output} (it is a folder); pass -o a file path")
    folder = unwritable_folder(output.parent)
    if folder is not None:
        raise ConfigError(f"cannot write {output} ({folder} is not a folder you can write to); pass -o a path you "
                          "can write to")
