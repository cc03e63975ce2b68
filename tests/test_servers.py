"""Servers that are dead, refuse us or are named wrong: every command that reaches MLflow or an
Optuna storage fails in seconds with one line naming the host, never with a traceback, a
password or a store created as a side effect; and the MLflow server that `bench ui` starts
ends with it. Real processes, a real PostgreSQL (tests/test_scale_out.py's), no mocks."""

from __future__ import annotations

import http.server
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.connections import has_table, redact
from tests.helpers import BENCH, PASSWORD, clean_env, free_port

SECRET = "Tr0ub4dor-SECRET"
RUN_ID = "0123456789abcdef0123456789abcdef"
COMMANDS = {
    "leaderboard": (["leaderboard"], "--tracking-uri"),
    "ui": (["ui", "--study", "S"], "--tracking-uri"),
    "doctor": (["doctor", RUN_ID], "--tracking-uri"),
    "run": (["run", "--variant", "gan", "--study", "quick"], "--tracking-uri"),
    "server": (["server"], "--backend-store-uri"),
    "perf": (["perf"], "--parallel-storage"),
}
"""Each command that reaches a store: its arguments, and the option that names the store."""
DATABASE_ONLY = {"server", "perf"}
"""Commands whose URL names a database, never a tracking server."""
READ_ONLY = ("leaderboard", "ui", "doctor")
FAULTS = ("dead server", "dead postgres", "wrong password")
MALFORMED = ("http://host:abc", "postgresql://u@127.0.0.1:notaport/db", "ftp://x", "http://")


def command_line(command: str, uri: str | None = None) -> list[str]:
    arguments, option = COMMANDS[command]
    return arguments + ([option, uri] if uri is not None else [])


def faulty(fault: str, postgres) -> tuple[str, str]:
    """(a URL with ``fault``, the host:port that its error must name)."""
    if fault == "wrong password":
        return postgres.url("x", password=SECRET), f"127.0.0.1:{postgres.port}"
    host = f"127.0.0.1:{free_port()}"
    if fault == "dead server":
        return f"http://{host}", host
    return f"postgresql://bench:{SECRET}@{host}/x", host


def assert_one_line_error(stderr: str, output: str, host: str, seconds: float) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    assert host in lines[0], lines[0]
    assert SECRET not in output and "Traceback" not in output, output
    assert seconds < 10, f"{seconds:.1f} s: {lines[0]}"


