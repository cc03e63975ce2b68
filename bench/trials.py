"""A study's trials as a worker takes them: asked for under the study's lock, each trained by the engine
from its resolved plan, tracked in MLflow, reported to Optuna's pruner, and told; a trial whose
worker died is failed and queued again, and resumes from its checkpoint where that is on this machine.
"""

from __future__ import annotations

import copy
import dataclasses
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

from bench.config import TrainConfig
from bench.devices import worker_device
from bench.engine import CHECKPOINT, train
from bench.errors import BenchError, Interrupted, OutputNotWritten, RunStopped
from bench.connections import DatabaseAway
from bench.locations import STUDY_RUNS
from bench.observer import Observer
from bench.plan import RunPlan
from bench.processes import HOST, die_with_parent, exit_promptly, pid_alive
from bench.registry import get_variant
from bench.schema import RETRIED, StudyAttr, Tag, TrialAttr, trial_tags
from bench.storage import (MAX_RETRIES, ask_lock, fail_stale_trials, heartbeat,
                           known_heartbeat_warnings, open_storage, retries_left, retry_history)
from bench.study import StudySpec, VariantStudy
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


def open_variant_study(study: VariantStudy, backend: optuna.storages.BaseStorage) -> optuna.Study:
    """The variant's Optuna study; the process that asks it for trials gives it a sampler (_sample_anew)."""
    return optuna.create_study(storage=backend, study_name=study.name, direction=study.spec.direction,
                               pruner=study.spec.make_pruner(), load_if_exists=True)


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
    journal file, when its process on this host no longer exists. Also queues the stopped trials
    the storage went away from before their command could queue them (:func:`_stopped_not_queued`)."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    gone: list[tuple[FrozenTrial, str, bool]] = []  # (trial, why, queued again)
    if isinstance(storage, optuna.storages.RDBStorage):
        fail_stale_trials(study)  # Optuna queues each again unless its retries are spent (storage.open_storage)
        stale = {trial.number for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
        gone = [(trial, "its worker stopped sending heartbeats (killed, crashed or cut off)",
                 retries_left(trial)) for trial in running if trial.number in stale]
    else:
        for trial in running:
            if _worker_gone(trial):
                reason = (f"worker process {trial.user_attrs[TrialAttr.WORKER]['pid']} on {HOST} ended during the "
                          "trial (killed or crashed)")
                trial_id = _trial_id(study, storage, trial.number)
                storage.set_trial_user_attr(trial_id, TrialAttr.FAIL_REASON, reason)
                storage.set_trial_state_values(trial_id, TrialState.FAIL)
                gone.append((trial, reason, run_again(study, trial.number)))
    for trial in _stopped_not_queued(study):
        run_again(study, trial.number)
        job.say(f"trial {trial.number} queued again: the storage went away before the command that stopped it "
                f"could queue it ({trial.user_attrs.get(TrialAttr.FAIL_REASON, 'stopped')})")
    for trial, reason, queued in gone:
        reason = f"{reason}; {'queued to run again' if queued else SPENT}"
        job.say(f"trial {trial.number} marked failed: {reason}")
        if TrialAttr.MLFLOW_RUN_ID in trial.user_attrs:  # a run the trial ended (its failure, a stop) keeps its state
            tracking.end_if_open(trial.user_attrs[TrialAttr.MLFLOW_RUN_ID], RETRIED if queued else "failed", reason)
    tracking.close_orphans()


def _worker_gone(trial: FrozenTrial) -> bool:
    """The process that took ``trial`` ran on this host and has ended."""
    owner = trial.user_attrs.get(TrialAttr.WORKER, {})
    return owner.get("host") == HOST and not pid_alive(owner.get("pid", 0))


STOPPED_GRACE_SECONDS = 600
"""A stop marked QUEUE_AGAIN whose process cannot be looked up (another host, or a pid reused) is
queued by recovery once it ended this long ago: longer than its own command can still be queueing it
(an outage it waits out, OUTAGE_SECONDS, then a silent connection's timeout) and than two hosts'
clocks commonly differ."""


def _stopped_not_queued(study: optuna.Study, grace: float = STOPPED_GRACE_SECONDS) -> list[FrozenTrial]:
    """The stopped trials the storage went away from between failing them and queueing them again,
    once the command that stopped them is gone: its process on this host has ended, or the trial
    ended more than ``grace`` seconds ago."""
    trials = study.get_trials(deepcopy=False)
    queued = {number for trial in trials for number in retry_history(trial)}

    def gone(trial: FrozenTrial) -> bool:
        ended = trial.datetime_complete  # naive local time in every storage: .timestamp() reads it as such
        return _worker_gone(trial) or (ended is not None and time.time() - ended.timestamp() > grace)

    return [trial for trial in trials if trial.state == TrialState.FAIL and trial.user_attrs.get(TrialAttr.QUEUE_AGAIN)
            and trial.number not in queued and retries_left(trial) and gone(trial)]


SPENT = f"not queued again (its {MAX_RETRIES} retries are spent)"


def run_again(study: optuna.Study, number: int) -> bool:
    """Queues failed trial ``number`` again with its hyperparameters, seed and reported scores, unless
    it is already the MAX_RETRIES-th retry of its original (then False); the retry resumes from the
    trial's last checkpoint when it is here."""
    # A copy: Optuna's callback appends to the trial's own retry history.
    failed = copy.deepcopy(study.get_trials(deepcopy=False)[number])
    left = retries_left(failed)
    with known_heartbeat_warnings():
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES, inherit_intermediate_values=True)
        retry(study, failed)
    return left


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
        take_trials(job, [(lane, open_variant_study(lane, storage)) for lane in lanes], storage,
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
            counts: list[LaneCount | None] = []
            for resolved, study in lanes:
                _recover(study, storage, tracking, job)
                if study.user_attrs.get(StudyAttr.GAVE_UP):  # skipped by this worker or another
                    counts.append(None)
                    continue
                states = [trial.state for trial in study.get_trials(deepcopy=False)]
                counts.append(LaneCount(sum(state in FINISHED for state in states), states.count(TrialState.RUNNING),
                                        resolved.trials))
            if all(count is None or count.done for count in counts):
                return
            trial = None
            index = next_lane(counts)
            if index is not None:
                resolved, study = lanes[index]
                with known_heartbeat_warnings():
                    trial = study.ask()  # a trial queued again after its worker died comes first
                trial.set_user_attr(TrialAttr.WORKER, {"host": HOST, "pid": os.getpid()})
                trial.set_user_attr(TrialAttr.QUEUE_AGAIN, False)  # a retry inherits its original's mark
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
                      f"{study.trials[trial.number].user_attrs.get(TrialAttr.FAIL_REASON, 'unknown')[:300]})")
            study.set_user_attr(StudyAttr.GAVE_UP, reason)
            job.say(f"{name} skipped: {reason}; see their reasons in the MLflow UI (tag {Tag.END_REASON}), fix the "
                    "variant or narrow the study's ranges, then run the same command again")


