"""`run_study`: an Optuna sweep over one variant, every trial trained by the engine and tracked in MLflow.

One Optuna study per study file x variant x dataset, shared by any number of worker processes
through its storage (bench/storage.py: a journal file by default, PostgreSQL across machines).
Trials are asked for under a lock, so the workers together run exactly the requested number. A
worker that dies leaves a RUNNING trial that the other workers fail (PostgreSQL: when its
heartbeat stops, and Optuna queues it again; journal: when its process on this host is gone,
or at the next `bench run`), and the study goes on until the requested number of complete or
pruned trials exists.
"""

from __future__ import annotations

import ctypes
import dataclasses
import multiprocessing
import os
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from typing import Callable
from pathlib import Path

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from bench.data import load_dataset
from bench.engine import CHECKPOINT, TrainConfig, train
from bench.errors import BenchError, ConfigError, Interrupted, RunStopped
from bench.observer import Observer
from bench.registry import get_variant
from bench.storage import (HEARTBEAT_SECONDS, MAX_RETRIES, ask_lock, check_storage, default_storage, fail_stale_trials,
                           heartbeat, known_heartbeat_warnings, open_storage)
from bench.study import StudySpec, VariantStudy, load_study
from bench.tracking import HOST, RESULTS, Tracking, connect, pid_alive, redact

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>
WAIT_SECONDS = 2
MAX_FAILURES_IN_A_ROW = 10
"""A worker gives up after this many failed trials in a row: the variant or the ranges are broken."""


@dataclass(frozen=True)
class Job:
    """What one worker process needs to take part in a study (picklable for spawn)."""

    variant: str
    study_path: str
    trials: int
    storage: str
    tracking_uri: str
    parent_run_id: str
    device: str
    amp: bool
    seed: int
    worker: int
    threads: int
    progress: bool
    heartbeat: int
    log: Callable[[str], None] | None = None
    """Where each trial's outcome is said; a module-level function, since workers unpickle it."""

    def say(self, message: str) -> None:
        if self.log is not None:
            self.log(message)


