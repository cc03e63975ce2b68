"""Where a study's trials live: a journal file on one machine, or a database shared by many.

A journal file (the default) serves the workers of one machine. A PostgreSQL database serves
workers on any number of machines; there, each running trial records a heartbeat, and a trial
whose worker went silent (killed, crashed, cut off) is failed and queued again with the same
hyperparameters, so that another worker retries it.

What the URLs of every store (Optuna's and MLflow's) need lives here too: their secrets
masked for messages and records (:func:`redact`), and one line for a URL that does not parse.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import re
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Iterable
from urllib.parse import unquote, urlsplit

import optuna

from bench.errors import ConfigError

RESULTS = Path("results")
"""Where bench writes by default: MLflow store, artifacts, Optuna journal, trial folders, CSVs."""
UNENCODED = re.compile(r"[/?#@]|%(?![0-9A-Fa-f]{2})")
"""What a URL's password may not hold as it is (RFC 3986): these, and a % that does not begin an escape."""
SECRET_QUERY = re.compile(r"((?:^|[&;])[^=&;#]*(?:pass|pwd|secret|token|key)[^=&;#]*=)[^&;#]*", re.IGNORECASE)
"""Query parameters whose values are secrets: password=, sslpassword=, pwd=, token=, api_key=, ..."""
HEARTBEAT_SECONDS = 10
"""How often a running trial records its heartbeat in a database storage."""
STALE_AFTER_HEARTBEATS = 3
"""A trial silent for this many heartbeats is failed and queued again."""
MAX_RETRIES = 2
ASK_LOCK_KEY = 0x62656E6368  # "bench": the PostgreSQL advisory lock that serialises asking
CONNECT_TIMEOUT_SECONDS = 5
OUTAGE_SECONDS = 120
"""How long a worker waits for a database server it has reached before to come back (a restart, a
failover) before the call that needs it fails."""
STORAGE_URLS = "postgresql://USER@HOST:PORT/DB, sqlite:///PATH, or a journal file path"


def _password_span(url: str) -> tuple[int, int] | None:
    """Where the password of ``user:password@`` lies in ``url`` (start, end), found before any
    parsing: from the user's ':' to the last '@', whatever it holds (an unencoded / ? # or @
    included), so that malformed URLs, which error messages quote, are read the same way."""
    _, slashes, rest = url.partition("://")
    at = rest.rfind("@")
    if not slashes or at < 0 or ":" not in rest[:at]:
        return None
    offset = len(url) - len(rest)
    return offset + rest.index(":") + 1, offset + at


def redact(url: str) -> str:
    """``url`` with its secrets replaced by ***, safe for params, tags and logs: the password of
    ``user:password@`` and the values of query parameters such as password=, token= or api_key=."""
    span = _password_span(url)
    if span is not None:
        url = url[:span[0]] + "***" + url[span[1]:]
    authority = url.find("://") + 3 if "://" in url else 0
    base, question, query = url[authority:].partition("?")
    return url[:authority] + base + question + SECRET_QUERY.sub(r"\1***", query)


def masked(text: str, urls: Iterable[str]) -> str:
    """``text`` (an error message from a library) with the password of each of ``urls`` replaced by ***,
    as written and percent-decoded: libraries quote URLs in their messages in either form."""
    for url in urls:
        span = _password_span(url)
        if span is not None and span[1] > span[0]:
            password = url[span[0]:span[1]]
            text = text.replace(password, "***").replace(unquote(password), "***")
    return text


def sqlite_path(url: str) -> Path:
    """The database file of a sqlite:/// URL, without its query (which may hold a password)."""
    return Path(urlsplit(url).path.removeprefix("/"))


def url_scheme(url: str, forms: str) -> str:
    """The scheme of ``url`` without its driver (postgresql+psycopg: postgresql); ConfigError
    naming the fault and ``forms``, the URLs expected, when ``url`` cannot be parsed. A password
    holding a character that URLs reserve is refused before any library reads it: each library
    splits such a URL its own way, and quotes the pieces (parts of the password) in its errors."""
    span = _password_span(url)
    if span is not None and UNENCODED.search(url[span[0]:span[1]]):
        raise ConfigError(f"malformed URL '{redact(url)}': its password holds a character URLs reserve; "
                          f"percent-encode / ? # @ % as %2F %3F %23 %40 %25; use {forms}")
    try:
        parts = urlsplit(url)
        _ = parts.port  # parsed on access: 'host:abc' fails here
    except ValueError:  # its text quotes the URL's parts unmasked
        raise ConfigError(f"malformed URL '{redact(url)}' (its host or port cannot be read); use {forms}") from None
    return parts.scheme.split("+")[0]


def default_storage() -> str:
    return str(RESULTS / "optuna" / "journal.log")


def is_database(url: str) -> bool:
    return "://" in url


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
    folder = unwritable_folder((sqlite_path(url) if scheme == "sqlite" else Path(url)).parent)
    if folder is not None:
        raise ConfigError(f"cannot write the Optuna storage {redact(url)} ({folder} is not a folder you can "
                          "write to); pass a path in a folder you can write to")


