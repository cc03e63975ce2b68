"""Where a study's trials live: a journal file on one machine, or a database shared by many.

A journal file (the default) serves the workers of one machine. A PostgreSQL database serves
workers on any number of machines; there, each running trial records a heartbeat, and a trial
whose worker went silent (killed, crashed, cut off) is failed and queued again with the same
hyperparameters, so that another worker retries it.
"""

from __future__ import annotations

import contextlib
import fcntl
import threading
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import optuna
from optuna.trial import FrozenTrial

from bench.config import HEARTBEAT_SECONDS
from bench.errors import ConfigError, Interrupted
from bench.connections import (POSTGRES_CONNECT_ARGS, DatabaseAway, check_database, database_engine,
                               explain_database_error, is_database, redact, sqlite_path, url_scheme, wait_out_restarts)
from bench.locations import OPTUNA_JOURNAL, unwritable_folder

STALE_AFTER_HEARTBEATS = 3
"""A trial silent for this many heartbeats is failed and queued again."""
MAX_RETRIES = 2
ASK_LOCK_KEY = 0x62656E6368  # "bench": the PostgreSQL advisory lock that serialises asking
STORAGE_URLS = "postgresql://USER@HOST:PORT/DB, sqlite:///PATH, or a journal file path"


def default_storage() -> str:
    return str(OPTUNA_JOURNAL)


def open_storage(url: str, heartbeat: int = HEARTBEAT_SECONDS) -> optuna.storages.BaseStorage:
    """A PostgreSQL or SQLite storage for a database URL, else a journal file at that path."""
    if is_database(url):
        return _database(url, heartbeat)
    path = Path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The open(2)-based lock works on every local file system, unlike the default symlink lock.
    backend = optuna.storages.journal.JournalFileBackend(
        str(path), lock_obj=optuna.storages.journal.JournalFileOpenLock(str(path)))
    return optuna.storages.JournalStorage(backend)


def check_storage(url: str) -> None:
    """Fails in seconds on a storage URL that is malformed, of an unknown kind, or names a
    PostgreSQL server that cannot be reached or refuses us, or a file (SQLite, journal) that
    cannot be written where it is asked for."""
    scheme = _scheme(url) if is_database(url) else "journal"
    if scheme == "postgresql":
        check_database(url, "Optuna storage")
        return
    path = sqlite_path(url) if scheme == "sqlite" else Path(url)
    try:
        special = path.exists() and not path.is_file()  # a folder, /dev/null, a FIFO: no journal or database
    except OSError as exc:  # a name too long for the file system
        raise ConfigError(f"cannot use the Optuna storage {redact(url)[:120]} ({exc.strerror}); pass a shorter "
                          "path") from None
    if special:
        raise ConfigError(f"the Optuna storage {redact(url)} is not a file (a folder or a device); pass the path "
                          "of a journal file (it is created) or sqlite:///PATH")
    folder = unwritable_folder(path.parent)
    if folder is not None:
        raise ConfigError(f"cannot write the Optuna storage {redact(url)} ({folder} is not a folder you can "
                          "write to); pass a path in a folder you can write to")


def _scheme(url: str) -> str:
    scheme = url_scheme(url, STORAGE_URLS)
    if scheme not in ("postgresql", "sqlite"):
        raise ConfigError(f"unsupported storage '{redact(url)}': use {STORAGE_URLS}")
    return scheme


def _database(url: str, heartbeat: int) -> optuna.storages.RDBStorage:
    from sqlalchemy.exc import SQLAlchemyError

    scheme = _scheme(url)
    connect_args = POSTGRES_CONNECT_ARGS if scheme == "postgresql" else {}
    try:
        with known_heartbeat_warnings():
            storage = optuna.storages.RDBStorage(
                url, engine_kwargs={"connect_args": connect_args, "pool_pre_ping": True}, heartbeat_interval=heartbeat,
                grace_period=STALE_AFTER_HEARTBEATS * heartbeat,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES))
    except SQLAlchemyError as exc:
        raise ConfigError(explain_database_error(url, exc)) from None
    wait_out_restarts(storage.engine, url, reached=True)  # Optuna connected to set up its tables
    return storage


def fail_stale_trials(study: optuna.Study) -> None:
    """Fails the trials whose heartbeat stopped and queues each again (database storages)."""
    with known_heartbeat_warnings():
        optuna.storages.fail_stale_trials(study)


@contextlib.contextmanager
def known_heartbeat_warnings():
    """Optuna warns that heartbeats and retries are experimental and meant for study.optimize;
    this module uses them knowingly (and beats itself, see :func:`heartbeat`): said once here,
    not at every trial."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with")
        yield


def retry_history(trial: FrozenTrial) -> list[int]:
    """The trials a retry repeats, its original first and the one it follows last ([] for a first run)."""
    with known_heartbeat_warnings():
        return optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(trial)


def retries_left(trial: FrozenTrial) -> bool:
    """Whether a failed ``trial`` is queued again (by Optuna's RetryHeartbeatStaleTrialCallback with
    max_retry=MAX_RETRIES): it is not yet the MAX_RETRIES-th retry of its original."""
    return len(retry_history(trial)) < MAX_RETRIES


@contextlib.contextmanager
def ask_lock(url: str):
    """Serialises 'count the trials, then ask for one' between every worker of a storage, so
    that together they run exactly the requested number: a PostgreSQL advisory lock for a
    database that many machines share, a file lock beside a journal or SQLite file."""
    if urlsplit(url).scheme.startswith("postgresql"):
        from sqlalchemy import text
        from sqlalchemy.exc import SQLAlchemyError

        with database_engine(url).connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": ASK_LOCK_KEY})
            try:
                yield
            finally:
                with contextlib.suppress(SQLAlchemyError):  # a connection the server cut holds no lock any more
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ASK_LOCK_KEY})
        return
    path = sqlite_path(url) if is_database(url) else url
    try:
        handle = open(f"{path}.ask-lock", "a")
    except OSError as exc:
        raise ConfigError(f"cannot write beside {redact(str(path))} ({exc.strerror}); pass a store in a folder you "
                          "can write to") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def heartbeat(storage: optuna.storages.BaseStorage, trial_id: int):
    """Records the trial's heartbeat in the background while it runs (database storages only).

    Optuna does this itself inside ``study.optimize``; workers here ask and tell instead, so
    that a trial is asked for under :func:`ask_lock`.
    """
    interval = storage.get_heartbeat_interval() if isinstance(storage, optuna.storages.RDBStorage) else None
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        from sqlalchemy.exc import SQLAlchemyError

        while True:
            try:
                storage.record_heartbeat(trial_id)
            except (SQLAlchemyError, optuna.exceptions.StorageInternalError, DatabaseAway, Interrupted):
                # An outage, or the command stopping during one: not the trial's failure. The trial's own
                # calls wait the outage out and say so, and a trial whose beats stop for good is run again
                # by another worker. Beats go on when the database is back.
                pass
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
