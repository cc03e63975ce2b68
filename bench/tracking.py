"""MLflow tracking: the store runs are kept in, one experiment per study in it, one parent run per
`bench run` and one child run per trial.

A :class:`TrackingStore` is opened once by a command or an API entry point (its URI checked in
seconds) and passed down with its one client, as Optuna passes a storage. Metrics go out in batches
(one request per engine flush, asynchronous), never one request per scalar per step. Runs carry the
host and process that own them, so a later `bench run` can close the runs of a process that was
killed (kill -9 leaves no chance to do it then).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd

from bench.errors import ConfigError
from bench.doctor import HEALTH, read_health
from bench.config import TrainConfig
from bench.engine import CHECKPOINT, TrainResult
from bench.connections import check_server, check_store, explain_database_error, redact, url_scheme
from bench.locations import MLFLOW_ARTIFACTS, MLFLOW_DB
from bench.observer import Finding, Observer, RunStart
from bench.processes import HOST, pid_alive
from bench.readers import open_image
from bench.schema import END_STATUS, HEALTH_PREFIX, RUN_PARAMS, STUDY, TRIAL, DamagedRun, Tag, end_tags, trial_frame
from bench.storage import ask_lock

BATCH_LIMIT = 1000
"""MLflow accepts at most 1000 metrics per log_batch request."""
SEARCH_PAGE = 10_000
"""Runs per search_runs request."""
TRACKING_URIS = "http(s)://HOST:PORT (a tracking server), postgresql://USER@HOST:PORT/DB or sqlite:///PATH"
HTTP_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "6", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
"""MLflow's defaults retry a request for about four minutes (7 retries, backoff factor 2) and
wait 120 s for each answer. These wait out a server that restarts (retries 0, 2, 4, 8, 16, 32 s
apart: about a minute, saying so at the first, see RetryNotice) and give up on one that is gone;
each answer is waited for 30 s. A user's own settings win."""


