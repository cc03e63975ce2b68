"""`run_studies`: Optuna sweeps over one or several variants, every trial trained by the engine and
tracked in MLflow.

One Optuna study per study file x variant x dataset, shared by any number of worker processes
through its storage (bench/storage.py: a journal file by default, PostgreSQL across machines).
Trials are asked for under a lock, so the workers together run exactly the requested number. A
worker that dies leaves a RUNNING trial that the other workers fail (PostgreSQL: when its
heartbeat stops, and Optuna queues it again; journal: when its process on this host is gone,
or at the next `bench run`), and the study goes on until the requested number of complete or
pruned trials exists. Several variants in one `bench run` advance together: each new trial goes to
the variant with the fewest trials started, so their counts never differ by more than one and an
interrupted comparison is still a fair one.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
from typing import Callable, Sequence
from pathlib import Path

import optuna
import torch

from bench.config import HEARTBEAT_SECONDS, PROGRESS_SECONDS
from bench.data import batch_fix, check_scoring_split, load_dataset
from bench.devices import autocast_dtype, resolve_device
from bench.errors import BenchError, ConfigError, Interrupted, SubsetTooLarge
from bench.connections import redact
from bench.processes import handling_stop_signals
from bench.progress import StudyProgress
from bench.registry import get_variant, variants as registered_variants
from bench.schema import StudyAttr, study_tags
from bench.storage import check_storage, default_storage, open_storage
from bench.study import STUDY_BUDGET, StudySpec, VariantStudy, load_study
from bench.tracking import Tracking, TrackingStore
from bench.trials import Job, open_variant_study, take_trials, work


def max_workers() -> int:
    return 2 * (os.cpu_count() or 1)


ALL = "all"
"""``variants`` for every registered variant that the study's space fits."""


def run_study(variant: str | None, study: str | Path | StudySpec, *, trials: int | None = None, workers: int = 1,
              storage: str | None = None, tracking: TrackingStore | str | None = None, device: str = "auto",
              amp: str = "auto", seed: int = 0, heartbeat: int = HEARTBEAT_SECONDS,
              log: Callable[[str], None] | None = None) -> optuna.Study:
    """One variant's sweep (None: the one the study file names), returning its Optuna study; the
    options are :func:`run_studies`'s.

    Example::

        study = run_study("dcgan", "lr_sweep", trials=8, workers=2)
        study.best_params
    """
    studies = run_studies(None if variant is None else [variant], study, trials=trials, workers=workers,
                          storage=storage, tracking=tracking, device=device, amp=amp, seed=seed, heartbeat=heartbeat,
                          log=log)
    return next(iter(studies.values()))


def choose_variants(names: Sequence[str] | str | None, spec: StudySpec,
                    trials: int | None) -> tuple[list[VariantStudy], dict[str, str]]:
    """The variants' resolved studies, and the variants skipped with the reason. ``names``: a list,
    ALL (every registered variant; those the study's space does not fit are skipped), or None
    (the one the study file names)."""
    where = "--variant"
    if names is None:
        if spec.variant is None:
            raise ConfigError(f"{spec.path} names no variant: pass --variant (see `bench list`)")
        names, where = spec.variant, f"{spec.path}: variant"  # a study file may name several, comma-separated, or 'all'
    if isinstance(names, str):
        names = names if names == ALL else [name.strip() for name in names.split(",")]
    if names == ALL:
        chosen, skipped = [], {}
        for name, cls in registered_variants().items():
            try:
                chosen.append(spec.for_variant(cls, trials))
            except ConfigError as exc:
                skipped[name] = str(exc)
        return chosen, skipped
    if not all(names) or len(set(names)) != len(names):
        raise ConfigError(f"{where} expects distinct variant names separated by commas, or '{ALL}'; "
                          f"got '{','.join(names)}'")
    return [spec.for_variant(get_variant(name), trials) for name in names], {}  # a bad space fails now


