"""The URLs of the stores bench writes to (MLflow's and Optuna's), read and checked, and the
connections to them.

A URL's secrets are masked in every message and record (:func:`redact`, :func:`masked`); a URL
that does not parse, a server that does not answer and a database that refuses us are each one
line, in seconds, before any library retries them for minutes or prints a traceback. A database
server that goes away mid-command is waited for (:func:`wait_out_restarts`), and a stop signal
ends the wait at once.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Iterable
from urllib.parse import unquote, urlsplit

from bench.errors import BenchError, ConfigError, Interrupted
from bench.locations import unwritable_folder

UNENCODED = re.compile(r"[/?#@]|%(?![0-9A-Fa-f]{2})")
"""What a URL's password may not hold as it is (RFC 3986): these, and a % that does not begin an escape."""
SECRET_QUERY = re.compile(r"((?:^|[&;])[^=&;#]*(?:pass|pwd|secret|token|key)[^=&;#]*=)[^&;#]*", re.IGNORECASE)
"""Query parameters whose values are secrets: password=, sslpassword=, pwd=, token=, api_key=, ..."""
CONNECT_TIMEOUT_SECONDS = 5
POSTGRES_CONNECT_ARGS = {"connect_timeout": CONNECT_TIMEOUT_SECONDS, "keepalives": 1, "keepalives_idle": 10,
                         "keepalives_interval": 5, "keepalives_count": 3, "tcp_user_timeout": 30_000}
"""libpq's settings for every connection to PostgreSQL: a server that does not answer fails the
attempt in CONNECT_TIMEOUT_SECONDS, and an open connection whose server falls silent (a network
cut, not a restart) ends within about 30 s, waiting or sending, instead of after the kernel's
15 minutes of retransmissions; then the outage is waited out as a restart is."""
OUTAGE_SECONDS = 120
"""How long a command waits for a database server it has reached before to come back (a restart, a
failover): one deadline per outage, shared by every call and thread that meets it."""
STORE_URIS = "postgresql://USER@HOST:PORT/DB or sqlite:///PATH"


def is_database(url: str) -> bool:
    return "://" in url


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


def check_server(uri: str) -> None:
    """Fails in seconds, not after MLflow's minutes of retries, when no tracking server answers, or when
    what answers is not a working one: its health page must say OK, and one call of its API must answer
    as MLflow's does (an error page, another program on the port, one that answers anything with {} or
    a server whose database is gone would fail every later request, slowly)."""
    import requests

    parts = urlsplit(uri)
    for what, value in (("user name", parts.username), ("password", parts.password)):
        try:
            unquote(value or "").encode("latin-1")  # HTTP basic authentication carries Latin-1 only
        except UnicodeEncodeError:
            raise ConfigError(f"the {what} in {redact(uri)} holds characters HTTP basic authentication cannot carry "
                              "(only Latin-1 ones); use one without them") from None
    base = uri.rstrip("/")
    try:
        health = requests.get(f"{base}/health", timeout=5)
        answer = requests.get(f"{base}/api/2.0/mlflow/experiments/search", params={"max_results": 1}, timeout=5) \
            if health.status_code == 200 and health.text.strip() == "OK" else None
    except requests.RequestException as exc:
        raise ConfigError(f"cannot reach the MLflow tracking server at {redact(uri)} ({type(exc).__name__}); "
                          "start it (bench server --backend-store-uri ...) or check --tracking-uri") from None
    if answer is None:
        raise ConfigError(f"the server at {redact(uri)} is not an MLflow tracking server (its /health page answered "
                          f"HTTP {health.status_code}, {_looks(health)}, not OK); check --tracking-uri")
    if not (answer.status_code == 200 and _experiments_answer(answer)):
        raise ConfigError(f"the server at {redact(uri)} is not a working MLflow tracking server (its experiments "
                          f"API answered HTTP {answer.status_code}, {_looks(answer)}); check --tracking-uri, or the "
                          "server's log")


def _looks(response) -> str:
    """What a response holds, in a few words: its type and length (never its text, which may be anything)."""
    return f"{response.headers.get('content-type', 'no type')}, {len(response.content)} bytes"