class TrackingStore:
    """An MLflow tracking store (a tracking server, PostgreSQL or SQLite) and the one client that reads
    and writes it. Reading one changes nothing in the process (MLflow's tracking URI included). It
    pickles as its URI: a worker process makes its own client, without checking the store again."""

    def __init__(self, uri: str):
        """A store already checked (see :meth:`open`)."""
        from mlflow import MlflowClient

        self.uri = uri
        self.client = MlflowClient(uri)
        if self.is_server:
            RetryNotice.install(uri)

    @classmethod
    def open(cls, store: TrackingStore | str | None = None, *, create: bool = False) -> TrackingStore:
        """``store`` as it is, or the store at URI ``store`` (None: $MLFLOW_TRACKING_URI, else
        results/mlflow.db), checked before MLflow touches it, which would retry a dead server for
        minutes, print a database's traceback, or create a store where there is none: fails in
        seconds, with one line naming the host and what to check, on a server that does not answer,
        a database that refuses us, a malformed URL and, unless ``create``, a store that does not
        exist yet."""
        if isinstance(store, TrackingStore):
            return store
        uri = store or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{MLFLOW_DB.resolve()}"
        scheme = url_scheme(uri, TRACKING_URIS)
        if scheme in ("http", "https"):
            if not urlsplit(uri).hostname:
                raise ConfigError(f"malformed URL '{redact(uri)}' (no host); use {TRACKING_URIS}")
            for key, value in HTTP_RETRIES.items():
                os.environ.setdefault(key, value)  # in the environment, for spawned workers too
            check_server(uri)
            return cls(uri)
        if scheme not in ("postgresql", "sqlite"):
            raise ConfigError(f"unsupported tracking URI '{redact(uri)}': use {TRACKING_URIS}")
        check_store(uri, create=create)
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial tables..."
        # MLflow's client creates the schema; two `bench run`s starting at once in a fresh folder
        # would both create it ("table already exists"): one creates, the other waits.
        from sqlalchemy.exc import SQLAlchemyError

        try:
            with ask_lock(uri) if create else contextlib.nullcontext():
                return cls(uri)
        except SQLAlchemyError as exc:  # a file that is not a database, a schema MLflow cannot migrate
            raise ConfigError(explain_database_error(uri, exc, "MLflow store")) from None

    def __reduce__(self):
        return TrackingStore, (self.uri,)

    @property
    def is_server(self) -> bool:
        return urlsplit(self.uri).scheme in ("http", "https")

    def trial_runs(self, study: str | None = None) -> pd.DataFrame:
        """Every trial run of ``study`` (all studies by default) that :func:`trial_frame` accepts, one
        row each, in the columns of MLflow's search_runs table: run_id, status, start_time, end_time,
        metrics.*, params.*, tags.*. A run still running is a row in state 'running'; a damaged one
        is skipped with a :class:`DamagedRun` warning."""
        experiments = [e for e in self.client.search_experiments(max_results=1000) if Tag.STUDY in e.tags]
        if study is not None:
            experiments = [e for e in experiments if e.name == study]
            if not experiments:
                raise ConfigError(f"no study '{study}' in the MLflow store {redact(self.uri)}; "
                                  "run `bench run --study ...` first, or pass the --tracking-uri it used")
        runs, token = [], None
        while experiments:
            page = self.client.search_runs([e.experiment_id for e in experiments], f"tags.`{Tag.KIND}` = '{TRIAL}'",
                                           max_results=SEARCH_PAGE, page_token=token)
            runs += page
            token = page.token
            if not token:
                break
        return trial_frame(runs)

    def final_samples(self, run_id: str):
        """The trial's last sample grid as a decoded ``PIL.Image.Image``, or None when it logged none.
        An artifact is an untrusted file: one that is not a regular file (a FIFO would block), not an
        image, over :data:`MAX_SAMPLES_BYTES` (refused before it is fetched) or over
        :data:`bench.readers.MAX_IMAGE_PIXELS` (refused from its header, before any pixel is decoded)
        gives a :class:`DamagedRun` warning naming the run, and None."""
        import tempfile

        from bench import readers

        listed = [item for item in self.client.list_artifacts(run_id, FINAL_SAMPLES) if not item.is_dir]
        if not listed:
            return None
        what, fix = f"the final samples of MLflow run {run_id}", "shown without them"
        try:
            if (listed[-1].file_size or 0) > MAX_SAMPLES_BYTES:
                raise readers.UnreadableFile(f"{what} ({listed[-1].path}) hold {listed[-1].file_size:,} bytes, over "
                                             f"the {MAX_SAMPLES_BYTES:,} of a sample grid; {fix}")
            local = local_artifact(self.client.get_run(run_id).info.artifact_uri, listed[-1].path)
            if local is not None:  # a store on this disk: checked where it lies, before anything copies it
                return readers.open_image(local, what, fix)
            with tempfile.TemporaryDirectory() as folder:
                return readers.open_image(self.client.download_artifacts(run_id, listed[-1].path, folder), what, fix)
        except readers.UnreadableFile as exc:
            warnings.warn(str(exc), DamagedRun, stacklevel=2)
            return None

    def parent_run(self, study: str) -> str | None:
        """The study's latest `bench run` (its parent run), where the comparison's plots are logged."""
        experiment = self.client.get_experiment_by_name(study)
        if experiment is None:
            return None
        runs = self.client.search_runs([experiment.experiment_id], f"tags.`{Tag.KIND}` = '{STUDY}'",
                                       order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0].info.run_id if runs else None

    def study_page(self, study: str | None) -> str:
        """The MLflow UI's page for ``study``'s runs table (its experiments list without a study)."""
        if study is None:
            return "#/experiments"
        experiment = self.client.get_experiment_by_name(study)
        if experiment is None:
            raise ConfigError(f"no study '{study}' in {redact(self.uri)}; run `bench run --study {study} ...` "
                              "first, or leave out --study")
        return f"#/experiments/{experiment.experiment_id}/runs"

    def findings(self, run_id: str) -> list[Finding]:
        """What the training doctor found in MLflow run ``run_id`` (the health.json artifact it recorded;
        none when it has none)."""
        import tempfile

        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
        except MlflowException:
            raise ConfigError(f"'{run_id}' is neither a run folder nor an MLflow run id in {redact(self.uri)}; "
                              "check the path, or pass --tracking-uri") from None
        if HEALTH not in [artifact.path for artifact in self.client.list_artifacts(run_id)]:
            return []
        with tempfile.TemporaryDirectory() as downloads:
            return read_health(Path(self.client.download_artifacts(run_id, HEALTH, downloads)))


def plain(tags: dict) -> dict[str, str]:
    """``tags`` with plain-str keys, as MLflow's stores and its REST client expect."""
    return {str(key): value for key, value in tags.items()}