def unwritable_folder(folder: Path) -> Path | None:
    """None when files can be made in ``folder``, or in the nearest folder above it that exists (where
    it would be made); else that folder. Creates nothing that stays."""
    while not folder.exists():
        folder = folder.parent
    try:  # a file made and removed at once: permissions alone do not tell (root, /proc, a read-only mount)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError:
        return folder
    return None


def _scheme(url: str) -> str:
    scheme = url_scheme(url, STORAGE_URLS)
    if scheme not in ("postgresql", "sqlite"):
        raise ConfigError(f"unsupported storage '{redact(url)}': use {STORAGE_URLS}")
    return scheme


def _database(url: str, heartbeat: int) -> optuna.storages.RDBStorage:
    from sqlalchemy.exc import SQLAlchemyError

    scheme = _scheme(url)
    connect_args = {"connect_timeout": CONNECT_TIMEOUT_SECONDS} if scheme == "postgresql" else {}
    try:
        with known_heartbeat_warnings():
            storage = optuna.storages.RDBStorage(
                url, engine_kwargs={"connect_args": connect_args, "pool_pre_ping": True}, heartbeat_interval=heartbeat,
                grace_period=STALE_AFTER_HEARTBEATS * heartbeat,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES))
    except SQLAlchemyError as exc:
        raise ConfigError(_explain(url, exc)) from None
    wait_out_restarts(storage.engine, url, reached=True)  # Optuna connected to set up its tables
    return storage


def wait_out_restarts(engine, url: str, reached: bool = False) -> None:
    """Makes ``engine`` wait for its server to come back, for up to OUTAGE_SECONDS, when it cannot
    connect to a server it has reached before, instead of failing the worker's call (one line
    says so). With pool_pre_ping, a pooled connection that the restart cut is replaced at its next
    use, so a study's calls wait out a restart and go on. A server never reached fails at once, as
    the checks before a command promise."""
    from sqlalchemy import event

    @event.listens_for(engine, "do_connect")
    def connect(dialect, connection_record, cargs, cparams):
        nonlocal reached
        deadline, said = time.monotonic() + OUTAGE_SECONDS, False
        while True:
            try:
                connection = dialect.connect(*cargs, **cparams)
                reached = True
                return connection
            except dialect.loaded_dbapi.OperationalError:
                if not reached or time.monotonic() > deadline:
                    raise
                if not said:
                    said = True
                    print(f"the database at {redact(url)} does not answer; waiting up to {OUTAGE_SECONDS} s for "
                          "it to come back", file=sys.stderr, flush=True)
                time.sleep(1)


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


def check_database(url: str, role: str) -> None:
    """Connects to a PostgreSQL ``url`` once, raising ConfigError with what to check if that fails."""
    if not urlsplit(url).scheme.startswith("postgresql"):
        return
    from sqlalchemy.exc import SQLAlchemyError

    try:
        with _lock_engine(url).connect():
            pass
    except SQLAlchemyError as exc:
        raise ConfigError(_explain(url, exc, role)) from None


def has_table(url: str, table: str) -> bool:
    """Whether the PostgreSQL database at ``url`` holds ``table`` (after :func:`check_database`)."""
    from sqlalchemy import inspect

    return inspect(_lock_engine(url)).has_table(table)


def _explain(url: str, exc: Exception, role: str = "Optuna storage") -> str:
    """A database error as what went wrong and what to check, without the password."""
    parts = urlsplit(url)
    where = f"{parts.hostname or 'localhost'}:{parts.port or 5432}"
    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    if parts.scheme.startswith("sqlite"):
        return (f"cannot open the {role} {redact(url)} ({detail}); pass a sqlite:///PATH in a folder you can "
                "write to")
    if "password authentication failed" in detail:
        return (f"the {role} at {where} refused user '{parts.username}': wrong password; check the "
                "password in the URL, PGPASSWORD or ~/.pgpass")
    if "does not exist" in detail:
        return f"the {role} at {where}: {detail}; create it (createdb) or fix the URL"
    return (f"cannot reach the {role} {redact(url)} ({detail}); check that PostgreSQL runs on {where} "
            "and accepts connections from this machine (listen_addresses, pg_hba.conf, firewall)")


@contextlib.contextmanager
def ask_lock(url: str):
    """Serialises 'count the trials, then ask for one' between every worker of a storage, so
    that together they run exactly the requested number: a PostgreSQL advisory lock for a
    database that many machines share, a file lock beside a journal or SQLite file."""
    if urlsplit(url).scheme.startswith("postgresql"):
        from sqlalchemy import text

        with _lock_engine(url).connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": ASK_LOCK_KEY})
            try:
                yield
            finally:
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


@functools.cache
def _lock_engine(url: str):
    from sqlalchemy import create_engine

    engine = create_engine(url, connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS}, pool_pre_ping=True)
    wait_out_restarts(engine, url)
    return engine


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
        while True:
            storage.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
