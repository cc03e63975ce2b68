"""A run's output folder: its config, sample grids, health.json, checkpoint and tables.

The engine's loop decides when; this class does the writing, and is the observer that keeps
health.json up to date as the doctor reports findings.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from bench import checkpoint
from bench.doctor import HEALTH, write_health
from bench.errors import ConfigError, OutputNotWritten
from bench.observer import Finding, Observer


class RunFolder(Observer):
    """Everything a run writes to disk, in one folder."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.findings: list[Finding] = []

    @property
    def checkpoint(self) -> Path:
        return self.path / checkpoint.FILENAME

    def prepare(self, resume: bool) -> Path | None:
        """Checks the folder can hold this run, and returns the checkpoint to resume from (None:
        start at step 0). The folder is made, and config.json written, only by :meth:`open`."""
        try:
            if self.path.exists() and not self.path.is_dir():
                raise ConfigError(f"the output folder {self.path} is a file; choose a folder path for --out")
        except OSError as exc:  # a name too long, a path through a file
            shown = str(self.path) if len(str(self.path)) <= 80 else f"{str(self.path)[:80]}..."
            raise ConfigError(f"cannot use {shown} as the output folder ({exc.strerror}); "
                              "choose a shorter folder path for --out") from None
        if self.checkpoint.is_symlink() and not self.checkpoint.exists():
            raise ConfigError(f"{self.checkpoint} is a link that leads nowhere (or loops); remove it, or point it at "
                              "the checkpoint to resume from")
        if self.checkpoint.exists() and not resume:
            raise ConfigError(f"{self.path} already holds a run; pass --resume to continue it, or choose another --out")
        if resume and not self.checkpoint.exists():
            tqdm.write(f"resume: {self.path} holds no {checkpoint.FILENAME} (the run was stopped before its first "
                       "checkpoint, or never started there); starting from step 0")
        return self.checkpoint if resume and self.checkpoint.exists() else None

    def open(self, config: dict[str, Any], findings: list[Finding]) -> None:
        """Makes the folder and writes config.json (the run's TrainConfig) and health.json (the findings so far)."""
        self.findings = list(findings)
        try:
            (self.path / "samples").mkdir(parents=True, exist_ok=True)  # now, not after the first training steps
            (self.path / "config.json").write_text(json.dumps(config, indent=2))
            write_health(self.path / HEALTH, self.findings)
        except OSError as exc:
            raise ConfigError(f"cannot write the output folder {self.path} ({exc.strerror}); choose a folder "
                              "you can write to for --out") from None

    @contextlib.contextmanager
    def _writing(self, what: str):
        """A write refused mid-run (a full disk, a quota) is one line, and costs no training: the
        files written before are intact, the last checkpoint included."""
        try:
            yield
        except OSError as exc:
            raise OutputNotWritten(f"cannot write {what} in {self.path} ({exc.strerror}); what it held before is "
                                   "intact: free space on its disk, then run the same command again (bench train: "
                                   "with --resume) to go on from its last checkpoint") from None

    def on_finding(self, finding: Finding) -> None:
        self.findings.append(finding)
        with self._writing(HEALTH):
            write_health(self.path / HEALTH, self.findings)

    def write_grid(self, images: torch.Tensor, step: int) -> Path:
        """``images`` in [-1, 1] as an 8-wide PNG grid, samples/step_NNNNNNN.png."""
        from torchvision.utils import save_image  # torchvision's import costs seconds: pay it only here

        path = self.path / "samples" / f"step_{step:07d}.png"
        with self._writing(f"samples/{path.name}"):
            path.parent.mkdir(parents=True, exist_ok=True)
            save_image(images.float(), path, nrow=8, normalize=True, value_range=(-1, 1))
        return path

    def write_checkpoint(self, state: checkpoint.State) -> None:
        """The checkpoint, and the loss and score tables beside it for people and pandas."""
        with self._writing(f"the checkpoint of step {state['step']}"):
            checkpoint.save(state, self.checkpoint)
            pd.DataFrame(state["rows"]).to_csv(self.path / "losses.csv", index=False)
            if state["evaluations"]:
                pd.DataFrame(state["evaluations"]).to_csv(self.path / "scores.csv", index=False)