def local_artifact(artifact_uri: str | None, path: str) -> Path | None:
    """Where artifact ``path`` of a run whose artifacts lie at ``artifact_uri`` is on this disk, for a
    file:// store; None for a store elsewhere (a tracking server's)."""
    from urllib.request import url2pathname

    parts = urlsplit(artifact_uri or "")
    if parts.scheme not in ("file", "") or not artifact_uri:
        return None
    return Path(url2pathname(parts.path)) / path


class RetryNotice(logging.Handler):
    """One line on stderr when requests to the tracking server start failing mid-command: MLflow
    retries them for about a minute (HTTP_RETRIES), and urllib3 logs each retry to a logger it
    silences itself, so a command would otherwise wait without a word."""

    def __init__(self, uri: str):
        super().__init__(logging.WARNING)
        self.uri = uri
        self.said_at = -math.inf

    @classmethod
    def install(cls, uri: str) -> None:
        logger = logging.getLogger("urllib3.connectionpool")
        if not any(isinstance(handler, cls) for handler in logger.handlers):
            logger.addHandler(cls(uri))

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Retrying") and time.monotonic() - self.said_at > 60:  # once an outage
            self.said_at = time.monotonic()
            print(f"the tracking server at {redact(self.uri)} does not answer; retrying for about a minute",
                  file=sys.stderr, flush=True)


