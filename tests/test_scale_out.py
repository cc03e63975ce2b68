"""Studies shared through PostgreSQL and an MLflow tracking server: a real PostgreSQL server
(Debian's, started on loopback for this module), a real `bench server`, real `bench run`
processes on real digits."""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import mlflow
import optuna
import pytest
import requests
from click.testing import CliRunner
from optuna.trial import TrialState

from bench.cli import main
from bench.ranking import leaderboard
from bench.storage import open_storage
from tests.helpers import BENCH, PASSWORD, clean_env, free_port, write_study

pytestmark = pytest.mark.e2e  # a real PostgreSQL server, `bench server` and `bench run` processes

def test_unreachable_or_refused_stores_fail_fast_with_the_host_and_the_fix(postgres, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    runner = CliRunner()
    closed = free_port()
    run = ["run", "--variant", "gan", "--study", "quick"]

    nobody = runner.invoke(main, run + ["--storage", f"postgresql://bench@127.0.0.1:{closed}/optuna"])
    assert nobody.exit_code == 2 and f"127.0.0.1:{closed}" in nobody.output
    assert "check that PostgreSQL runs" in nobody.output and "Traceback" not in nobody.output

    postgres.database("refused")
    refused = runner.invoke(main, run + ["--storage", postgres.url("refused", password="not-the-password")])
    assert refused.exit_code == 2 and "wrong password" in refused.output and "user 'bench'" in refused.output
    assert "not-the-password" not in refused.output

    no_server = runner.invoke(main, run + ["--tracking-uri", f"http://127.0.0.1:{closed}"])
    assert no_server.exit_code == 2 and f"MLflow tracking server at http://127.0.0.1:{closed}" in no_server.output

    bad_backend = runner.invoke(main, ["server", "--backend-store-uri", postgres.url("refused", password="nope")])
    assert bad_backend.exit_code == 2 and "MLflow backend store" in bad_backend.output


def answer(port: int, host: str) -> int:
    """The status of an MLflow API request to the server on ``port`` that names it ``host``."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/api/2.0/mlflow/experiments/search?max_results=1", headers={"Host": host})
        return connection.getresponse().status
    finally:
        connection.close()


def wait_for_http(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            assert time.monotonic() < deadline, f"{url} did not answer within {seconds} s"
            time.sleep(0.5)


def running_trial_of(study: optuna.Study, pid: int) -> optuna.trial.FrozenTrial | None:
    for trial in study.get_trials(states=(TrialState.RUNNING,)):
        if trial.user_attrs.get("worker", {}).get("pid") == pid and "mlflow_run_id" in trial.user_attrs:
            return trial
    return None


def requests_made(monkeypatch) -> list[str]:
    """The URL of every HTTP request this process makes from now on (MLflow's and bench's own)."""
    urls: list[str] = []
    send = requests.Session.request

    def request(self, method, url, *args, **kwargs):
        urls.append(url)
        return send(self, method, url, *args, **kwargs)

    monkeypatch.setattr(requests.Session, "request", request)
    return urls


@pytest.mark.server
def test_three_workers_on_postgres_and_a_tracking_server_survive_a_killed_worker(postgres, project_folder,
                                                                                  monkeypatch):
    host_a, host_b = project_folder("host-a"), project_folder("host-b")  # two share host A's folder
    study_file = write_study(host_a, "shared", steps=60, eval_every=30)
    storage = postgres.database("optuna")
    port = free_port()
    server = subprocess.Popen([BENCH, "server", "--backend-store-uri", postgres.database("mlflow"), "--artifacts",
                               str(host_a / "server-artifacts"), "--port", str(port)], cwd=host_a,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                              env=clean_env())
    tracking = f"http://127.0.0.1:{port}"
    command = [BENCH, "run", "--variant", "gan", "--study", str(study_file), "--trials", "4", "--storage", storage,
               "--tracking-uri", tracking, "--heartbeat", "2"]

    def start(folder: Path, seed: int) -> subprocess.Popen:
        # Each worker its own --seed, as on separate machines: the samplers then propose different points.
        return subprocess.Popen(command + ["--seed", str(seed)], cwd=folder, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True, env=clean_env())

    workers: list[subprocess.Popen] = []
    try:
        wait_for_http(f"{tracking}/health", 120)
        victim = start(host_a, 0)
        workers = [victim, start(host_a, 100), start(host_b, 200)]
        study = doomed = None
        deadline = time.monotonic() + 180
        while doomed is None and time.monotonic() < deadline:
            time.sleep(0.2)
            if study is None and (summaries := optuna.study.get_all_study_summaries(open_storage(storage))):
                study = optuna.load_study(study_name=summaries[0].study_name, storage=open_storage(storage))
            doomed = running_trial_of(study, victim.pid) if study is not None else None
        assert doomed is not None, "the victim never started a trial"
        os.killpg(victim.pid, signal.SIGKILL)  # at once: on a GPU, a 60-step trial is over in a second or two
        killed_at = time.time()
        victim.wait()
        outputs = [worker.communicate(timeout=300)[0] for worker in workers[1:]]
        assert [worker.returncode for worker in workers[1:]] == [0, 0], outputs

        trials = study.get_trials()
        assert len({trial.number for trial in trials}) == len(trials)
        complete = [trial for trial in trials if trial.state == TrialState.COMPLETE]
        assert len(complete) == 4
        assert [trial.number for trial in trials if trial.state == TrialState.FAIL] == [doomed.number]
        [retry] = [trial for trial in complete if trial.system_attrs.get("failed_trial") == doomed.number]
        assert retry.params == doomed.params and retry.user_attrs["seed"] == doomed.user_attrs["seed"]
        print(f"\nSIGKILL to the retried trial's start: {retry.datetime_start.timestamp() - killed_at:.1f} s")

        client = mlflow.MlflowClient(tracking)
        [experiment] = [e for e in client.search_experiments() if e.name == "shared"]
        runs = client.search_runs([experiment.experiment_id], max_results=1000)
        assert {run.info.status for run in runs} <= {"FINISHED", "FAILED", "KILLED"}
        by_id = {run.info.run_id: run for run in runs}
        killed_run = by_id[doomed.user_attrs["mlflow_run_id"]]
        # Whichever check sees the death first closes its run: the heartbeat going stale, or (another
        # worker on the victim's host) the victim's process being gone. Both must name the cause.
        reason = killed_run.data.tags["bench.end_reason"]
        assert (killed_run.info.status, killed_run.data.tags["bench.state"]) == ("KILLED", "retried")
        assert "queued to run again" in reason and ("heartbeats" in reason or
                                                       f"process {victim.pid}" in reason), reason
        assert by_id[retry.user_attrs["mlflow_run_id"]].data.tags["bench.retry_of"] == str(doomed.number)
        parents = [run for run in runs if run.data.tags["bench.kind"] == "study"]
        assert sorted(run.info.status for run in parents) == ["FINISHED", "FINISHED", "KILLED"]
        for run in runs:  # the password in --storage is nowhere in what MLflow recorded
            assert not any(PASSWORD in value for value in [*run.data.params.values(), *run.data.tags.values()])

        [row] = leaderboard(tracking, "shared").query("metric == 'fid_domain'").to_dict("records")
        assert (row["complete"], row["failed"], row["retried"]) == (4, 0, 1)  # the killed trial: retried, not failed

        requested = requests_made(monkeypatch)
        report = CliRunner().invoke(main, ["report", "--study", "shared", "--tracking-uri", tracking,
                                           "-o", str(host_b / "report.html")])
        assert report.exit_code == 0, report.output
        shown = (host_b / "report.html").read_text()
        assert re.search(rf"<td>{doomed.number}</td>\s*<td>stopped and retried</td>", shown), "the stop, in the report"
        assert sum(url.endswith("/health") for url in requested) == 1, "the server is checked once per command"
    finally:
        for process in [*workers, server]:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
        server.wait()


def wait_for_trial_folder(cwd: Path, seconds: float) -> None:
    """Until a trial of the study run in ``cwd`` has started training (its run folder holds config.json)."""
    deadline = time.monotonic() + seconds
    while not list(cwd.glob("results/studies/*/trial-*/config.json")):
        assert time.monotonic() < deadline, f"no trial started within {seconds} s"
        time.sleep(0.2)


def test_a_two_worker_study_waits_out_its_database_restarting_and_loses_no_trial(postgres, project_folder):
    folder = project_folder("database-restart")
    study_file = write_study(folder, "restarted", steps=60, eval_every=30)
    storage = postgres.database("restarted")
    run = subprocess.Popen([BENCH, "run", "--variant", "gan", "--study", str(study_file), "--trials", "4",
                            "--workers", "2", "--storage", storage, "--heartbeat", "3"], cwd=folder,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                           env=clean_env())
    try:
        wait_for_trial_folder(folder, 120)
        postgres.pg_ctl("-m", "fast", "stop")  # every connection cut, mid-trial
        time.sleep(4)  # down: the workers' heartbeats and calls find no server
        postgres.pg_ctl("start")
        back = time.monotonic()
        output = run.communicate(timeout=300)[0]
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 0, output
    assert "does not answer; waiting up to" in output and "Traceback" not in output
    assert PASSWORD not in output
    [summary] = optuna.study.get_all_study_summaries(open_storage(storage))
    trials = optuna.load_study(study_name=summary.study_name, storage=open_storage(storage)).get_trials()
    complete = [trial for trial in trials if trial.state == TrialState.COMPLETE]
    retried = {trial.system_attrs.get("failed_trial") for trial in complete}
    assert len(complete) == 4 and all(trial.number in retried for trial in trials if trial.state == TrialState.FAIL)
    print(f"\ndatabase down 4 s mid-trial; the study ended {time.monotonic() - back:.1f} s after it was back, "
          f"{len(complete)} of 4 trials complete, {len(trials) - len(complete)} failed and retried")


@pytest.mark.server
def test_a_study_waits_out_its_tracking_server_restarting_mid_trial_and_loses_no_metric(project_folder):
    folder = project_folder("tracking-restart")
    study_file = write_study(folder, "restarted", steps=100, eval_every=50)
    port = free_port()
    tracking = f"http://127.0.0.1:{port}"
    notice = f"the tracking server at {tracking} does not answer; retrying"

    def start_server() -> subprocess.Popen:
        server = subprocess.Popen([BENCH, "server", "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
                                   "--artifacts", str(folder / "server-artifacts"), "--port", str(port),
                                   "--allowed-hosts", f"127.0.0.1:*,trackhost.test:{port}"], cwd=folder,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                  env=clean_env())
        wait_for_http(f"{tracking}/health", 120)
        return server

    server = start_server()
    run = subprocess.Popen([BENCH, "run", "--variant", "gan", "--study", str(study_file), "--trials", "2",
                            "--tracking-uri", tracking], cwd=folder, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True, env=clean_env())
    lines: list[str] = []
    reader = threading.Thread(target=lambda: [lines.append(line) for line in run.stdout], daemon=True)
    reader.start()
    try:
        wait_for_trial_folder(folder, 120)
        os.killpg(server.pid, signal.SIGTERM)  # the server stops mid-trial...
        server.wait()
        stopped = time.monotonic()
        while not any(notice in line for line in lines):  # ...and stays down until the trial has needed it
            assert time.monotonic() < stopped + 60 and run.poll() is None, "".join(lines)
            time.sleep(0.2)
        server = start_server()
        down = time.monotonic() - stopped
        run.wait(timeout=300)
        reader.join()
        # --allowed-hosts reaches MLflow: a request by a name it lists is served, by another refused
        assert [answer(port, host) for host in (f"trackhost.test:{port}", f"elsewhere.test:{port}")] == [200, 403]
    finally:
        for process in (run, server):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    output = "".join(lines)
    assert run.returncode == 0 and "Traceback" not in output, output
    # What the server recorded, read from its backend store (the server itself is not needed for that).
    client = mlflow.MlflowClient(f"sqlite:///{folder / 'server.db'}")
    [experiment] = [e for e in client.search_experiments() if e.name == "restarted"]
    runs = client.search_runs([experiment.experiment_id])
    assert {run.info.status for run in runs} == {"FINISHED"}
    trials = [run for run in runs if run.data.tags["bench.kind"] == "trial"]
    assert len(trials) == 2
    for trial in trials:  # every step's losses reached the server, those logged while it was down included
        assert [m.step for m in client.get_metric_history(trial.info.run_id, "loss_d")] == list(range(1, 101))
    print(f"\ntracking server down {down:.1f} s mid-trial (its restart included); 2 of 2 trials complete, "
          "every metric recorded")
