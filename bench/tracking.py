"""MLflow tracking: one experiment per study, one parent run per `bench run`, one child run per trial.

Metrics go out in batches (one request per engine flush, asynchronous), never one request per
scalar per step. Runs carry the host and process that own them, so a later `bench run` can
close the runs of a process that was killed (kill -9 leaves no chance to do it then).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd

from bench.errors import BenchError, ConfigError
from bench.doctor import HEALTH, read_health
from bench.engine import BUDGET_KEYS, CHECKPOINT, TrainConfig, TrainResult, precision, resolve_device
from bench.observer import Finding, Observer
from bench.storage import RESULTS, ask_lock, check_database, has_table, redact, sqlite_path, url_scheme

HOST = socket.gethostname()
BATCH_LIMIT = 1000
"""MLflow accepts at most 1000 metrics per log_batch request."""
END_STATUS = {"complete": "FINISHED", "pruned": "FINISHED", "failed": "FAILED", "killed": "KILLED"}
RUN_PARAMS = (*BUDGET_KEYS, "dataset", "features", "seed")
"""What a trial run records besides its hyperparameters."""
PACKAGES = ("ganbench", "torch", "torchvision", "optuna", "mlflow", "torchmetrics")
TRACKING_URIS = "http(s)://HOST:PORT (a tracking server), postgresql://USER@HOST:PORT/DB or sqlite:///PATH"
STORE_URIS = "postgresql://USER@HOST:PORT/DB or sqlite:///PATH"
HTTP_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "6", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
"""MLflow's defaults retry a request for about four minutes (7 retries, backoff factor 2) and
wait 120 s for each answer. These wait out a server that restarts (retries 0, 2, 4, 8, 16, 32 s
apart: about a minute, saying so at the first, see RetryNotice) and give up on one that is gone;
each answer is waited for 30 s. A user's own settings win."""
SERVER_GRACE_SECONDS = 3
"""How long a stopped MLflow server may take to shut down before it is killed."""
PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(RESULTS / 'mlflow.db').resolve()}"


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


def environment_tags() -> dict[str, str]:
    tags = {"bench.git_commit": git_commit(), "bench.host": HOST, "bench.pid": str(os.getpid()),
            "bench.python": platform.python_version()}
    for package in PACKAGES:
        try:
            tags[f"bench.version.{package}"] = version(package)
        except PackageNotFoundError:
            pass
    return tags


def check_server(uri: str) -> None:
    """Fails in seconds, not after MLflow's minutes of retries, when no tracking server answers, or when
    what answers is not a working one: its health page and one call of its API (an error page, another
    program on the port, or a server whose database is gone would fail every later request, slowly)."""
    import requests

    base = uri.rstrip("/")
    try:
        requests.get(f"{base}/health", timeout=5).raise_for_status()
        answer = requests.get(f"{base}/api/2.0/mlflow/experiments/search", params={"max_results": 1}, timeout=5)
    except requests.RequestException as exc:
        raise ConfigError(f"cannot reach the MLflow tracking server at {redact(uri)} ({type(exc).__name__}); "
                          "start it (bench server --backend-store-uri ...) or check --tracking-uri") from None
    try:
        api_works = answer.status_code == 200 and isinstance(answer.json(), dict)
    except ValueError:  # not JSON
        api_works = False
    if not api_works:
        raise ConfigError(f"the server at {redact(uri)} is not a working MLflow tracking server (its experiments "
                          f"API answered HTTP {answer.status_code}, {answer.headers.get('content-type', 'no type')}); "
                          "check --tracking-uri, or the server's log")


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