@pytest.fixture
def empty_folder(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.mark.e2e
@pytest.mark.parametrize("command, fault", [(command, fault) for command in COMMANDS for fault in FAULTS
                                            if not (command in DATABASE_ONLY and fault == "dead server")])
def test_each_command_fails_fast_on_a_dead_or_refusing_store(command, fault, postgres, empty_folder):
    uri, host = faulty(fault, postgres)
    started = time.monotonic()
    result = CliRunner().invoke(main, command_line(command, uri))
    assert result.exit_code == 2, result.output
    assert_one_line_error(result.stderr, result.output, host, time.monotonic() - started)
    assert not (empty_folder / "results" / "mlflow.db").exists()


@pytest.mark.e2e
@pytest.mark.parametrize("command, fault", [
    ("leaderboard", "dead server"), ("leaderboard", "dead postgres"), ("ui", "dead server"),
    ("doctor", "dead postgres"), ("run", "wrong password"), ("server", "wrong password"), ("perf", "dead postgres")])
def test_as_a_process_within_ten_seconds_start_included(command, fault, postgres, tmp_path):
    uri, host = faulty(fault, postgres)
    started = time.monotonic()
    done = subprocess.run([BENCH, *command_line(command, uri)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env=clean_env())
    seconds = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    assert_one_line_error(done.stderr, done.stdout + done.stderr, host, seconds)
    assert not (tmp_path / "results" / "mlflow.db").exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_a_malformed_url_is_one_line(command, empty_folder):
    for uri in MALFORMED:
        result = CliRunner().invoke(main, command_line(command, uri))
        assert result.exit_code == 2, result.output
        [line] = result.stderr.strip().splitlines()
        assert line.startswith(("Error: malformed URL", "Error: unsupported")) and uri in line, line


@pytest.mark.e2e
@pytest.mark.parametrize("command", READ_ONLY)
def test_read_only_commands_create_no_store(command, postgres, empty_folder):
    result = CliRunner().invoke(main, command_line(command))  # the default store, results/mlflow.db
    assert result.exit_code == 2 and "no MLflow store at sqlite:///" in result.stderr, result.output
    assert not (empty_folder / "results").exists()

    empty = postgres.database(f"empty_{command}")
    result = CliRunner().invoke(main, command_line(command, empty))
    assert result.exit_code == 2 and f"no MLflow store at {redact(empty)} yet" in result.stderr, result.output
    assert not has_table(empty, "experiments")


def test_redact_masks_passwords_in_userinfo_and_query():
    assert redact("postgresql://bench:pw@db:5432/x?sslmode=require&password=pw&api_key=k") == \
        "postgresql://bench:***@db:5432/x?sslmode=require&password=***&api_key=***"
    assert redact("http://host:abc/?token=t") == "http://host:abc/?token=***"  # malformed: still masked
    assert redact("postgresql://u:p@ss@db/x") == "postgresql://u:***@db/x"  # '@' in the password
    assert redact("sqlite:///results/mlflow.db?timeout=5") == "sqlite:///results/mlflow.db?timeout=5"


@pytest.mark.e2e
def test_a_password_in_the_storage_query_reaches_no_message_param_or_tag(postgres, tmp_path):
    """A `bench run` of a study that is already finished: its parent run and params, no training."""
    postgres.database("finished")
    study = optuna.create_study(storage=postgres.url("finished"), study_name="quick:gan:fashion-mnist")
    study.add_trial(optuna.trial.create_trial(
        params={"lr": 1e-4}, distributions={"lr": optuna.distributions.FloatDistribution(5e-5, 1e-3, log=True)},
        value=50.0))
    storage = f"postgresql://bench@127.0.0.1:{postgres.port}/finished?password={PASSWORD}"
    done = subprocess.run([BENCH, "run", "--variant", "gan", "--study", "quick", "--trials", "1", "--storage",
                           storage], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=clean_env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert PASSWORD not in done.stdout + done.stderr
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    [parent] = client.search_runs([client.get_experiment_by_name("quick").experiment_id])
    assert parent.data.params["storage"] == f"postgresql://bench@127.0.0.1:{postgres.port}/finished?password=***"
    assert not any(PASSWORD in value for value in [*parent.data.params.values(), *parent.data.tags.values()])


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A folder whose results/mlflow.db holds study S, with no runs yet."""
    folder = tmp_path_factory.mktemp("store")
    (folder / "results").mkdir()
    mlflow.MlflowClient(f"sqlite:///{folder / 'results' / 'mlflow.db'}").create_experiment(
        "S", tags={"bench.study": "S", "mlflow.experimentKind": "custom_model_development"})
    return folder


def test_an_empty_store_has_no_finished_trials(store, monkeypatch):
    monkeypatch.chdir(store)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(main, ["leaderboard"])
    assert result.exit_code == 2 and "no finished trials recorded yet" in result.stderr


def processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, process group, state) of every process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue
        state, ppid, pgrp = stat.rpartition(")")[2].split()[:3]  # the name in (...) may hold spaces
        table[int(entry.name)] = (int(ppid), int(pgrp), state)
    return table


def descendants(pid: int) -> set[int]:
    table, family, frontier = processes(), set(), {pid}
    while frontier:
        frontier = {child for child, (parent, _, _) in table.items() if parent in frontier} - family
        family |= frontier
    return family


def accepts(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.server
@pytest.mark.e2e
def test_bench_ui_stops_the_mlflow_server_and_its_children_on_sigterm(store):
    port = free_port()
    ui = subprocess.Popen([BENCH, "ui", "--study", "S", "--port", str(port)], cwd=store, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True, start_new_session=True, env=clean_env())
    groups: set[int] = set()
    try:
        assert f"http://127.0.0.1:{port}/#/experiments/" in ui.stdout.readline()
        deadline = time.monotonic() + 90  # MLflow's server starts slowly on a small CPU
        while not accepts(port):
            assert ui.poll() is None and time.monotonic() < deadline, "the MLflow UI never listened"
            time.sleep(0.5)
        family = descendants(ui.pid)
        groups = {processes()[pid][1] for pid in family}
        assert family and ui.pid not in groups, "MLflow runs in a process group of its own"
        ui.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        while accepts(port):
            assert time.monotonic() - stopped < 5, "the port is still taken 5 s after SIGTERM"
            time.sleep(0.1)
        assert ui.wait(timeout=10) == 128 + signal.SIGTERM
        left = {pid: info for pid, info in processes().items()
                if (pid in family or info[1] in groups) and info[2] != "Z"}
        assert not left, f"left running: {left}"
    finally:
        for group in [ui.pid, *groups]:  # on failure: what this test started, nothing else
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
        ui.wait()


class HalfAlive(http.server.BaseHTTPRequestHandler):
    """Accepts and answers, but not as a working MLflow server does; ``self.server.mode`` says how."""

    def do_GET(self) -> None:
        mode, path = self.server.mode, self.path.split("?")[0]
        if mode == "another program" or (mode == "error pages" and path == "/health"):
            self.answer(200, "text/html", b"<html>a web page</html>")
        elif mode == "answers {} to everything":
            self.answer(200, "application/json", b"{}")
        elif mode == "fails after the checks" and path == "/health":
            self.answer(200, "text/plain", b"OK")
        elif mode == "fails after the checks" and path == "/api/2.0/mlflow/experiments/search":
            self.answer(200, "application/json", b'{"experiments": [{"experiment_id": "0", "name": "Default"}]}')
        else:
            self.answer(500, "text/plain", b"Internal Server Error")

    do_POST = do_GET

    def answer(self, status: int, kind: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize("mode", ["error pages", "another program", "answers {} to everything",
                                  "fails after the checks"])
@pytest.mark.parametrize("command", READ_ONLY + ("run",))
def test_a_server_that_answers_but_not_as_mlflow_is_one_line_without_the_password(command, mode, empty_folder,
                                                                                  monkeypatch):
    """Half-alive servers: HTTP 500 everywhere but its health page, another program's pages, one that answers
    every request with {} (refused at its first answer), or a server that passes the checks and then fails
    (MLflow's retries turned off here: they would take half a minute)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HalfAlive)
    server.mode = mode
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = f"127.0.0.1:{server.server_address[1]}"
    try:
        started = time.monotonic()
        result = CliRunner().invoke(main, command_line(command, f"http://bench:{SECRET}@{host}"))
        seconds = time.monotonic() - started
    finally:
        server.shutdown()
        server.server_close()
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and SECRET not in result.output, result.output
    assert seconds < 10 and (mode == "fails after the checks" or host in lines[0]), (seconds, lines[0])


@pytest.mark.parametrize("where, says", [("/proc/nope.db", "/proc is not a folder you can write to"),
                                         ("folder", "is not a file"), ("junk.db", "file is not a database")])
def test_bench_server_on_an_unusable_sqlite_store_fails_at_once(where, says, empty_folder):
    (empty_folder / "folder").mkdir()
    (empty_folder / "junk.db").write_text("not a database\n")
    path = where if where.startswith("/") else empty_folder / where
    started = time.monotonic()
    result = CliRunner().invoke(main, ["server", "--backend-store-uri", f"sqlite:///{path}", "--port",
                                       str(free_port())])
    assert result.exit_code == 2, result.output
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("Error: ") and says in line and "MLflow backend store" in line, line
    assert time.monotonic() - started < 5


@pytest.mark.e2e
def test_bench_server_on_an_unusable_sqlite_store_fails_within_ten_seconds_as_a_process(tmp_path):
    started = time.monotonic()
    done = subprocess.run([BENCH, "server", "--backend-store-uri", "sqlite:////proc/nope.db", "--port",
                           str(free_port())], cwd=tmp_path, capture_output=True, text=True, timeout=60, env=clean_env())
    seconds = time.monotonic() - started
    [line] = done.stderr.strip().splitlines()
    assert done.returncode == 2 and line.startswith("Error: cannot create the MLflow backend store"), done.stderr
    assert seconds < 10, f"{seconds:.1f} s"
    print(f"\nbench server on sqlite:////proc/nope.db: exit 2 in {seconds:.1f} s")


def command_lines() -> dict[int, str]:
    """pid -> command line of every process on this machine, as `ps` shows them to every user."""
    lines = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                lines[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
    return lines


def serve_and_stop(command: list[str], port: int, cwd: Path,
                   env: dict[str, str]) -> tuple[dict[int, str], subprocess.CompletedProcess]:
    """Runs `bench COMMAND` with ``env`` added to its environment until its MLflow server listens on
    ``port``; returns the command line of each process of its family (read then), and how it ended
    after SIGTERM."""
    process = subprocess.Popen([BENCH, *command, "--port", str(port)], cwd=cwd, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True, env=clean_env() | env)
    try:
        deadline = time.monotonic() + 120  # MLflow's server starts slowly on a small CPU
        while not accepts(port):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.5)
        family = descendants(process.pid) | {process.pid}
        lines = {pid: line for pid, line in command_lines().items() if pid in family}
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return lines, subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.mark.server
@pytest.mark.e2e
def test_bench_server_and_ui_keep_the_password_off_every_command_line_and_exit_143_on_sigterm(postgres, tmp_path):
    """The user keeps the password off bench's own command line (the URL in the environment); bench keeps it
    off its children's."""
    store = postgres.database("ps_shows")
    assert PASSWORD in store
    server_lines, server = serve_and_stop(["server", "--artifacts", str(tmp_path / "artifacts")], free_port(),
                                          tmp_path, {"MLFLOW_BACKEND_STORE_URI": store})
    ui_lines, ui = serve_and_stop(["ui"], free_port(), tmp_path, {"MLFLOW_TRACKING_URI": store})
    for lines, done in ((server_lines, server), (ui_lines, ui)):
        assert any("mlflow" in line for line in lines.values()), lines  # MLflow's processes were read
        assert not [line for line in lines.values() if PASSWORD in line], lines
        assert done.returncode == 143, done.stderr[-2000:]
        assert "stopped by SIGTERM" in done.stderr and "SIGINT" not in done.stderr, done.stderr[-2000:]
        assert "Traceback" not in done.stderr and PASSWORD not in done.stdout + done.stderr
    assert has_table(store, "experiments")  # the server used the store it was given