def run_study(variant: str | None, study: str | Path | StudySpec, *, trials: int | None = None, workers: int = 1,
              storage: str | None = None, tracking_uri: str | None = None, device: str = "auto",
              amp: bool = True, seed: int = 0, progress: bool = False, heartbeat: int = HEARTBEAT_SECONDS,
              log: Callable[[str], None] | None = None) -> optuna.Study:
    """Runs the study file ``study`` for ``variant`` (None: the one the file names) until
    ``trials`` trials are complete or pruned (the file's count by default), and returns the
    Optuna study. ``storage``: a journal
    file, or a PostgreSQL URL that workers on other machines share; there a trial silent for
    three ``heartbeat`` periods is failed and run again by another worker. Quiet unless given
    ``log`` (e.g. print), which hears each trial's outcome, or ``progress`` (a bar per trial).
    ``amp=False`` trains every trial in float32 (see :func:`bench.engine.autocast_dtype`).

    Example::

        study = run_study("dcgan", "lr_sweep", trials=8, workers=2)
        study.best_params
    """
    spec = study if isinstance(study, StudySpec) else load_study(study)
    variant = variant or spec.variant
    if variant is None:
        raise ConfigError(f"{spec.path} names no variant: pass --variant (see `bench list`)")
    resolved = spec.for_variant(get_variant(variant), trials)  # a bad space fails before any storage is touched
    for arm, reason in resolved.skipped_arms.items():
        if log is not None:
            log(f"arm '{arm}' skipped: {reason}")
    if workers < 1 or heartbeat < 1:
        raise ConfigError("--workers and --heartbeat must be at least 1")
    # A missing dataset or a dead server fails here, before a study, a run or a file exists.
    load_dataset(spec.dataset, "train")
    storage = storage or default_storage()
    check_storage(storage)
    connect(tracking_uri, create=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    backend = open_storage(storage, heartbeat)
    optuna_study = _load(resolved, backend, seed)
    tracking = Tracking(tracking_uri, spec.name)

    parent = tracking.start_parent(
        {"bench.study": spec.name, "bench.variant": variant, "bench.dataset": spec.dataset,
         "bench.extractor": spec.features, "bench.optuna_study": optuna_study.study_name},
        {"study_file": spec.path, "objective": spec.objective, "direction": spec.direction,
         "trials": resolved.trials, "workers": workers, "sampler": spec.sampler, "pruner": spec.pruner,
         "storage": redact(storage), "seed": seed, "amp": amp, **dataclasses.asdict(spec.budget)})
    threads = max(1, torch.get_num_threads() // workers)
    jobs = [Job(variant, str(spec.path), resolved.trials, storage, tracking.uri, parent, device, amp, seed, worker,
                threads, progress=progress and workers == 1, heartbeat=heartbeat, log=log) for worker in range(workers)]
    try:
        if workers == 1:
            take_trials(jobs[0], resolved, optuna_study, backend, tracking)
        else:
            run_workers(jobs)
    except BaseException:
        tracking.end(parent, "killed")
        raise
    tracking.end(parent, "complete")
    return optuna_study


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

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        for process in processes:
            process.start()
        for process in processes:
            process.join()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        raise Interrupted(received[0], "after the workers checkpointed their trials and queued them to resume")
    failed = [p.name for p in processes if p.exitcode != 0]
    if failed:
        raise BenchError(f"worker(s) {', '.join(failed)} stopped with an error (see above); "
                         "rerun the same command to finish the study")


def _load(study: VariantStudy, backend: optuna.storages.BaseStorage, seed: int, worker: int = 0) -> optuna.Study:
    # Workers of one study get different sampler seeds, or they would propose the same points.
    return optuna.create_study(storage=backend, study_name=study.name, direction=study.spec.direction,
                               sampler=study.sampler(seed + 1000 * worker), pruner=study.spec.make_pruner(),
                               load_if_exists=True)


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
        optuna.storages.RetryFailedTrialCallback(max_retry=MAX_RETRIES, inherit_intermediate_values=True)(study, failed)


def trial_folder(study: optuna.Study, number: int) -> Path:
    return RESULTS / "studies" / re.sub(r"[^\w.-]+", "_", study.study_name) / f"trial-{number:04d}"


def die_with_parent() -> None:
    """Linux: a worker process ends when the `bench run` that started it is killed, even by -9,
    instead of training on unseen (its trial is then failed by the next `bench run`)."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def work(job: Job) -> None:
    """A worker process of its own (--workers > 1): opens the study and takes trials."""
    die_with_parent()
    os.setpgrp()  # Ctrl-C in the terminal reaches `bench run`, which passes it on once (run_workers)
    torch.set_num_threads(job.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    resolved = load_study(job.study_path).for_variant(get_variant(job.variant), job.trials)
    storage = open_storage(job.storage, job.heartbeat)
    study = _load(resolved, storage, job.seed, job.worker)
    try:
        take_trials(job, resolved, study, storage, Tracking(job.tracking_uri, resolved.spec.name))
    except Interrupted as exc:
        job.say(f"worker {job.worker}: {exc}")
        sys.exit(exc.exit_code)


def take_trials(job: Job, resolved: VariantStudy, study: optuna.Study, storage: optuna.storages.BaseStorage,
                tracking: Tracking) -> None:
    """Asks for trials until the study holds ``job.trials`` complete or pruned ones."""
    device = job.device
    if device == "auto" and torch.cuda.device_count() > 1:
        device = f"cuda:{job.worker % torch.cuda.device_count()}"  # one GPU per worker
    failures = 0  # in a row
    while failures < MAX_FAILURES_IN_A_ROW:
        with ask_lock(job.storage):
            _recover(study, storage, tracking, job)
            states = [trial.state for trial in study.get_trials(deepcopy=False)]
            finished = sum(state in FINISHED for state in states)
            if finished >= job.trials:
                return
            trial = None
            if finished + states.count(TrialState.RUNNING) < job.trials:
                with known_heartbeat_warnings():
                    trial = study.ask()  # a trial queued again after its worker died comes first
                trial.set_user_attr("worker", {"host": HOST, "pid": os.getpid()})
        if trial is None:
            # Enough trials are running, but one may still fail or lose its worker: stay until they end.
            time.sleep(WAIT_SECONDS)
            continue
        with heartbeat(storage, _trial_id(study, storage, trial.number)):  # until it is told, not just trained
            state = run_trial(study, trial, resolved, job, device, tracking)
        failures = failures + 1 if state == TrialState.FAIL else 0
    job.say(f"worker {job.worker} stops: {failures} trials in a row failed; see their reasons in the MLflow UI "
            "(tag bench.end_reason), fix the variant or narrow the study's ranges, then run the same command again")


class ReportToPruner(Observer):
    """Reports each evaluation's objective to Optuna and stops the run when the pruner says so."""

    def __init__(self, trial: optuna.Trial, objective: str):
        self.trial = trial
        self.objective = objective

    def on_scores(self, scores: dict[str, float]) -> None:
        self.trial.report(scores[self.objective], int(scores["step"]))
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {int(scores['step'])}")


def run_trial(study: optuna.Study, trial: optuna.Trial, resolved: VariantStudy, job: Job, device: str,
              tracking: Tracking) -> TrialState:
    spec = resolved.spec
    hparams, seed_index = resolved.suggest(trial)
    frozen = next(t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.number == trial.number)
    with known_heartbeat_warnings():
        retried = optuna.storages.RetryFailedTrialCallback.retry_history(frozen)  # [original, ..., previous]
    retry_of = retried[0] if retried else None
    # A retry repeats its original, seed included (Optuna copies the original's attributes).
    if retry_of is not None:
        seed = frozen.user_attrs["seed"]
    else:
        seed = job.seed + (trial.number if seed_index is None else seed_index)
    trial.set_user_attr("seed", seed)
    config = TrainConfig(job.variant, spec.dataset, seed=seed, device=device, amp=job.amp, hparams=hparams,
                         features=spec.features,
                         **dataclasses.asdict(spec.budget), sample_every=spec.budget.eval_every,
                         checkpoint_every=spec.budget.steps)
    out = trial_folder(study, trial.number)
    shutil.rmtree(out, ignore_errors=True)  # left by a study of the same name whose storage was deleted
    # A retry goes on from where the trial it repeats stopped, when that trial's folder is on this machine.
    resume = bool(retried) and (trial_folder(study, retried[-1]) / CHECKPOINT).exists()
    if resume:
        shutil.copytree(trial_folder(study, retried[-1]), out)
    run = tracking.start_trial(job.parent_run_id, trial.number, config, {
        "bench.study": spec.name, "bench.optuna_study": study.study_name, "bench.objective": spec.objective,
        **({"bench.retry_of": str(retry_of)} if retry_of is not None else {}),
        **({"bench.resumed_from": f"trial {retried[-1]}"} if resume else {}),
        **({"bench.arm": trial.params["arm"]} if spec.is_ablation else {})})
    trial.set_user_attr("mlflow_run_id", run.run_id)
    try:
        result = train(config, out, resume=resume, progress=job.progress,
                       observers=[run, ReportToPruner(trial, spec.objective)])
        run.log_outcome(result)
        value = float(result.scores[spec.objective].iloc[-1])
    except optuna.TrialPruned as exc:
        tracking.end(run.run_id, "pruned", str(exc))
        study.tell(trial, state=TrialState.PRUNED)
        job.say(f"trial {trial.number} pruned ({exc}) {trial.params}")
        return TrialState.PRUNED
    except RunStopped as exc:  # a NaN loss, or a failure the doctor stopped the run for
        trial.set_user_attr("fail_reason", str(exc))
        tracking.end(run.run_id, "failed", str(exc))
        study.tell(trial, state=TrialState.FAIL)
        job.say(f"trial {trial.number} failed: {exc} {trial.params}")
        return TrialState.FAIL
    except BaseException as exc:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        trial.set_user_attr("fail_reason", reason)
        tracking.end(run.run_id, "failed", reason)
        study.tell(trial, state=TrialState.FAIL)
        if isinstance(exc, Interrupted):
            run_again(study, trial.number)
            exc.then = f"trial {trial.number} is queued to resume from it: run the same command again to continue"
        raise
    tracking.end(run.run_id, "complete")
    study.tell(trial, value)
    job.say(f"trial {trial.number} complete: {spec.objective} {value:.4g} {trial.params}")
    return TrialState.COMPLETE