class Tracking:
    """The MLflow side of a study: its experiment, and the runs in it."""

    def __init__(self, store: TrackingStore, study: str, artifacts: Path = MLFLOW_ARTIFACTS):
        import mlflow

        # MLflow's logging thread polls its queue with a 1 s timeout, and each flush (two per
        # closed run) waits that poll out. Buffered, it waits on the
        # event a flush sets instead, and sends each second's metrics in one request.
        os.environ.setdefault("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "1")
        # Process-wide as well: flush_async_logging() talks to the global store, and left unset
        # that is a fresh ./mlflow.db in whatever folder the worker happens to run in.
        mlflow.set_tracking_uri(store.uri)
        self.client = store.client
        self.experiment_id = self._experiment(study, artifacts, local=urlsplit(store.uri).scheme == "sqlite")

    def _experiment(self, name: str, artifacts: Path, local: bool) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            # A local store keeps its artifacts beside it; a server decides for itself.
            location = artifacts.resolve().as_uri() if local else None
            try:
                # The UI opens a 'custom model development' experiment on its runs table, not on
                # the GenAI trace overview.
                return self.client.create_experiment(name, artifact_location=location, tags={
                    "mlflow.experimentKind": "custom_model_development", Tag.STUDY: name})
            except MlflowException:  # another worker created it between our lookup and now
                experiment = self.client.get_experiment_by_name(name)
                if experiment is None:
                    raise
        return experiment.experiment_id

    def start_parent(self, tags: dict[str, str], params: dict[str, object]) -> str:
        """A `bench run`'s parent run, with ``tags`` from :func:`bench.schema.study_tags`."""
        run = self.client.create_run(self.experiment_id, tags=plain(tags),
                                     run_name=f"{tags[Tag.STUDY]}-{tags[Tag.VARIANT]}-{time.strftime('%Y%m%d-%H%M%S')}")
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def start_trial(self, parent_run_id: str, config: TrainConfig, tags: dict[str, str]) -> TrialRun:
        """A trial's run under ``parent_run_id``, with ``tags`` from :func:`bench.schema.trial_tags`."""
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{int(tags[Tag.TRIAL]):04d}",
                                     tags=plain({**tags, "mlflow.parentRunId": parent_run_id}))
        self.log_params(run.info.run_id, {**config.hparams, **{key: getattr(config, key) for key in RUN_PARAMS}})
        return TrialRun(self.client, run.info.run_id)

    def record_external(self, tags: dict[str, str], params: dict[str, object], scores: dict[str, float]) -> str:
        """An external entry's run, complete at once: ``tags`` from :func:`bench.schema.external_tags`, its
        ``scores`` as metrics at step 0."""
        from mlflow.entities import Metric

        run = self.client.create_run(self.experiment_id, tags=plain(tags),
                                     run_name=f"external-{tags[Tag.VARIANT]}-{int(tags[Tag.TRIAL]):04d}")
        self.log_params(run.info.run_id, params)
        now = int(time.time() * 1000)
        self.client.log_batch(run.info.run_id, metrics=[Metric(key, float(value), now, 0)
                                                        for key, value in scores.items()])
        self.client.set_terminated(run.info.run_id, status=END_STATUS["complete"])
        return run.info.run_id

    def log_params(self, run_id: str, params: dict[str, object]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(run_id, params=[Param(key, str(value)) for key, value in params.items()])

    def end(self, run_id: str, state: str, reason: str = "") -> None:
        from mlflow import flush_async_logging

        flush_async_logging()  # a run is closed only after all its metrics are in
        for key, value in plain(end_tags(state, reason)).items():
            self.client.set_tag(run_id, key, value)
        self.client.set_terminated(run_id, status=END_STATUS[state])

    def end_if_open(self, run_id: str, state: str, reason: str) -> None:
        """Ends a trial's run unless the trial ended it itself: one still running, or one that
        :meth:`close_orphans` closed when its process was gone (before the study knew whether the
        trial is queued again)."""
        run = self.client.get_run(run_id)
        if run.info.status == "RUNNING" or run.data.tags.get(Tag.END_REASON, "").endswith(ORPHANED):
            self.end(run_id, state, reason)

    def close_orphans(self) -> list[str]:
        """Ends the RUNNING runs whose process on this host is gone (a worker killed with -9)."""
        runs = self.client.search_runs([self.experiment_id], filter_string=(
            f"attributes.status = 'RUNNING' and tags.`{Tag.HOST}` = '{HOST}'"), max_results=1000)
        closed = []
        for run in runs:
            pid = int(run.data.tags.get(Tag.PID, "0"))
            if pid and not pid_alive(pid):
                state = "failed" if run.data.tags.get(Tag.KIND) == TRIAL else "killed"
                self.end(run.info.run_id, state, f"its process {pid} on {HOST} {ORPHANED}")
                closed.append(run.info.run_id)
        return closed


ORPHANED = "ended without closing it"
"""How :meth:`Tracking.close_orphans` ends the reason it gives a run whose process is gone."""
FINAL_SAMPLES = "final_samples"
"""Artifact folder of a trial's last sample grid."""
MAX_SAMPLES_BYTES = 64 * 1024 ** 2
"""The largest samples artifact read: a grid of 64 images of 256 x 256 pixels is a few MB as PNG."""


class TrialRun(Observer):
    """One trial's MLflow run, fed by the engine: losses and scores by step, sample grids."""

    def __init__(self, client, run_id: str):
        self.client = client
        self.run_id = run_id
        self.findings: list[dict] = []

    def _log_rows(self, rows: list[dict[str, float]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, int(row["step"]))
                   for row in rows for key, value in row.items() if key != "step"]
        for start in range(0, len(metrics), BATCH_LIMIT):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + BATCH_LIMIT], synchronous=False)

    def on_start(self, run: RunStart) -> None:
        """Where the trial trains, as the engine resolved it (a resumed trial may move)."""
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(str(Tag.DEVICE), str(run.device)),
                                                 RunTag(str(Tag.PRECISION), run.precision)])

    def on_losses(self, rows: list[dict[str, float]]) -> None:
        self._log_rows(rows)

    def on_scores(self, scores: dict[str, float]) -> None:
        self._log_rows([scores])

    def on_grid(self, path: Path, step: int) -> None:
        image = open_image(path, "the sample grid", "check the run folder's disk")
        self.client.log_image(self.run_id, image.convert("RGB"), key="samples", step=step)

    def on_finding(self, finding: Finding) -> None:
        """The doctor's finding as a `health.<check>` tag and metric for the UI, and the run's
        findings so far as the artifact health.json, which `bench doctor RUN_ID` reads."""
        self.client.set_tag(self.run_id, HEALTH_PREFIX + finding.check, f"step {finding.step}: {finding.summary()}")
        self.client.log_metric(self.run_id, HEALTH_PREFIX + finding.check, 1.0, step=finding.step)
        self.findings.append(finding.as_dict())
        self.client.log_dict(self.run_id, self.findings, HEALTH)

    def log_outcome(self, result: TrainResult) -> None:
        """The final checkpoint and samples. The loss and score curves are the logged metrics,
        which MLflow's UI charts and overlays across runs; they are not drawn again here as figures,
        whose matplotlib would cost a short trial a large share of its time."""
        self.client.log_metric(self.run_id, "images_per_second", result.images_per_second)
        if result.out is not None:
            self.client.log_artifact(self.run_id, str(result.out / CHECKPOINT), "checkpoint")
            grids = sorted((result.out / "samples").glob("step_*.png"))
            if grids:  # the final samples, which comparisons and reports show
                self.client.log_artifact(self.run_id, str(grids[-1]), FINAL_SAMPLES)