def connect(tracking_uri: str | None, *, create: bool) -> str:
    """The tracking URI to use (``tracking_uri``, else the project's store), checked before MLflow
    touches it, which would retry a dead server for minutes, print a database's traceback, or
    create a store where there is none: fails in seconds, with one line naming the host and what
    to check, on a server that does not answer, a database that refuses us, a malformed URL and,
    unless ``create``, a store that does not exist yet."""
    uri = tracking_uri or default_tracking_uri()
    scheme = url_scheme(uri, TRACKING_URIS)
    if scheme in ("http", "https"):
        if not urlsplit(uri).hostname:
            raise ConfigError(f"malformed URL '{redact(uri)}' (no host); use {TRACKING_URIS}")
        for key, value in HTTP_RETRIES.items():
            os.environ.setdefault(key, value)  # in the environment, for spawned workers too
        check_server(uri)
        RetryNotice.install(uri)
    elif scheme in ("postgresql", "sqlite"):
        check_store(uri, create=create)
        if create:
            from mlflow import MlflowClient

            logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial tables..."
            # MLflow creates its schema on first use; two `bench run`s starting at once in a fresh
            # folder would both create it ("table already exists"): one creates, the other waits.
            with ask_lock(uri):
                MlflowClient(uri).search_experiments(max_results=1)
    else:
        raise ConfigError(f"unsupported tracking URI '{redact(uri)}': use {TRACKING_URIS}")
    return uri


def check_store(uri: str, *, create: bool, role: str = "MLflow store") -> None:
    """A PostgreSQL or SQLite store, checked as :func:`connect` checks one."""
    scheme = url_scheme(uri, STORE_URIS)
    if scheme == "postgresql":
        check_database(uri, role)
        if create or has_table(uri, "experiments"):
            return
    elif scheme == "sqlite":
        path = sqlite_path(uri)
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)  # SQLite creates the file, not its folder
            return
        if path.is_file():
            return
    else:
        raise ConfigError(f"unsupported {role} '{redact(uri)}': use {STORE_URIS}")
    raise ConfigError(f"no {role} at {redact(uri)} yet; run `bench run --variant V --study S` first, "
                      "or pass the --tracking-uri it used")


def check_port(host: str, port: int) -> None:
    """Fails, before any address is printed, when ``host``:``port`` cannot be listened on (a port
    in use, a host that is not this machine's): MLflow would say so in a traceback and exit 0."""
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the web server binds
            probe.bind(address)
    except (OSError, OverflowError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"cannot listen on {host}:{port} ({reason}); pass another --port, or a --host "
                          "address of this machine") from None


def serve(command: str, *args: str) -> None:
    """Runs `mlflow COMMAND ARGS` (ui, server) until it ends, or until bench gets SIGINT (Ctrl-C)
    or SIGTERM; then stops it and every process it started (MLflow runs its web server as a child
    process), so that none outlives bench holding the port."""
    sys.stdout.flush()
    # The job runner serves MLflow's GenAI features; without it the server starts in seconds, not tens.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops it as Ctrl-C does
    try:
        # A session of its own: a terminal's Ctrl-C reaches bench alone, which stops the whole group.
        server = subprocess.Popen([sys.executable, "-m", "mlflow", command, *args, "--workers", "1"], env=env,
                                  start_new_session=True, preexec_fn=_terminated_with_parent())
        try:
            server.wait()
        except KeyboardInterrupt:
            return
        finally:
            stop_group(server)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if server.returncode != 0:
        raise BenchError(f"mlflow {command} ended with exit status {server.returncode}; see its messages above "
                         "(a port already in use: pass another --port)")


