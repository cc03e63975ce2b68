"""`bench run` when things go wrong, end to end: a worker killed with SIGKILL, `bench run` stopped with
SIGTERM, trials that diverge or that the doctor stops; real digits, journal file and SQLite MLflow store."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import mlflow
import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import FrozenTrial, TrialState

from bench.cli import main
from bench.ranking import leaderboard
from bench.storage import open_storage
from tests.helpers import BENCH, TINY_STUDY, bench, clean_env, mlflow_runs, optuna_trials, write_study

# -- resume after kill -9 ------------------------------------------------------------------------

@pytest.mark.e2e
def test_rerun_after_sigkill_keeps_completed_trials_and_closes_the_killed_runs(project_folder):
    tmp_path = project_folder("killed")
    study = write_study(tmp_path, "killed", steps=400, eval_every=50)
    args = ["run", "--variant", "dcgan", "--study", str(study), "--trials", "2"]
    process = subprocess.Popen([BENCH, *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True, env=clean_env())
    lines = []
    for line in process.stdout:  # wait until trial 0 is complete
        lines.append(line)
        if line.startswith("dcgan trial 0 complete"):
            break
    # Then kill it in the middle of trial 1, at its first evaluation (the sample grid at step 50): the
    # trial has 350 steps left then (seconds on a CPU core).
    grid = tmp_path / "results" / "studies" / "killed_dcgan_digits" / "trial-0001" / "samples" / "step_0000050.png"
    deadline = time.monotonic() + 120
    while not grid.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    before = optuna_trials(tmp_path, "killed:dcgan:digits")
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.RUNNING], "".join(lines)

    result = bench(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trial 1 marked failed" in result.stdout
    after = optuna_trials(tmp_path, "killed:dcgan:digits")
    assert [t.state for t in after] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert after[0].value == before[0].value and after[0].params == before[0].params
    assert "ended during the trial" in after[1].user_attrs["fail_reason"]

    runs = mlflow_runs(tmp_path, "killed")
    assert "RUNNING" not in set(runs["status"])
    killed_trial = runs[runs["run_id"] == after[1].user_attrs["mlflow_run_id"]].iloc[0]
    assert (killed_trial["status"], killed_trial["tags.bench.state"]) == ("KILLED", "retried")
    parents = runs[runs["tags.bench.kind"] == "study"].sort_values("start_time")
    assert list(parents["status"]) == ["KILLED", "FINISHED"]


@pytest.mark.e2e
def test_sigterm_checkpoints_the_running_trials_and_the_rerun_resumes_them_from_there(project_folder):
    """SIGTERM to `bench run --workers 2` reaches each worker once; each checkpoints its trial at
    the current step and queues it again; the next `bench run` trains the retries on from those
    steps, with the same hyperparameters and seeds."""
    tmp_path = project_folder("sigterm")
    study = tmp_path / "sigterm.toml"
    # The signal comes when both trials have written their first sample grid (step 100), which leaves
    # them 600 steps to go: about 10 s at one thread per worker on the CPU, time for the later
    # worker to reach its grid too.
    steps, first_grid = 700, 100
    study.write_text(TINY_STUDY.replace("trials = 3", "trials = 2").format(steps=steps, eval_every=first_grid))
    args = ["run", "--variant", "gan", "--study", str(study), "--workers", "2"]
    process = subprocess.Popen([BENCH, *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=clean_env())
    folders = [tmp_path / "results" / "studies" / "sigterm_gan_digits" / f"trial-{n:04d}" for n in (0, 1)]
    deadline = time.monotonic() + 120
    while not all((folder / "samples" / f"step_{first_grid:07d}.png").exists() for folder in folders) \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "stopped by SIGTERM after the workers checkpointed their trials" in stderr and "Traceback" not in stderr
    interrupted = optuna_trials(tmp_path, "sigterm:gan:digits")
    assert [t.state for t in interrupted] == [TrialState.FAIL, TrialState.FAIL, TrialState.WAITING, TrialState.WAITING]
    stopped_at = {t.number: int(re.search(r"stopped by SIGTERM at step (\d+)", t.user_attrs["fail_reason"])[1])
                  for t in interrupted[:2]}
    assert all(first_grid <= step < steps for step in stopped_at.values()), stopped_at
    stopped = mlflow_runs(tmp_path, "sigterm").query("`tags.bench.kind` == 'trial'")
    assert (stopped["status"].tolist(), stopped["tags.bench.state"].tolist()) == (["KILLED"] * 2, ["retried"] * 2)

    result = bench(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "gan 2/2 done (0 pruned, 0 failed, 2 stopped and retried)" in result.stdout, result.stdout[-3000:]
    after = optuna_trials(tmp_path, "sigterm:gan:digits")
    assert [t.state for t in after] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    runs = mlflow_runs(tmp_path, "sigterm").set_index("run_id")
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    for retry in after[2:]:
        original = after[retry.system_attrs["failed_trial"]]
        assert retry.params == original.params and retry.user_attrs["seed"] == original.user_attrs["seed"]
        run_id = retry.user_attrs["mlflow_run_id"]
        assert runs.loc[run_id, "tags.bench.resumed_from"] == f"trial {original.number}"
        logged = [metric.step for metric in client.get_metric_history(run_id, "loss_d")]
        assert min(logged) == stopped_at[original.number] + 1 and max(logged) == steps
    # The stops are marked to run again; their retries, once taken, are not (a failure of theirs is no stop).
    assert [t.user_attrs["queue_again"] for t in after] == [True, True, False, False]
    # The leaderboard counts the stops as the progress line does: retried, not failed.
    [row] = leaderboard(client.tracking_uri, "sigterm").query("metric == 'fid_domain'").to_dict("records")
    assert (row["complete"], row["failed"], row["retried"]) == (2, 0, 2), row


# -- trials that go bad fail with their reason; the other worker goes on --------------------------

FAULTS_STUDY = """
dataset = "digits"
objective = "fid_domain"
trials = 2
sampler = "random"
pruner = "none"

