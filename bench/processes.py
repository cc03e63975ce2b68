"""Processes bench starts and watches: MLflow servers it runs in the foreground, study workers, and
which host and process own a run.

A child must not outlive the `bench` command that started it, even one killed with -9 (Linux:
PR_SET_PDEATHSIG), and Ctrl-C or SIGTERM must reach it exactly once, through bench.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, NoReturn

from bench.errors import BenchError, ConfigError, Interrupted

HOST = socket.gethostname()
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
SERVER_GRACE_SECONDS = 3
"""How long a stopped MLflow server may take to shut down before it is killed."""
PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM where no handler saves work first: raised as Ctrl-C raises KeyboardInterrupt,
    naming the signal that came."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_promptly(code: int) -> NoReturn:
    """Ends the process with ``code`` once its work is saved and said: the exit handlers the libraries
    registered run and the streams are flushed, but the interpreter's teardown of torch, MLflow and
    their threads, seconds of it, is skipped."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


_REDELIVERY: list[threading.Timer] = []
REDELIVER_SECONDS = 1.0


def raise_stopped(signum: int, frame) -> None:
    """Raises :class:`Stopped`. Python drops what a handler raises while it runs a callback whose errors
    it ignores (a weakref's during an import, a ``__del__``), and the command would go on: so unless
    the stop is seen (:func:`stop_seen`) within REDELIVER_SECONDS, the signal is delivered again."""
    if not _REDELIVERY:
        timer = threading.Timer(REDELIVER_SECONDS, _deliver_again, args=(signum,))
        timer.daemon = True
        timer.start()
        _REDELIVERY.append(timer)
    raise Stopped(signum)


def _deliver_again(signum: int) -> None:
    _REDELIVERY.clear()  # a delivery lost again is delivered once more
    os.kill(os.getpid(), signum)


def stop_seen() -> None:
    """The command has caught its Stopped: no second delivery (see :func:`raise_stopped`)."""
    while _REDELIVERY:
        _REDELIVERY.pop().cancel()


def stopping_on_signals() -> contextlib.AbstractContextManager:
    """SIGINT and SIGTERM raise :class:`Stopped` inside the block (the main thread only: elsewhere
    Python lets no handler be set); handlers set inside it (the trainer's) take over while they are set."""
    if threading.current_thread() is not threading.main_thread():
        return contextlib.nullcontext()
    return handling_stop_signals(raise_stopped)


@contextlib.contextmanager
def handling_stop_signals(handler: Callable | int):
    """SIGINT and SIGTERM handled by ``handler`` (a function, or signal.SIG_IGN) inside the block,
    as before it after it."""
    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def parent_death_signal(signum: int) -> Callable[[], None]:
    """What makes the calling process get ``signum`` when the thread that started it ends, even by -9
    (Linux; elsewhere nothing). Resolved before a fork, so that a child between fork and exec only
    makes the call."""
    if sys.platform != "linux":
        return lambda: None
    return functools.partial(ctypes.CDLL(None).prctl, PR_SET_PDEATHSIG, signum)


def die_with_parent() -> None:
    """A study worker ends when the `bench run` that started it is killed, even by -9, instead of
    training on unseen (its trial is then failed by the next `bench run`)."""
    parent_death_signal(signal.SIGKILL)()


def serve(command: str, *args: str, store: str) -> None:
    """Runs `mlflow COMMAND ARGS` (ui, server) on the backend store ``store`` until it ends, or until
    bench gets SIGINT (Ctrl-C) or SIGTERM; then stops it and every process it started (MLflow runs
    its web server as a child process), so that none outlives bench holding the port, and raises
    :class:`Interrupted` naming the signal. The store's URL, which may hold a password, reaches
    MLflow through the environment (MLFLOW_BACKEND_STORE_URI, which MLflow passes on to its web
    server the same way), never on a command line, where `ps` shows it to every user of the machine."""
    sys.stdout.flush()
    # The job runner serves MLflow's GenAI features; without it the server starts in seconds, not tens.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_BACKEND_STORE_URI": store}
    stopped: Stopped | None = None
    with handling_stop_signals(raise_stopped):
        try:
            # A process group of its own (start_new_session): a terminal's Ctrl-C reaches bench alone, which stops
            # the whole group. SIGTERM, not SIGKILL, when bench dies: MLflow passes it on to its web server, which
            # SIGKILL would leave running.
            server = subprocess.Popen([sys.executable, "-m", "mlflow", command, *args, "--workers", "1"], env=env,
                                      start_new_session=True, preexec_fn=parent_death_signal(signal.SIGTERM))
        except Stopped as exc:  # before it started: nothing to stop
            stop_seen()
            raise Interrupted(exc.signum, f"before mlflow {command} started") from None
        try:
            server.wait()
        except Stopped as exc:
            stop_seen()
            stopped = exc
        finally:
            stop_group(server)
    if stopped is not None:
        interrupted = Interrupted(stopped.signum, f"(mlflow {command} and its web server ended)")
        interrupted.then = "start it again with the same command"
        raise interrupted
    if server.returncode != 0:
        raise BenchError(f"mlflow {command} ended with exit status {server.returncode}; see its messages above "
                         "(a port already in use: pass another --port)")


def stop_group(process: subprocess.Popen, grace: float = SERVER_GRACE_SECONDS) -> None:
    """SIGTERM to the process group that ``process`` leads, then SIGKILL to whatever of it is
    left after ``grace`` seconds; returns when ``process`` has ended."""
    with handling_stop_signals(signal.SIG_IGN):  # a second Ctrl-C must not cut the stop short
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while group_alive(process) and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


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
