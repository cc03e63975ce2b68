"""What ganbench records about its runs: every MLflow tag name, with its type, the study attributes
it keeps in Optuna, the tags a trial and a study run start with, and the reading of trial runs back
into a table that checks each one.

:mod:`bench.tracking` is the only writer; the leaderboard, the comparison, the report and perf read
through :func:`trial_frame` and :func:`tag_column`. A tag is renamed here, for writer and readers
together (tests/test_schema.py keeps ``"bench.…"`` names out of every other module).
"""

from __future__ import annotations

import enum
import functools
import math
import os
import platform
import subprocess
import sys
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pandas as pd

from bench.config import BUDGET_KEYS, TrainConfig
from bench.processes import HOST
from bench.readers import kernel_text


class Tag(enum.StrEnum):
    """An MLflow tag ganbench sets (MLflow keeps every tag as text; :data:`WHOLE_NUMBER_TAGS` hold integers)."""

    KIND = "bench.kind"
    """'study' on the parent run of a `bench run`, 'trial' on each trial's run."""
    STUDY = "bench.study"
    """The study's name; also on the MLflow experiment, which marks it as ganbench's."""
    VARIANT = "bench.variant"
    """The trial's variant; on a parent run, the command's variants joined by commas."""
    DATASET = "bench.dataset"
    EXTRACTOR = "bench.extractor"
    """The feature extractor the scores are measured with."""
    OPTUNA_STUDY = "bench.optuna_study"
    """The Optuna study (one per variant) the trial belongs to."""
    OBJECTIVE = "bench.objective"
    """The score the study optimises: the name of a metric the trial logs."""
    TRIAL = "bench.trial"
    """The Optuna trial number."""
    SEED = "bench.seed"
    STATE = "bench.state"
    """One of :data:`TRIAL_STATES`."""
    END_REASON = "bench.end_reason"
    """Why a trial failed or was pruned, in words."""
    RETRY_OF = "bench.retry_of"
    """The number of the trial this one repeats (the first, when that was a retry too), after its
    worker died or a stop signal ended it."""
    RESUMED_FROM = "bench.resumed_from"
    """'trial N': the trial whose checkpoint this one went on from."""
    ARM = "bench.arm"
    """An ablation study's arm."""
    DEVICE = "bench.device"
    PRECISION = "bench.precision"
    GIT_COMMIT = "bench.git_commit"
    """The commit ganbench ran from, '-dirty' with uncommitted changes."""
    HOST = "bench.host"
    MACHINE = "bench.machine"
    """The CPU's model and the cores the process may use ('AMD EPYC, 2 cores'): the machine a figure came from."""
    PID = "bench.pid"
    """The process that owns the run: a later command closes the runs of a process that is gone."""
    PYTHON = "bench.python"
    EXTERNAL = "bench.external"
    """On an entry scored from a folder of images a generator made elsewhere (`bench eval --images --name`):
    the provenance its user gave. Ranked beside the trials, never inside a best-of-k."""


VERSION_PREFIX = "bench.version."
"""Followed by a package name: the version of each of :data:`PACKAGES` the run used."""
HEALTH_PREFIX = "health."
"""Followed by a doctor check's name: a tag (what it found, at which step) and a metric (1.0 at that step)."""
PACKAGES = ("ganbench", "torch", "torchvision", "optuna", "mlflow", "torchmetrics")
WHOLE_NUMBER_TAGS = (Tag.TRIAL, Tag.SEED, Tag.PID)
TRIAL_TAGS = (Tag.TRIAL, Tag.VARIANT, Tag.STATE, Tag.STUDY, Tag.DATASET)
"""What every trial run carries from its start: a run without one of them is damaged."""
RUN_PARAMS = (*BUDGET_KEYS, "dataset", "features", "seed")
"""The params a trial run records besides its hyperparameters."""
STUDY_PARAMS = ("study_file", "objective", "sampler", "pruner", "steps", "batch_size", "eval_every",
                "eval_samples", "real_samples", "amp", "workers")
"""The params of a study's parent run that the report shows."""

TRIAL, STUDY = "trial", "study"
"""The values of :attr:`Tag.KIND`."""
RUNNING = "running"
"""The state of a trial run that has not ended: shown, counted, never ranked."""
RETRIED = "retried"
"""The end state of a trial's attempt that stopped before its end (a stop signal, its worker gone)
and was queued again, to go on from its checkpoint: counted apart from the failed, never ranked."""
END_STATUS = {"complete": "FINISHED", "pruned": "FINISHED", "failed": "FAILED", RETRIED: "KILLED", "killed": "KILLED"}
"""A trial's end state, and the MLflow status its run ends with."""
TRIAL_STATES = (RUNNING, *END_STATUS)
COUNTED_STATES = ("complete", "pruned", "failed", RUNNING, RETRIED)
"""The states the leaderboard and the comparison count trials in, in their columns' order."""
LIVE_STATUS = ("RUNNING", "SCHEDULED")
"""MLflow's statuses of a run that has not ended."""


