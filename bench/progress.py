"""The study line: how a running `bench run` is doing, read from Optuna's storage, so that it is
the same whatever the number of workers and wherever they run."""

from __future__ import annotations

import threading
import time
from typing import Callable

import optuna
from optuna.trial import TrialState
from tqdm.auto import tqdm

from bench.errors import Interrupted
from bench.storage import retry_history
from bench.study import VariantStudy

LIVE_SECONDS = 2.0
"""Between two redraws of the live line in a terminal."""


def duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


class StudyProgress:
    """A line on the whole study, per variant: trials complete, pruned and failed of N, the best
    objective so far, each running trial's last evaluation, and the time left at the pace since
    the start. Live in a terminal (``live``), else said through ``log`` every ``every`` seconds
    and once at the end. A context manager: it watches from a thread while the study runs."""

    def __init__(self, storage: optuna.storages.BaseStorage, lanes: list[tuple[VariantStudy, optuna.Study]], *,
                 live: bool, every: float, log: Callable[[str], None] | None):
        self.storage = storage
        self.lanes = [(resolved, study.study_name) for resolved, study in lanes]
        self.live = live
        self.every = LIVE_SECONDS if live else every
        self.log = log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="bench-progress", daemon=True)
        self._started = time.monotonic()
        self._finished_at_start = 0
        self._bar: tqdm | None = None

    def __enter__(self) -> StudyProgress:
        if self.live or self.log is not None:
            self._finished_at_start = self.tally()[2]
            if self.live:
                self._bar = tqdm(bar_format="{desc}", dynamic_ncols=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
            self._show()
        if self._bar is not None:
            self._bar.close()

    def _watch(self) -> None:
        while not self._stop.wait(self.every):
            self._show()

    def _show(self) -> None:
        try:
            text = self.line()
        except Interrupted:  # stopped while the storage is away: the command's own message says so
            return
        except Exception as exc:  # a storage hiccup must not end the study; the next line may work
            text = f"progress unavailable ({type(exc).__name__}: {exc})"
        if self._bar is not None:
            self._bar.set_description_str(text)
        elif self.log is not None:
            self.log(text)

    def tally(self) -> tuple[list[str], list[str], int, int]:
        """(a phrase per variant, a phrase per running trial, trials finished, trials wanted)."""
        parts, running, finished_total, trials_total = [], [], 0, 0
        for resolved, name in self.lanes:
            trials = self.storage.get_all_trials(self.storage.get_study_id_from_name(name), deepcopy=False)
            counts = {state: sum(trial.state == state for trial in trials) for state in TrialState}
            finished = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
            # A trial stopped (a signal, a dead worker) is failed in Optuna and queued again as a new trial
            # whose retry history names it: it is counted as retried, not as a failure of the variant.
            queued = {number for trial in trials for number in retry_history(trial)}
            retried = sum(trial.state == TrialState.FAIL and trial.number in queued for trial in trials)
            values = [trial.value for trial in trials if trial.state == TrialState.COMPLETE]
            pick = min if resolved.spec.direction == "minimize" else max
            best = f"best {pick(values):.4g}" if values else "no trial complete yet"
            parts.append(f"{resolved.variant.name} {finished}/{resolved.trials} done ({counts[TrialState.PRUNED]} "
                         f"pruned, {counts[TrialState.FAIL] - retried} failed"
                         + (f", {retried} stopped and retried" if retried else "") + f"), {best}")
            for trial in trials:
                if trial.state == TrialState.RUNNING:
                    last = (f"step {max(trial.intermediate_values)} {resolved.spec.objective} "
                            f"{trial.intermediate_values[max(trial.intermediate_values)]:.4g}"
                            if trial.intermediate_values else
                            f"{resolved.spec.objective} at its end" if resolved.spec.budget.final_samples
                            else "not scored yet")
                    running.append(f"{resolved.variant.name} #{trial.number} {last}")
            finished_total += min(finished, resolved.trials)
            trials_total += resolved.trials
        return parts, running, finished_total, trials_total

    def line(self) -> str:
        parts, running, finished_total, trials_total = self.tally()
        elapsed = time.monotonic() - self._started
        done_here = finished_total - self._finished_at_start
        left = (f"about {duration(elapsed / done_here * (trials_total - finished_total))} left" if done_here
                else "time left unknown until a trial ends")
        head = f"{self.lanes[0][0].spec.name}, {duration(elapsed)}: {finished_total}/{trials_total} trials done"
        return " | ".join([head, *parts, "running: " + (", ".join(running) or "none"), left])
