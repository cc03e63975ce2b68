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
import re
import shutil
import time
from dataclasses import dataclass
from typing import Callable, Sequence
from pathlib import Path

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from bench.config import HEARTBEAT_SECONDS, PROGRESS_SECONDS, TrainConfig
from bench.data import load_dataset
from bench.devices import autocast_dtype, resolve_device, worker_device
from bench.engine import CHECKPOINT, train
from bench.plan import RunPlan
from bench.errors import BenchError, ConfigError, Interrupted, OutputNotWritten, RunStopped
from bench.locations import STUDY_RUNS, DatabaseAway, redact
from bench.observer import Observer
from bench.processes import HOST, die_with_parent, exit_promptly, handling_stop_signals, pid_alive
from bench.progress import StudyProgress
from bench.registry import get_variant, variants as registered_variants
from bench.storage import (MAX_RETRIES, ask_lock, check_storage, default_storage, fail_stale_trials,
                           heartbeat, known_heartbeat_warnings, open_storage)
from bench.study import StudySpec, VariantStudy, load_study
from bench.schema import StudyAttr, Tag, study_tags, trial_tags
from bench.tracking import Tracking, TrackingStore

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
WAIT_SECONDS = 2
MAX_FAILURES_IN_A_ROW = 10
"""A variant is skipped after this many of its trials failed in a row: it or the study's ranges are broken."""


@dataclass(frozen=True)
class Job:
    """What one worker process needs to take part in a study (picklable for spawn)."""

    variants: tuple[str, ...]
    spec: StudySpec
    """The study as the caller gave it (a file's, or one built or changed in Python), not re-read from its file."""
    trials: int | None
    """As asked (None: the study file's); each variant's study resolves it."""
    storage: str
    tracking: TrackingStore
    parent_run_id: str
    device: str
    amp: str
    seed: int
    worker: int
    threads: int
    heartbeat: int
    log: Callable[[str], None] | None = None
    """Where each trial's outcome is said; a module-level function, since workers unpickle it."""

    def say(self, message: str) -> None:
        if self.log is not None:
            self.log(message)


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
    if names is None:
        if spec.variant is None:
            raise ConfigError(f"{spec.path} names no variant: pass --variant (see `bench list`)")
        names = spec.variant  # a study file may name several, comma-separated, or 'all'
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
        raise ConfigError(f"--variant expects distinct variant names separated by commas, or '{ALL}'; "
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
        bench.compare("lucic_wide").summary  # the variants at equal budget
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
    studies = {lane.variant.name: _load(lane, backend) for lane in lanes}
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
    data = load_dataset(spec.dataset, "train")
    if spec.budget.batch_size > len(data):
        raise ConfigError(f"{spec.path}: budget.batch_size {spec.budget.batch_size} is larger than {spec.dataset}'s "
                          f"{len(data)} training images; lower it")
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


def _load(study: VariantStudy, backend: optuna.storages.BaseStorage) -> optuna.Study:
    """The variant's Optuna study; the process that asks it for trials gives it a sampler (_sample_anew)."""
    return optuna.create_study(storage=backend, study_name=study.name, direction=study.spec.direction,
                               pruner=study.spec.make_pruner(), load_if_exists=True)


def _check_definition(spec: StudySpec, backend: optuna.storages.BaseStorage, storage: str) -> None:
    """Refuses a study file that shares its name with a study in the storage defined otherwise (another
    budget, objective, dataset or search space): its trials would be ranked with trials that ran under
    other terms. A study's first command records its definition on each of its Optuna studies."""
    defined = spec.definition()
    for stored in backend.get_all_studies():
        own = stored.study_name.startswith(f"{spec.name}:")
        recorded = stored.user_attrs.get(StudyAttr.DEFINITION) if own else None
        difference = None if recorded is None else _difference(recorded, defined)
        if difference is not None:
            key, there, here = difference
            raise ConfigError(
                f"{spec.path}: the study '{spec.name}' in {redact(storage)} was defined with {key} {there}, and this "
                f"file gives {here}; to start a new study, give the file another name (its name names the study), or "
                f"put {key} back to continue the stored one")


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


def _sample_anew(resolved: VariantStudy, study: optuna.Study, job: Job) -> None:
    """Gives this process a sampler stream that no other process of the study has had. The k-th
    process to ask the study for trials (a worker, a rerun after an interruption, another machine)
    seeds its sampler with seed + 1000 k: a stream re-seeded from --seed alone would propose the
    points already tried, and concurrent ones the same points. A fresh study run once stays
    reproducible from --seed (k = 0)."""
    with ask_lock(job.storage):
        stream = study.user_attrs.get(StudyAttr.SAMPLER_STREAMS, 0)
        study.set_user_attr(StudyAttr.SAMPLER_STREAMS, stream + 1)
    study.sampler = resolved.sampler(job.seed + 1000 * stream)


def _trial_id(study: optuna.Study, storage: optuna.storages.BaseStorage, number: int) -> int:
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)