def _terminated_with_parent():
    """Linux: what makes the MLflow process get SIGTERM when bench ends, even by SIGKILL (MLflow
    passes SIGTERM on to its web server; SIGKILL would leave that running), resolved before the
    fork so that the child only makes the call."""
    if sys.platform != "linux":
        return None
    return functools.partial(ctypes.CDLL(None).prctl, PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_group(process: subprocess.Popen, grace: float = SERVER_GRACE_SECONDS) -> None:
    """SIGTERM to the process group that ``process`` leads, then SIGKILL to whatever of it is
    left after ``grace`` seconds; returns when ``process`` has ended."""
    # A second Ctrl-C must not cut the stop short.
    handlers = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while group_alive(process) and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def group_alive(process: subprocess.Popen) -> bool:
    """Whether any process of the group that ``process`` leads is left."""
    process.poll()  # reaps the leader: until then, its zombie counts as a member of the group
    try:
        os.killpg(process.pid, 0)
    except ProcessLookupError:
        return False
    return True


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def study_page(uri: str, study: str | None) -> str:
    """The MLflow UI's page for ``study``'s runs table (its experiments list without a study)."""
    if study is None:
        return "#/experiments"
    import mlflow

    experiment = mlflow.MlflowClient(uri).get_experiment_by_name(study)
    if experiment is None:
        raise ConfigError(f"no study '{study}' in {redact(uri)}; run `bench run --study {study} ...` first, "
                          "or leave out --study")
    return f"#/experiments/{experiment.experiment_id}/runs"


def findings_of(run: str, tracking_uri: str | None = None) -> list[Finding]:
    """What the training doctor found in ``run``: a run folder (its health.json) or an MLflow run id
    (the health.json artifact it recorded; none when it has none)."""
    import tempfile

    import mlflow
    from mlflow.exceptions import MlflowException

    folder = Path(run)
    if folder.is_dir():
        if not (folder / HEALTH).exists():
            raise ConfigError(f"{folder} holds no {HEALTH}: pass a folder written by `bench train` or a study trial")
        return read_health(folder / HEALTH)
    uri = connect(tracking_uri, create=False)
    client = mlflow.MlflowClient(uri)
    try:
        client.get_run(run)
    except MlflowException:
        raise ConfigError(f"'{run}' is neither a run folder nor an MLflow run id in {redact(uri)}; "
                          "check the path, or pass --tracking-uri") from None
    if HEALTH not in [artifact.path for artifact in client.list_artifacts(run)]:
        return []
    with tempfile.TemporaryDirectory() as downloads:
        return read_health(Path(client.download_artifacts(run, HEALTH, downloads)))


class Tracking:
    """The MLflow side of a study: its experiment, and the runs in it."""

    def __init__(self, tracking_uri: str | None, study: str, artifacts: Path = RESULTS / "mlartifacts"):
        import mlflow

        self.uri = connect(tracking_uri, create=True)
        # MLflow's logging thread polls its queue with a 1 s timeout, and each flush (two per
        # closed run) waits that poll out: 2 s per trial, measured. Buffered, it waits on the
        # event a flush sets instead, and sends each second's metrics in one request.
        os.environ.setdefault("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "1")
        # Process-wide as well: flush_async_logging() talks to the global store, and left unset
        # that is a fresh ./mlflow.db in whatever folder the worker happens to run in.
        mlflow.set_tracking_uri(self.uri)
        self.client = mlflow.MlflowClient(self.uri)
        self.experiment_id = self._experiment(study, artifacts)

    def _experiment(self, name: str, artifacts: Path) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            # A local store keeps its artifacts beside it; a server decides for itself.
            location = artifacts.resolve().as_uri() if urlsplit(self.uri).scheme in ("sqlite", "file", "") else None
            try:
                # The UI opens a 'custom model development' experiment on its runs table, not on
                # the GenAI trace overview.
                return self.client.create_experiment(name, artifact_location=location, tags={
                    "mlflow.experimentKind": "custom_model_development", "bench.study": name})
            except MlflowException:  # another worker created it between our lookup and now
                experiment = self.client.get_experiment_by_name(name)
                if experiment is None:
                    raise
        return experiment.experiment_id

    def start_parent(self, tags: dict[str, str], params: dict[str, object]) -> str:
        run = self.client.create_run(self.experiment_id, tags={**environment_tags(), **tags, "bench.kind": "study"},
                                     run_name=f"{tags['bench.study']}-{tags['bench.variant']}-{time.strftime('%Y%m%d-%H%M%S')}")
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def start_trial(self, parent_run_id: str, trial_number: int, config: TrainConfig,
                    tags: dict[str, str]) -> TrialRun:
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{trial_number:04d}", tags={
            **environment_tags(), **tags, "mlflow.parentRunId": parent_run_id, "bench.kind": "trial",
            "bench.trial": str(trial_number), "bench.variant": config.variant, "bench.dataset": config.dataset,
            "bench.extractor": config.features, "bench.seed": str(config.seed), "bench.device": str(resolve_device(config.device)),
            "bench.precision": precision(config), "bench.state": "running"})
        self.log_params(run.info.run_id, {**config.hparams, **{key: getattr(config, key) for key in RUN_PARAMS}})
        return TrialRun(self.client, run.info.run_id)

    def log_params(self, run_id: str, params: dict[str, object]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(run_id, params=[Param(key, str(value)) for key, value in params.items()])

    def end(self, run_id: str, state: str, reason: str = "") -> None:
        from mlflow import flush_async_logging

        flush_async_logging()  # a run is closed only after all its metrics are in
        tags = {"bench.state": state} | ({"bench.end_reason": reason[:5000]} if reason else {})
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)
        self.client.set_terminated(run_id, status=END_STATUS[state])

    def end_if_running(self, run_id: str, state: str, reason: str) -> None:
        if self.client.get_run(run_id).info.status == "RUNNING":
            self.end(run_id, state, reason)

    def close_orphans(self) -> list[str]:
        """Ends the RUNNING runs whose process on this host is gone (a worker killed with -9)."""
        runs = self.client.search_runs([self.experiment_id], filter_string=(
            f"attributes.status = 'RUNNING' and tags.`bench.host` = '{HOST}'"), max_results=1000)
        closed = []
        for run in runs:
            pid = int(run.data.tags.get("bench.pid", "0"))
            if pid and not pid_alive(pid):
                state = "failed" if run.data.tags.get("bench.kind") == "trial" else "killed"
                self.end(run.info.run_id, state, f"its process {pid} on {HOST} ended without closing it")
                closed.append(run.info.run_id)
        return closed