class StudyAttr(enum.StrEnum):
    """What ganbench keeps in an Optuna study's user attributes."""

    DEFINITION = "bench.definition"
    """The study file's settings that define its trials: a rerun under the same name must match them."""
    SAMPLER_STREAMS = "bench.sampler_streams"
    """How many commands have sampled this study: each draws from a stream of its own."""
    GAVE_UP = "bench.gave_up"
    """Why the variant was skipped (its trials kept failing); cleared when a new command starts."""


class TrialAttr(enum.StrEnum):
    """What ganbench keeps in an Optuna trial's user attributes (a retry inherits them all)."""

    SEED = "seed"
    WORKER = "worker"
    """The process that runs the trial: {"host": ..., "pid": ...}."""
    MLFLOW_RUN_ID = "mlflow_run_id"
    FAIL_REASON = "fail_reason"
    QUEUE_AGAIN = "queue_again"
    """True on a trial that stopped with its checkpoint intact, to run again from there: the command that
    stopped it queues it, and where the storage went away before that, the next one does. Reset when a
    worker takes the trial (a retry inherits its original's attributes)."""


def tag_column(tag: str) -> str:
    """The column of ``tag`` in a table of runs (:func:`trial_frame`, MLflow's search_runs)."""
    return f"tags.{tag}"


@functools.cache
def git_commit() -> str:
    """The commit ganbench runs from, with '-dirty' for uncommitted changes; 'unknown' outside git."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def machine() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux, else what the platform reports) and the cores this
    process may use."""
    cpuinfo = (kernel_text("/proc/cpuinfo") or "").splitlines()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model or platform.processor() or platform.machine() or 'unknown CPU'}, {cores} cores"


def environment_tags() -> dict[str, str]:
    """Where a run ran: commit, host, process, Python and package versions."""
    return {**_installation(), Tag.PID: str(os.getpid())}


@functools.cache
def _installation() -> dict[str, str]:
    """What this process runs (read once: git and the package metadata cost tens of milliseconds per call)."""
    tags = {Tag.GIT_COMMIT: git_commit(), Tag.HOST: HOST, Tag.MACHINE: machine(), Tag.PYTHON: platform.python_version()}
    for package in PACKAGES:
        try:
            tags[VERSION_PREFIX + package] = version(package)
        except PackageNotFoundError:
            pass
    return tags


def study_tags(study: str, variants: list[str], dataset: str, extractor: str, optuna_studies: list[str]) -> dict:
    """The tags of a `bench run`'s parent run."""
    return {**environment_tags(), Tag.KIND: STUDY, Tag.STUDY: study, Tag.VARIANT: ",".join(variants),
            Tag.DATASET: dataset, Tag.EXTRACTOR: extractor, Tag.OPTUNA_STUDY: ",".join(optuna_studies)}


def trial_tags(config: TrainConfig, trial: int, *, study: str, optuna_study: str | None = None,
               objective: str | None = None, retry_of: int | None = None, resumed_from: int | None = None,
               arm: str | None = None) -> dict:
    """The tags a trial's run starts with (state 'running'); ``resumed_from``: the trial whose
    checkpoint it goes on from."""
    optional = {Tag.OPTUNA_STUDY: optuna_study, Tag.OBJECTIVE: objective, Tag.RETRY_OF: retry_of,
                Tag.RESUMED_FROM: None if resumed_from is None else f"trial {resumed_from}", Tag.ARM: arm}
    return {**environment_tags(), Tag.KIND: TRIAL, Tag.TRIAL: str(trial), Tag.VARIANT: config.variant,
            Tag.DATASET: config.dataset, Tag.EXTRACTOR: config.features, Tag.SEED: str(config.seed),
            Tag.STATE: RUNNING, Tag.STUDY: study, **{tag: str(value) for tag, value in optional.items()
                                                      if value is not None}}


def external_tags(name: str, entry: int, *, study: str, dataset: str, extractor: str, objective: str,
                  provenance: str) -> dict:
    """The tags of an external entry: a complete 'trial' of the variant ``name`` (its ``entry``-th), with
    :attr:`Tag.EXTERNAL` holding where its images came from."""
    return {**environment_tags(), Tag.KIND: TRIAL, Tag.TRIAL: str(entry), Tag.VARIANT: name, Tag.DATASET: dataset,
            Tag.EXTRACTOR: extractor, Tag.SEED: "0", Tag.STATE: "complete", Tag.STUDY: study, Tag.OBJECTIVE: objective,
            Tag.EXTERNAL: provenance or "external"}


def end_tags(state: str, reason: str = "") -> dict:
    """The tags set when a trial's run ends in ``state`` (one of :data:`END_STATUS`)."""
    return {Tag.STATE: state} | ({Tag.END_REASON: reason[:5000]} if reason else {})