def _recover(study: optuna.Study, storage: optuna.storages.BaseStorage, tracking: Tracking, job: Job) -> None:
    """Fails the running trials whose worker is gone and closes their MLflow runs. In a database
    storage a worker is gone when its heartbeat stopped, and Optuna queues its trial again; in a
    journal file, when its process on this host no longer exists."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    gone: list[tuple[FrozenTrial, str]] = []
    if isinstance(storage, optuna.storages.RDBStorage):
        fail_stale_trials(study)
        stale = {trial.number for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
        gone = [(trial, "its worker stopped sending heartbeats (killed, crashed or cut off); queued to run again")
                for trial in running if trial.number in stale]
    else:
        for trial in running:
            owner = trial.user_attrs.get("worker", {})
            if owner.get("host") == HOST and not pid_alive(owner.get("pid", 0)):
                reason = f"worker process {owner['pid']} on {HOST} ended during the trial (killed or crashed)"
                trial_id = _trial_id(study, storage, trial.number)
                storage.set_trial_user_attr(trial_id, "fail_reason", reason)
                storage.set_trial_state_values(trial_id, TrialState.FAIL)
                run_again(study, trial.number)
                gone.append((trial, reason + "; queued to run again"))
    for trial, reason in gone:
        job.say(f"trial {trial.number} marked failed: {reason}")
        if "mlflow_run_id" in trial.user_attrs:
            tracking.end_if_running(trial.user_attrs["mlflow_run_id"], "failed", reason)
    tracking.close_orphans()


def run_again(study: optuna.Study, number: int) -> None:
    """Queues failed trial ``number`` again with its hyperparameters, seed and reported scores (at
    most MAX_RETRIES times); the retry resumes from the trial's last checkpoint when it is here."""
    failed = study.get_trials(deepcopy=False)[number]
    with known_heartbeat_warnings():
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES, inherit_intermediate_values=True)
        retry(study, failed)


def trial_folder(study: optuna.Study, number: int) -> Path:
    return STUDY_RUNS / re.sub(r"[^\w.-]+", "_", study.study_name) / f"trial-{number:04d}"