@dataclass(frozen=True)
class LaneCount:
    """A variant's study as the scheduler sees it."""

    finished: int
    """Trials complete or pruned."""
    running: int
    trials: int
    """Trials to finish."""

    @property
    def done(self) -> bool:
        return self.finished >= self.trials

    @property
    def started(self) -> int:
        return self.finished + self.running


def next_lane(counts: Sequence[LaneCount | None]) -> int | None:
    """The variant to ask a trial for: among those with fewer trials started than they need, the one
    with the fewest started, the first on a tie, so that the variants advance together. None while
    each unfinished variant has enough trials running (one may still fail: the worker waits for
    them). A variant given up on is None in ``counts``."""
    open_lanes = [(count.started, index) for index, count in enumerate(counts)
                  if count is not None and count.started < count.trials]
    return min(open_lanes)[1] if open_lanes else None


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
    retried = retry_history(frozen)
    retry_of = retried[0] if retried else None
    # A retry repeats its original, seed included (Optuna copies the original's attributes).
    if retry_of is not None:
        seed = frozen.user_attrs[TrialAttr.SEED]
    else:
        seed = job.seed + (trial.number if seed_index is None else seed_index)
    trial.set_user_attr(TrialAttr.SEED, seed)
    # A grid beside each evaluation (0: at the end only); checkpoints at the end and every few minutes. Resolved
    # once, dataset loaded: the run records what the trainer trains.
    config = TrainConfig(resolved.variant.name, spec.dataset, seed=seed, device=device, amp=job.amp, hparams=hparams,
                         features=spec.features, sample_every=spec.budget.eval_every, checkpoint_every=0,
                         **dataclasses.asdict(spec.budget))
    tags = dict(study=spec.name, optuna_study=study.study_name, objective=spec.objective, retry_of=retry_of,
                arm=trial.params["arm"] if spec.is_ablation else None)
    try:
        plan = RunPlan.resolve(config)
    except BenchError as exc:  # settings of this trial that no run can train with: recorded as it was asked
        run = tracking.start_trial(job.parent_run_id, config, trial_tags(config, trial.number, **tags))
        trial.set_user_attr(TrialAttr.MLFLOW_RUN_ID, run.run_id)
        return _failed(study, trial, config.variant, run.run_id, str(exc), tracking, job)
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
        config, trial.number, resumed_from=retried[-1] if resume else None, **tags))
    trial.set_user_attr(TrialAttr.MLFLOW_RUN_ID, run.run_id)
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
        return _failed(study, trial, config.variant, run.run_id, str(exc), tracking, job)
    except BaseException as exc:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        resumable = isinstance(exc, (Interrupted, OutputNotWritten))  # its checkpoint is intact: a retry goes on from it
        queued, state = "is queued to resume from it", "failed"
        try:
            trial.set_user_attr(TrialAttr.FAIL_REASON, reason)
            trial.set_user_attr(TrialAttr.QUEUE_AGAIN, resumable)
            study.tell(trial, state=TrialState.FAIL)
            if resumable:
                if run_again(study, trial.number):
                    state = RETRIED
                else:
                    queued = f"is {SPENT}"
        except (Interrupted, DatabaseAway):
            # The storage went away: the next command that reaches it queues a resumable trial again, as a
            # running trial whose worker is gone or as a failed one marked QUEUE_AGAIN (_recover).
            if resumable and retries_left(frozen):
                queued, state = "resumes from it once the storage answers", RETRIED
            elif resumable:
                queued = f"is {SPENT}"
            if not isinstance(exc, Interrupted):
                raise
        finally:
            tracking.end(run.run_id, state, reason)
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


def _failed(study: optuna.Study, trial: optuna.Trial, variant: str, run_id: str, reason: str,
            tracking: Tracking, job: Job) -> TrialState:
    """Ends ``trial`` of ``variant`` and its MLflow run as failed for ``reason``, and says so."""
    trial.set_user_attr(TrialAttr.FAIL_REASON, reason)
    tracking.end(run_id, "failed", reason)
    study.tell(trial, state=TrialState.FAIL)
    job.say(f"{variant} trial {trial.number} failed: {reason} {trial.params}")
    return TrialState.FAIL