class DamagedRun(UserWarning):
    """A trial run, or its artifact, that readers skip because it holds what no trial writes: a tag
    missing or malformed, an objective that is not a score or not finite, an artifact that is not
    an image ganbench shows. The store keeps it as it is."""


def trial_frame(runs) -> pd.DataFrame:
    """MLflow trial runs (``mlflow.entities.Run``) as a table, one row each, in the columns of
    MLflow's search_runs table: run_id, status, start_time, end_time, metrics.*, params.*, tags.*
    (see :func:`tag_column`). Each run is checked before use: a run that has not ended (MLflow status
    RUNNING, no end time, or state 'running') is in state 'running' with no end time; a damaged run
    (see :func:`run_problem`) is left out with one :class:`DamagedRun` warning that names it and
    what is wrong."""
    rows = []
    for run in runs:
        problem = run_problem(run)
        if problem is not None:
            warnings.warn(f"skipped MLflow run {run.info.run_id}: {problem}", DamagedRun, stacklevel=3)
            continue
        tags = run.data.tags
        live = run.info.status in LIVE_STATUS or run.info.end_time is None or tags[Tag.STATE] == RUNNING
        metrics = dict(run.data.metrics)
        objective = tags.get(Tag.OBJECTIVE)
        if objective in metrics and not finite(metrics[objective]):  # a trial that did not complete
            metrics[objective] = math.nan
        rows.append({
            "run_id": run.info.run_id, "status": run.info.status, "start_time": run.info.start_time,
            "end_time": math.nan if live else run.info.end_time,
            **{f"metrics.{key}": value for key, value in metrics.items()},
            **{f"params.{key}": value for key, value in run.data.params.items()},
            **{tag_column(key): value for key, value in tags.items()},
            tag_column(Tag.STATE): RUNNING if live else tags[Tag.STATE]})
    frame = pd.DataFrame(rows, columns=None if rows else ["run_id", "status", "start_time", "end_time"])
    for name in ("start_time", "end_time"):  # one UTC type, a running run's end NaT
        frame[name] = pd.to_datetime(pd.to_numeric(frame[name]), unit="ms", utc=True)
    return frame


def state_counts(states: pd.Series) -> dict[str, int]:
    """How many runs are in each of :data:`COUNTED_STATES`, from a column of their states."""
    counts = states.value_counts()
    return {state: int(counts.get(state, 0)) for state in COUNTED_STATES}


def run_problem(run) -> str | None:
    """What makes a trial run unusable (None when nothing does): one of TRIAL_TAGS missing or empty,
    a trial number or seed that is not a whole number, a state no trial is in, an objective tag
    that is not a score, a complete trial whose objective is not finite, an end before the start."""
    from bench.scores import is_score

    tags = run.data.tags
    for tag in TRIAL_TAGS:
        if not tags.get(tag):
            return f"it has no {tag} tag"
    for name, value in ((f"its {Tag.TRIAL} tag", tags[Tag.TRIAL]), (f"its {Tag.SEED} tag", tags.get(Tag.SEED)),
                        ("its seed param", run.data.params.get("seed"))):
        if value is not None and not whole_number(value):
            return f"{name} {shown(value)} is not a whole number"
    if tags[Tag.STATE] not in TRIAL_STATES:
        return f"its {Tag.STATE} tag {shown(tags[Tag.STATE])} is none of {', '.join(TRIAL_STATES)}"
    objective = tags.get(Tag.OBJECTIVE)
    if objective is not None and not is_score(objective):
        return f"its {Tag.OBJECTIVE} tag {shown(objective)} is not a score ganbench knows"
    value = run.data.metrics.get(objective)
    ended = run.info.end_time is not None and run.info.status not in LIVE_STATUS
    if ended and tags[Tag.STATE] == "complete" and value is not None and not finite(value):
        shown_value = "nan" if math.isnan(value) else "inf" if value > 0 else "-inf"
        return f"it is complete with {objective} = {shown_value}, not a finite score"
    if ended and run.info.end_time < run.info.start_time:
        return "it ends before it starts"
    return None


def finite(value: float) -> bool:
    """A finite metric value: MLflow's SQL stores keep an infinity as the largest float."""
    return math.isfinite(value) and abs(value) < sys.float_info.max


def whole_number(text: str) -> bool:
    """A decimal integer that fits 64 bits (MLflow keeps tags and params as text)."""
    stripped = text.strip().removeprefix("-")
    return stripped.isascii() and stripped.isdigit() and len(stripped) < 20 and int(stripped) < 2 ** 63


def shown(value: str) -> str:
    """An untrusted tag value in a one-line message: quoted, escaped, at most 60 characters."""
    return repr(value if len(value) <= 60 else value[:57] + "...")