def _experiments_answer(response) -> bool:
    """Whether ``response`` is what MLflow answers to experiments/search: a JSON object holding nothing but
    its list of experiments (each with an id and a name; the list is left out when there are none) and a
    page token."""
    try:
        body = response.json()
    except ValueError:  # not JSON
        return False
    if not isinstance(body, dict) or not set(body) <= {"experiments", "next_page_token"}:
        return False
    experiments = body.get("experiments", [])
    return isinstance(experiments, list) and all(
        isinstance(experiment, dict) and "experiment_id" in experiment and "name" in experiment
        for experiment in experiments)


def check_store(uri: str, *, create: bool, role: str = "MLflow store") -> None:
    """Fails in seconds, with one line naming the host and what to check, on a malformed URL, a
    database that refuses us and, unless ``create``, a store that does not exist yet."""
    scheme = url_scheme(uri, STORE_URIS)
    if scheme == "postgresql":
        check_database(uri, role)
        if create or has_table(uri, "experiments"):
            return
    elif scheme == "sqlite":
        path = sqlite_path(uri)
        if create:
            check_sqlite(uri, path, role)
            path.parent.mkdir(parents=True, exist_ok=True)  # SQLite creates the file, not its folder
            return
        if path.is_file():
            return
    else:
        raise ConfigError(f"unsupported {role} '{redact(uri)}': use {STORE_URIS}")
    raise ConfigError(f"no {role} at {redact(uri)} yet; run `bench run --variant V --study S` first, "
                      "or pass the --tracking-uri it used")


def check_sqlite(uri: str, path: Path, role: str) -> None:
    """Fails at once, instead of after MLflow's retries, when the SQLite file at ``path`` could not be
    created (a folder that is not one, or that cannot be written to) or is there but is not a database."""
    try:
        exists = path.exists()
        if exists and not path.is_file():
            raise ConfigError(f"the {role} {redact(uri)} is not a file (a folder or a device); pass sqlite:///PATH "
                              "of a database file")
    except OSError as exc:  # a name too long, a path through a file
        raise ConfigError(f"cannot use the {role} {redact(uri)} ({exc.strerror}); pass sqlite:///PATH of a "
                          "database file") from None
    if not exists:
        folder = unwritable_folder(path.parent)
        if folder is not None:
            raise ConfigError(f"cannot create the {role} {redact(uri)} ({folder} is not a folder you can write "
                              "to); pass sqlite:///PATH in a folder you can write to")
        return
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)) as database:
            database.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot open the {role} {redact(uri)} ({exc}); pass sqlite:///PATH of an intact "
                          "database, or of a new one") from None


def check_database(url: str, role: str) -> None:
    """Connects to a PostgreSQL ``url`` once, raising ConfigError with what to check if that fails."""
    if not urlsplit(url).scheme.startswith("postgresql"):
        return
    from sqlalchemy.exc import SQLAlchemyError

    try:
        with database_engine(url).connect():
            pass
    except SQLAlchemyError as exc:
        raise ConfigError(explain_database_error(url, exc, role)) from None


def has_table(url: str, table: str) -> bool:
    """Whether the PostgreSQL database at ``url`` holds ``table`` (after :func:`check_database`)."""
    from sqlalchemy import inspect

    return inspect(database_engine(url)).has_table(table)


def explain_database_error(url: str, exc: Exception, role: str = "Optuna storage") -> str:
    """A database error as what went wrong and what to check, without the password."""
    parts = urlsplit(url)
    where = f"{parts.hostname or 'localhost'}:{parts.port or 5432}"
    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    if parts.scheme.startswith("sqlite"):
        return (f"cannot open the {role} {redact(url)} ({detail}); pass a sqlite:///PATH of an intact database, or "
                "of a new one in a folder you can write to")
    if "password authentication failed" in detail:
        return (f"the {role} at {where} refused user '{parts.username}': wrong password; check the "
                "password in the URL, PGPASSWORD or ~/.pgpass")
    if "does not exist" in detail:
        return f"the {role} at {where}: {detail}; create it (createdb) or fix the URL"
    return (f"cannot reach the {role} {redact(url)} ({detail}); check that PostgreSQL runs on {where} "
            "and accepts connections from this machine (listen_addresses, pg_hba.conf, firewall)")


@functools.cache
def database_engine(url: str):
    """One pooled SQLAlchemy engine per PostgreSQL URL (checks, advisory locks), which waits out restarts."""
    from sqlalchemy import create_engine

    engine = create_engine(url, connect_args=POSTGRES_CONNECT_ARGS, pool_pre_ping=True)
    wait_out_restarts(engine, url)
    return engine