[budget]
steps = 40
eval_every = 20
eval_samples = 300

[space]
fault = { choices = ["none", "nan", "detached_fake"] }
"""


@pytest.mark.e2e
def test_diverged_and_doctor_stopped_trials_fail_with_their_reasons_while_the_workers_go_on(project_folder,
                                                                                            plugin_site):
    cwd = project_folder("going-bad")
    (cwd / "going_bad.toml").write_text(FAULTS_STUDY)
    # The first trials, queued the Optuna way: one diverges, the doctor stops one, two are healthy.
    name = "going_bad:faulty_dcgan:digits"
    queued = optuna.create_study(storage=open_storage(str(cwd / "results" / "optuna" / "journal.log")),
                                 study_name=name)
    for fault in ("nan", "detached_fake", "none", "none"):
        queued.enqueue_trial({"fault": fault})
    result = subprocess.run([BENCH, "run", "--variant", "faulty_dcgan", "--study", "going_bad.toml", "--workers", "2"],
                            cwd=cwd, capture_output=True, text=True, timeout=600,
                            env={**clean_env(), "PYTHONPATH": str(plugin_site)})
    assert result.returncode == 0, result.stderr[-3000:]
    trials = optuna_trials(cwd, name)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert len({t.user_attrs["worker"]["pid"] for t in trials}) == 2  # two worker processes took them
    assert "loss_d became nan at step 10" in trials[0].user_attrs["fail_reason"]
    assert "receives no gradient" in trials[1].user_attrs["fail_reason"]
    runs = mlflow_runs(cwd, "going_bad").query("`tags.bench.kind` == 'trial'").set_index("tags.bench.trial")
    assert (runs.loc[["0", "1"], "status"] == "FAILED").all()
    assert "loss_d became nan" in runs.loc["0", "tags.bench.end_reason"]
    assert "receives no gradient" in runs.loc["1", "tags.bench.end_reason"]
    assert runs.loc["1", "tags.health.no_generator_gradient"].startswith("step 1: ")
    assert (runs.loc[["2", "3"], "status"] == "FINISHED").all()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        report = CliRunner().invoke(main, ["doctor", runs.loc["1", "run_id"]])
    assert report.exit_code == 0 and "no_generator_gradient" in report.output and "run was stopped" in report.output


# -- a stop whose trial failed but was not queued again ---------------------------------------------

def test_a_stopped_trial_the_storage_lost_before_queueing_it_is_queued_by_the_next_command(tmp_path):
    """A stop fails its trial, then queues it again; where the storage goes away between the two, the
    trial is failed and marked to run again but no retry names it. The next command's recovery queues
    it once its stopping process is gone (on another host: once it ended a grace period ago), and
    leaves alone a trial whose process still lives, a failure that is not a stop, and a stop already
    queued."""
    from bench.processes import HOST
    from bench.schema import TrialAttr
    from bench.trials import Job, _recover, _stopped_not_queued, run_again
    from bench.tracking import Tracking, TrackingStore

    storage = open_storage(str(tmp_path / "journal.log"))
    study = optuna.create_study(storage=storage, study_name="stops")
    ended = subprocess.Popen(["true"])
    ended.wait()
    lr = optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)
    stops = [(HOST, ended.pid, True), (HOST, ended.pid, False), (HOST, os.getpid(), True), (HOST, ended.pid, True),
             ("another-host", 1, True)]
    for number, (host, pid, stop) in enumerate(stops):
        trial = study.ask({"lr": lr})
        for attr, value in [(TrialAttr.SEED, 10 + number), (TrialAttr.WORKER, {"host": host, "pid": pid}),
                            (TrialAttr.FAIL_REASON, "stopped by SIGINT at step 5"), (TrialAttr.QUEUE_AGAIN, stop)]:
            trial.set_user_attr(attr, value)
        study.tell(trial, state=TrialState.FAIL)
    assert run_again(study, 3)  # trial 3's stop queued it (as trial 5)
    said: list[str] = []
    store = TrackingStore.open(f"sqlite:///{tmp_path / 'mlflow.db'}", create=True)
    tracking = Tracking(store, "stops", artifacts=tmp_path / "artifacts")

    def recover() -> list[FrozenTrial]:
        job = Job(variants=(), spec=None, trials=None, storage=str(tmp_path / "journal.log"), tracking=store,
                  parent_run_id="", device="cpu", amp="no", seed=0, worker=0, threads=1, heartbeat=10,
                  log=said.append)
        _recover(study, storage, tracking, job)
        return study.get_trials()

    for _ in range(2):  # a second command finds nothing more to queue
        trials = recover()
        assert [t.state for t in trials] == [TrialState.FAIL] * 5 + [TrialState.WAITING] * 2
    assert [t.system_attrs["failed_trial"] for t in trials[5:]] == [3, 0]
    assert trials[6].params == trials[0].params and trials[6].user_attrs[TrialAttr.SEED] == 10
    assert said == ["trial 0 queued again: the storage went away before the command that stopped it could queue it "
                    "(stopped by SIGINT at step 5)"]
    # Another host's process cannot be looked up, and a live pid may be another process's by then: such a
    # stop is queued once it ended the grace period ago.
    assert [t.number for t in _stopped_not_queued(study, grace=0)] == [2, 4]