def run_studies(variants: Sequence[str] | str | None, study: str | Path | StudySpec, *, trials: int | None = None,
                workers: int = 1, storage: str | None = None, tracking: TrackingStore | str | None = None,
                device: str = "auto", amp: str = "auto", seed: int = 0, progress: bool = False,
                progress_every: float = PROGRESS_SECONDS, heartbeat: int = HEARTBEAT_SECONDS,
                log: Callable[[str], None] | None = None) -> dict[str, optuna.Study]:
    """Runs the study file ``study`` for each of ``variants`` (a list, ``"all"``, or None: the one
    the file names) until each has ``trials`` complete or pruned trials (the file's count by
    default), and returns their Optuna studies by variant. The variants advance together.
    ``storage``: a journal file, or a PostgreSQL URL that workers on other machines share; there a
    trial silent for three ``heartbeat`` periods is failed and run again by another worker. ``tracking``: the MLflow
    store or its URI (see :meth:`bench.tracking.TrackingStore.open`). Quiet unless given
    ``log`` (e.g. print), which hears each trial's outcome and, every ``progress_every`` seconds,
    a line on the whole study; ``progress`` shows that line live in a terminal instead.
    ``amp``: the training precision, 'auto', 'on' or 'off' (see :func:`bench.devices.autocast_dtype`).

    Example::

        studies = run_studies(["dcgan", "wgan_gp"], "lucic_wide", trials=10)
        {name: study.best_value for name, study in studies.items()}
        bench.compare_study("lucic_wide").summary  # the variants at equal budget
    """
    spec = study if isinstance(study, StudySpec) else load_study(study)
    if not 1 <= workers <= max_workers():
        raise ConfigError(f"--workers must be at least 1 and at most {max_workers()}, twice this machine's CPU cores, "
                          f"got {workers}: each worker is a process with its own torch and dataset, and more of them "
                          "than that only take turns on the cores; on several machines, share a --storage instead")
    if heartbeat < 1:
        raise ConfigError("--heartbeat must be at least 1")
    if not progress_every > 0:
        raise ConfigError(f"--progress-every must be positive (seconds), got {progress_every}")
    lanes = _checked_lanes(variants, spec, trials, device, amp, log or (lambda message: None))
    names = [lane.variant.name for lane in lanes]
    storage = storage or default_storage()
    check_storage(storage)
    store = TrackingStore.open(tracking, create=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    backend = open_storage(storage, heartbeat)
    _check_definition(spec, backend, storage)
    studies = {lane.variant.name: open_variant_study(lane, backend) for lane in lanes}
    for study in studies.values():
        study.set_user_attr(StudyAttr.DEFINITION, spec.definition())
        if study.user_attrs.get(StudyAttr.GAVE_UP):  # a new command tries the variant again
            study.set_user_attr(StudyAttr.GAVE_UP, None)
    tracking = Tracking(store, spec.name)

    parent = tracking.start_parent(
        study_tags(spec.name, names, spec.dataset, spec.features, [study.study_name for study in studies.values()]),
        {"study_file": spec.path, "objective": spec.objective, "direction": spec.direction,
         "trials": lanes[0].trials, "workers": workers, "sampler": spec.sampler, "pruner": spec.pruner,
         "storage": redact(storage), "seed": seed, "amp": amp, **dataclasses.asdict(spec.budget)})
    threads = max(1, torch.get_num_threads() // workers)
    jobs = [Job(tuple(names), spec, trials, storage, store, parent, device, amp, seed,
                worker, threads, heartbeat=heartbeat, log=log) for worker in range(workers)]
    watcher = StudyProgress(open_storage(storage, heartbeat), [(lane, studies[lane.variant.name]) for lane in lanes],
                            live=progress, every=progress_every, log=log)
    try:
        with watcher:
            if workers == 1:
                take_trials(jobs[0], list(zip(lanes, studies.values())), backend, tracking)
            else:
                run_workers(jobs)
    except BaseException:
        tracking.end(parent, "killed")
        raise
    tracking.end(parent, "complete")
    return studies


def _checked_lanes(variants: Sequence[str] | str | None, spec: StudySpec, trials: int | None, device: str, amp: str,
                   say: Callable[[str], None]) -> list[VariantStudy]:
    """The variants' resolved studies, after every check that needs no store, so that a bad space, a
    device or precision this machine lacks, or a missing dataset fails before a study, a run or a
    file exists."""
    lanes, skipped = choose_variants(variants, spec, trials)
    for name, reason in skipped.items():
        say(f"{name} skipped: {reason}")
    if not lanes:
        raise ConfigError(f"the study {spec.name} fits none of the variants; see the reasons above")
    for lane in lanes:
        for arm, reason in lane.skipped_arms.items():
            say(f"{lane.variant.name}: arm '{arm}' skipped: {reason}")
    autocast_dtype(resolve_device(device), amp)
    try:
        data = load_dataset(spec.dataset, "train")
    except SubsetTooLarge as exc:  # the file's `subset`
        raise SubsetTooLarge(f"{spec.path}: {exc}") from None
    if spec.budget.batch_size > len(data):
        raise ConfigError(f"{spec.path}: budget.batch_size {spec.budget.batch_size} is larger than {spec.dataset}'s "
                          f"{len(data)} training images; {batch_fix(len(data), 'it')}")
    check_scoring_split(load_dataset(spec.dataset, "test"))  # every trial scores against it
    return lanes


def run_workers(jobs: list[Job]) -> None:
    """Runs one worker process per job until the study is done. SIGINT and SIGTERM reach the
    workers once each, through this process (they run in process groups of their own, out of
    the terminal's reach), so that each checkpoints its trial before it stops."""
    context = multiprocessing.get_context("spawn")  # not fork: CUDA cannot be re-initialised in a forked child
    processes = [context.Process(target=work, args=(job,), name=f"bench-worker-{job.worker}") for job in jobs]
    received: list[int] = []

    def forward(signum: int, frame) -> None:
        received.append(signum)
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    with handling_stop_signals(forward):
        for process in processes:
            process.start()
        for process in processes:
            process.join()
    if received:
        raise Interrupted(received[0], "after the workers checkpointed their trials and queued them to resume")
    failed = [p.name for p in processes if p.exitcode != 0]
    if failed:
        raise BenchError(f"worker(s) {', '.join(failed)} stopped with an error (see above); "
                         "rerun the same command to finish the study")


def _check_definition(spec: StudySpec, backend: optuna.storages.BaseStorage, storage: str) -> None:
    """Refuses a study file that shares its name with a study in the storage defined otherwise (another
    budget, objective, dataset or search space): its trials would be ranked with trials that ran under
    other terms. A study's first command records its definition on each of its Optuna studies."""
    defined = spec.definition()
    for stored in backend.get_all_studies():
        own = stored.study_name.startswith(f"{spec.name}:")
        recorded = stored.user_attrs.get(StudyAttr.DEFINITION) if own else None
        difference = None if recorded is None else _difference(_with_budget_defaults(recorded), defined)
        if difference is not None:
            key, there, here = difference
            raise ConfigError(
                f"{spec.path}: the study '{spec.name}' in {redact(storage)} was defined with {key} {there}, and this "
                f"file gives {here}; to start a new study, give the file another name (its name names the study), or "
                f"put {key} back to continue the stored one")


def _with_budget_defaults(recorded: object) -> object:
    """A definition as a study's first command recorded it, with the budget keys that ganbench had not yet
    at the time (real_samples, ...) at their defaults: what its trials ran with."""
    if isinstance(recorded, dict) and isinstance(recorded.get("budget"), dict):
        return {**recorded, "budget": {**dataclasses.asdict(STUDY_BUDGET), **recorded["budget"]}}
    return recorded


def _difference(recorded: object, defined: object, key: str = "") -> tuple[str, str, str] | None:
    """The first field where two definitions differ, as (dotted key, recorded value, defined value)."""
    if isinstance(recorded, dict) and isinstance(defined, dict):
        for name in sorted(set(recorded) | set(defined)):
            found = _difference(recorded.get(name), defined.get(name), f"{key}.{name}" if key else name)
            if found:
                return found
        return None
    if recorded == defined:
        return None
    return key, json.dumps(recorded, sort_keys=True)[:200], json.dumps(defined, sort_keys=True)[:200]