class DatabaseAway(BenchError):
    """A database server that answered before stayed away past the outage's deadline."""


def wait_out_restarts(engine, url: str, reached: bool = False) -> None:
    """Makes ``engine`` wait for its server to come back when it cannot connect to a server it has
    reached before (a restart, a failover), instead of failing the call. An outage is waited out
    once: its first call sets a deadline OUTAGE_SECONDS away and says so in one line, and every
    later call and thread of the command waits for that same deadline (past it, each fails at once
    with :class:`DatabaseAway`) until a connection succeeds again. SIGINT or SIGTERM ends every wait
    at once (:class:`Interrupted`), and a call made after one fails at once instead of waiting. With
    pool_pre_ping, a pooled connection that the restart cut is replaced at its next use, so a
    study's calls wait out a restart and go on. A server never reached fails at once, as the checks
    before a command promise."""
    from sqlalchemy import event

    watch_stop_signals()

    @event.listens_for(engine, "do_connect")
    def connect(dialect, connection_record, cargs, cparams):
        nonlocal reached
        while True:
            try:
                connection = dialect.connect(*cargs, **cparams)
            except dialect.loaded_dbapi.OperationalError:
                if not reached:
                    raise
                _OUTAGE.wait(url)
                continue
            reached = True
            _OUTAGE.over()
            return connection


class _Outage:
    """The outage under way, if any: the deadline that every wait for it shares."""

    def __init__(self):
        self.lock = threading.Lock()
        self.deadline: float | None = None

    def wait(self, url: str) -> None:
        """Returns after a pause to retry in; Interrupted after a stop signal, DatabaseAway past the deadline."""
        parts = urlsplit(url)
        where = f"{parts.hostname or 'localhost'}:{parts.port or 5432}"
        if stop_signal():  # the command is ending: nothing more is waited for
            raise Interrupted(stop_signal(), f"while the database at {where} did not answer")
        with self.lock:
            now = time.monotonic()
            if self.deadline is None:
                self.deadline = now + OUTAGE_SECONDS
                print(f"the database at {redact(url)} does not answer; waiting up to {OUTAGE_SECONDS} s for it to "
                      "come back (Ctrl-C stops)", file=sys.stderr, flush=True)
            left = self.deadline - now
        if left <= 0:
            raise DatabaseAway(f"the database at {where} did not come back within {OUTAGE_SECONDS} s; run the same "
                               "command again once it answers: the study goes on from its trials' checkpoints")
        if _STOPPED.wait(min(1.0, left)):
            raise Interrupted(stop_signal(), f"while the database at {where} did not answer")

    def over(self) -> None:
        if self.deadline is not None:
            with self.lock:
                self.deadline = None


_OUTAGE = _Outage()
_STOPPED = threading.Event()
_STOP_SIGNUM = [0]
_WATCHING = [False]


def stop_signal() -> int:
    """SIGINT or SIGTERM if one has reached this process since :func:`watch_stop_signals`, else 0."""
    return _STOP_SIGNUM[0] if _STOPPED.is_set() else 0


def watch_stop_signals() -> None:
    """Lets waits see SIGINT and SIGTERM whatever handler takes them (the trainer's, which checkpoints
    first, or the CLI's): Python writes the number of each signal it handles to a pipe
    (signal.set_wakeup_fd), which a thread reads. Only the main thread can set this up; where
    another wakeup pipe is set (an event loop's), that one stays and waits end at their deadline."""
    if _WATCHING[0] or threading.current_thread() is not threading.main_thread():
        return
    read, write = os.pipe()
    os.set_blocking(write, False)
    try:
        previous = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    except ValueError:
        previous = None
    if previous != -1:
        if previous is not None:
            signal.set_wakeup_fd(previous)
        os.close(read)
        os.close(write)
        return
    _WATCHING[0] = True
    threading.Thread(target=_read_signals, args=(read,), name="bench-stop-signals", daemon=True).start()


def _read_signals(pipe: int) -> None:
    while True:
        for signum in os.read(pipe, 64):
            if signum in (signal.SIGINT, signal.SIGTERM) and not _STOPPED.is_set():
                _STOP_SIGNUM[0] = signum
                _STOPPED.set()