FINAL_SAMPLES = "final_samples"
"""Artifact folder of a trial's last sample grid."""


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

    def on_losses(self, rows: list[dict[str, float]]) -> None:
        self._log_rows(rows)

    def on_scores(self, scores: dict[str, float]) -> None:
        self._log_rows([scores])

    def on_grid(self, path: Path, step: int) -> None:
        from PIL import Image

        with Image.open(path) as image:
            self.client.log_image(self.run_id, image.convert("RGB"), key="samples", step=step)

    def on_finding(self, finding: Finding) -> None:
        """The doctor's finding as a `health.<check>` tag and metric for the UI, and the run's
        findings so far as the artifact health.json, which `bench doctor RUN_ID` reads."""
        self.client.set_tag(self.run_id, f"health.{finding.check}", f"step {finding.step}: {finding.summary()}")
        self.client.log_metric(self.run_id, f"health.{finding.check}", 1.0, step=finding.step)
        self.findings.append(finding.as_dict())
        self.client.log_dict(self.run_id, self.findings, HEALTH)

    def log_outcome(self, result: TrainResult) -> None:
        """The loss and score curves as figures, and the final checkpoint."""
        self.client.log_figure(self.run_id, curves(result.history, "generator step", "loss"), "loss_curves.png")
        if not result.scores.empty:
            self.client.log_figure(self.run_id, curves(result.scores, "generator step", "score"), "score_curves.png")
        self.client.log_metric(self.run_id, "images_per_second", result.images_per_second)
        if result.out is not None:
            self.client.log_artifact(self.run_id, str(result.out / CHECKPOINT), "checkpoint")
            grids = sorted((result.out / "samples").glob("step_*.png"))
            if grids:  # the final samples, which comparisons and reports show
                self.client.log_artifact(self.run_id, str(grids[-1]), FINAL_SAMPLES)


def curves(frame: pd.DataFrame, xlabel: str, ylabel: str):
    """One panel per column of ``frame`` against its 'step' column."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, safe in worker processes

    columns = [column for column in frame.columns if column != "step"]
    figure = Figure(figsize=(4 * len(columns), 3), layout="constrained")
    for axis, column in zip(figure.subplots(1, len(columns), squeeze=False)[0], columns):
        axis.plot(frame["step"], frame[column], linewidth=0.8)
        axis.set(title=column, xlabel=xlabel, ylabel=ylabel)
    return figure