def work(job: Job) -> None:
    """A worker process of its own (--workers > 1): opens the study and takes trials."""
    die_with_parent()
    os.setpgrp()  # Ctrl-C in the terminal reaches `bench run`, which passes it on once (run_workers)
    torch.set_num_threads(job.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = job.spec
    storage = open_storage(job.storage, job.heartbeat)
    lanes = [spec.for_variant(get_variant(name), job.trials) for name in job.variants]
    try:
        take_trials(job, [(lane, _load(lane, storage)) for lane in lanes], storage,
                    Tracking(job.tracking, spec.name))
    except Interrupted as exc:
        job.say(f"worker {job.worker}: {exc}")
        exit_promptly(exc.exit_code)


def take_trials(job: Job, lanes: list[tuple[VariantStudy, optuna.Study]], storage: optuna.storages.BaseStorage,
                tracking: Tracking) -> None:
    """Asks for trials until every variant's study holds its number of complete or pruned ones,
    each time for the variant with the fewest trials finished or running (the first on a tie)."""
    for resolved, study in lanes:
        _sample_anew(resolved, study, job)
    device = worker_device(job.device, job.worker)
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.set_device(device)  # what a variant or library allocates without a device lands here too
    failures = {resolved.variant.name: 0 for resolved, _ in lanes}  # in a row, by variant
    while True:
        with ask_lock(job.storage):
            started: list[Lane] = []
            for index, (resolved, study) in enumerate(lanes):
                _recover(study, storage, tracking, job)
                if study.user_attrs.get(StudyAttr.GAVE_UP):  # skipped by this worker or another
                    continue
                states = [trial.state for trial in study.get_trials(deepcopy=False)]
                finished = sum(state in FINISHED for state in states)
                if finished < resolved.trials:
                    started.append(Lane(finished + states.count(TrialState.RUNNING), index, resolved, study))
            if not started:
                return
            trial = None
            # Among the variants that can start a trial, the one with the fewest started.
            open_lanes = [lane for lane in started if lane.started < lane.resolved.trials]
            if open_lanes:
                lane = min(open_lanes, key=lambda lane: (lane.started, lane.index))
                resolved, study = lane.resolved, lane.study
                with known_heartbeat_warnings():
                    trial = study.ask()  # a trial queued again after its worker died comes first
                trial.set_user_attr("worker", {"host": HOST, "pid": os.getpid()})
        if trial is None:
            # Enough trials are running, but one may still fail or lose its worker: stay until they end.
            time.sleep(WAIT_SECONDS)
            continue
        with heartbeat(storage, _trial_id(study, storage, trial.number)):  # until it is told, not just trained
            state = run_trial(study, trial, resolved, job, device, tracking)
        name = resolved.variant.name
        failures[name] = failures[name] + 1 if state == TrialState.FAIL else 0
        if failures[name] >= MAX_FAILURES_IN_A_ROW:
            reason = (f"{failures[name]} of its trials in a row failed (the last: "
                      f"{study.trials[trial.number].user_attrs.get('fail_reason', 'unknown')[:300]})")
            study.set_user_attr(StudyAttr.GAVE_UP, reason)
            job.say(f"{name} skipped: {reason}; see their reasons in the MLflow UI (tag {Tag.END_REASON}), fix the "
                    "variant or narrow the study's ranges, then run the same command again")


@dataclass(frozen=True)
class Lane:
    """A variant's study as the scheduler sees it: trials started (finished or running), its place in the command."""

    started: int
    index: int
    resolved: VariantStudy
    study: optuna.Study


def skipped_variants(studies: dict[str, optuna.Study]) -> dict[str, str]:
    """The variants of a finished :func:`run_studies` that were skipped for failing, with the reason."""
    return {name: study.user_attrs[StudyAttr.GAVE_UP] for name, study in studies.items()
            if study.user_attrs.get(StudyAttr.GAVE_UP)}


class ReportToPruner(Observer):
    """Reports each evaluation's objective to Optuna and stops the run when the pruner says so."""

    def __init__(self, trial: optuna.Trial, objective: str):
        self.trial = trial
        self.objective = objective

    def on_scores(self, scores: dict[str, float]) -> None:
        if self.objective not in scores:  # measured only on the final generator (budget.final_samples)
            return
        try:
            self.trial.report(scores[self.objective], int(scores["step"]))
            prune = self.trial.should_prune()
        except Interrupted:  # stopped while the storage was away: the trainer checkpoints this step and stops
            return
        if prune:
            raise optuna.TrialPruned(f"pruned at step {int(scores['step'])}")


def run_trial(study: optuna.Study, trial: optuna.Trial, resolved: VariantStudy, job: Job, device: str,
              tracking: Tracking) -> TrialState:
    spec = resolved.spec
    hparams, seed_index = resolved.suggest(trial)
    frozen = next(t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.number == trial.number)
    with known_heartbeat_warnings():
        retried = optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(frozen)  # [original, ..., previous]
    retry_of = retried[0] if retried else None
    # A retry repeats its original, seed included (Optuna copies the original's attributes).
    if retry_of is not None:
        seed = frozen.user_attrs["seed"]
    else:
        seed = job.seed + (trial.number if seed_index is None else seed_index)
    trial.set_user_attr("seed", seed)
    # A grid beside each evaluation (0: at the end only); checkpoints at the end and every few minutes. Resolved
    # once, dataset loaded: the run records what the trainer trains.
    try:
        plan = RunPlan.resolve(TrainConfig(
            resolved.variant.name, spec.dataset, seed=seed, device=device, amp=job.amp, hparams=hparams,
            features=spec.features, sample_every=spec.budget.eval_every, checkpoint_every=0,
            **dataclasses.asdict(spec.budget)))
    except BenchError as exc:  # settings of this trial that no run can train with
        trial.set_user_attr("fail_reason", str(exc))
        study.tell(trial, state=TrialState.FAIL)
        job.say(f"{resolved.variant.name} trial {trial.number} failed: {exc} {trial.params}")
        return TrialState.FAIL
    config = plan.config
    out = trial_folder(study, trial.number)
    shutil.rmtree(out, ignore_errors=True)  # left by a study of the same name whose storage was deleted
    # A retry goes on from where the trial it repeats stopped, when that trial's folder is on this machine. It
    # goes on in a copy: the stopped trial's folder stays as its MLflow run recorded it, and the retry's
    # samples, losses and checkpoints are its own.
    resume = bool(retried) and (trial_folder(study, retried[-1]) / CHECKPOINT).exists()
    if resume:
        shutil.copytree(trial_folder(study, retried[-1]), out)
    run = tracking.start_trial(job.parent_run_id, config, trial_tags(
        config, trial.number, study=spec.name, optuna_study=study.study_name, objective=spec.objective,
        retry_of=retry_of, resumed_from=retried[-1] if resume else None,
        arm=trial.params["arm"] if spec.is_ablation else None))
    trial.set_user_attr("mlflow_run_id", run.run_id)
    try:
        result = train(plan, out, resume=resume, progress=False,
                       observers=[run, ReportToPruner(trial, spec.objective)])
        run.log_outcome(result)
        value = float(result.scores[spec.objective].iloc[-1])
    except optuna.TrialPruned as exc:
        tracking.end(run.run_id, "pruned", str(exc))
        study.tell(trial, state=TrialState.PRUNED)
        job.say(f"{config.variant} trial {trial.number} pruned ({exc}) {trial.params}")
        return TrialState.PRUNED
    except RunStopped as exc:  # a NaN loss, or a failure the doctor stopped the run for
        trial.set_user_attr("fail_reason", str(exc))
        tracking.end(run.run_id, "failed", str(exc))
        study.tell(trial, state=TrialState.FAIL)
        job.say(f"{config.variant} trial {trial.number} failed: {exc} {trial.params}")
        return TrialState.FAIL
    except BaseException as exc:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        tracking.end(run.run_id, "failed", reason)
        queued = "is queued to resume from it"
        try:
            trial.set_user_attr("fail_reason", reason)
            study.tell(trial, state=TrialState.FAIL)
            if isinstance(exc, (Interrupted, OutputNotWritten)):  # its checkpoint is intact: go on from it later
                run_again(study, trial.number)
        except (Interrupted, DatabaseAway):
            if not isinstance(exc, Interrupted):
                raise
            # Stopped while the storage is away: the trial stays running there until its heartbeat is
            # stale, when the next command fails it and queues it again.
            queued = "resumes from it once the storage answers"
        if isinstance(exc, Interrupted):
            exc.then = f"trial {trial.number} {queued}: run the same command again to continue"
        raise
    try:
        study.tell(trial, value)  # before its run is marked complete: ranked in MLflow only once Optuna has it
    except (Interrupted, DatabaseAway) as exc:
        # Trained and scored, but the storage is away: the trial stays running there until its heartbeat is
        # stale, when the next command fails it and runs it again from its final checkpoint.
        tracking.end(run.run_id, "failed", f"its score did not reach the Optuna storage ({exc})")
        if isinstance(exc, Interrupted):
            exc.then = (f"trial {trial.number} finished training but the storage did not record it; it is scored "
                        "again from its final checkpoint: run the same command again to continue")
        raise
    tracking.end(run.run_id, "complete")
    job.say(f"{config.variant} trial {trial.number} complete: {spec.objective} {value:.4g} {trial.params}")
    return TrialState.COMPLETE
