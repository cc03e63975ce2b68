"""Checkpoints: one format, refused when foreign or hostile, written on SIGINT/SIGTERM and by
training time, and resumed exactly (the observers' state, the doctor's rolling state included)."""

from __future__ import annotations

import math
import os
import pickle
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from bench import checkpoint
from bench.cli import main
from bench.doctor import HEALTH, read_health
from bench.engine import CHECKPOINT, TrainConfig, Trainer, train
from bench.errors import Interrupted
from bench.observer import Finding, Observer, RunStart
from bench.scoring import Scorer
from tests.helpers import BENCH, doctor_of, where_modes_bind

DIGITS_RUN = ["--variant", "gan", "--dataset", "digits", "--seed", "3"]


class RunsCode:
    """Unpickling this runs `touch MARKER`: what a crafted checkpoint does to torch.load(weights_only=False)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def hostile_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (a file posing as a checkpoint, what the refusal must say)."""
    real = folder / "real"
    train(TrainConfig("gan", dataset="digits", steps=3), real, progress=False)
    whole = (real / CHECKPOINT).read_bytes()
    files = {
        "pickle with code": (pickle.dumps({"config": RunsCode(folder / "PWNED")}), "could run code"),
        "torch.save with code": (None, "could run code"),
        "truncated": (whole[: len(whole) // 2], "truncated or corrupt torch file"),
        "empty": (b"", "is empty"),
        "text": (b"step = 1000\nweights = none\n", "not a file torch can read"),
        "foreign torch file": (None, "not a ganbench checkpoint (it has no"),
    }
    paths = {}
    for name, (content, message) in files.items():
        path = folder / name.replace(" ", "_") / CHECKPOINT
        path.parent.mkdir()
        if name == "torch.save with code":
            torch.save({"format": checkpoint.FORMAT, "config": RunsCode(folder / "PWNED")}, path)
        elif name == "foreign torch file":
            torch.save({"state_dict": {"weight": torch.zeros(3)}}, path)
        else:
            path.write_bytes(content)
        paths[name] = (path, message)
    paths["folder without one"] = (folder, "holds no checkpoint.pt")
    return paths


def test_eval_and_resume_refuse_every_file_that_is_not_a_ganbench_checkpoint(tmp_path):
    for name, (path, message) in hostile_files(tmp_path).items():
        for args in (["eval", "--checkpoint", str(path)],
                     ["train", *DIGITS_RUN, "--steps", "5", "--out", str(path.parent), "--resume"]):
            if args[0] == "train" and name == "folder without one":
                continue  # --resume on a folder without a checkpoint starts over: tested below
            result = CliRunner().invoke(main, args)
            lines = result.stderr.strip().splitlines()
            assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (name, args, result.output)
            assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], (name, lines)
            assert str(path) in lines[0], (name, lines)
    assert not (tmp_path / "PWNED").exists(), "a checkpoint's pickled code ran"


def test_resume_without_a_checkpoint_says_it_starts_from_step_0(tmp_path):
    result = CliRunner().invoke(main, ["train", *DIGITS_RUN, "--steps", "3", "--out", str(tmp_path / "new"),
                                       "--resume"])
    assert result.exit_code == 0, result.output
    assert "holds no checkpoint.pt" in result.output and "starting from step 0" in result.output


@pytest.mark.parametrize("out, message", [
    ("/proc/ganbench/run", "cannot write the output folder /proc/ganbench/run"),
    ("/sys/ganbench", "cannot write the output folder /sys/ganbench"),
    ("FILE", "is a file; choose a folder path"),
    ("FILE/run", "cannot write the output folder"),
])
def test_an_output_folder_that_cannot_be_one_is_one_line(tmp_path, out, message):
    (tmp_path / "FILE").write_text("not a folder")
    out = out.replace("FILE", str(tmp_path / "FILE"))
    result = CliRunner().invoke(main, ["train", *DIGITS_RUN, "--steps", "3", "--out", out])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB file system (tmpfs): room for one checkpoint of a digits GAN (11 MB), not for the next beside it."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], check=True)
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def test_a_disk_that_fills_mid_checkpoint_is_one_line_and_the_run_resumes_from_the_checkpoint_before(
        small_disk, tmp_path):
    run = ["train", *DIGITS_RUN, "--steps", "30", "--checkpoint-every", "10"]
    result = CliRunner().invoke(main, [*run, "--out", str(small_disk / "run")])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "cannot write the checkpoint of step 20" in lines[0] and "No space left on device" in lines[0]
    assert checkpoint.load(small_disk / "run")["step"] == 10  # the one before, whole
    assert not list((small_disk / "run").glob("*.tmp"))  # the half-written one is gone, freeing the disk

    moved = tmp_path / "run"  # the user frees space; here, by moving the run to a disk that has it
    subprocess.run(["cp", "-r", str(small_disk / "run"), str(moved)], check=True)
    resumed = CliRunner().invoke(main, [*run, "--out", str(moved), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert checkpoint.load(moved)["step"] == 30 and losses_written(moved) == 30


def losses_written(run: Path) -> int:
    """The rows of a run's losses.csv (written beside each checkpoint) once the file is whole; else 0."""
    try:
        text = (run / "losses.csv").read_text()
    except FileNotFoundError:
        return 0
    return text.count("\n") - 1 if text.endswith("\n") else 0


@pytest.mark.e2e
def test_sigterm_writes_a_checkpoint_at_that_step_and_resume_continues_with_the_same_losses(tmp_path):
    """A `bench train` killed by SIGTERM mid-run resumes from the step it was stopped at, and ends
    with the losses and weights of a run that was never interrupted."""
    run = [*DIGITS_RUN, "--device", "cpu"]  # compared bit for bit below: on the CPU, whatever the machine has
    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen([str(BENCH), "train", *run, "--steps", "1000000", "--checkpoint-every",
                                "100", "--out", str(interrupted)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    # The signal comes a quarter of a second after the first periodic checkpoint (step 100) is
    # written, the loss table written after it included: some steps after it on any device (at once,
    # it could land before step 101 on a loaded machine), and well before the next.
    while losses_written(interrupted) < 100 and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.25)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    stopped_at = checkpoint.load(interrupted)["step"]
    assert stopped_at > 100 and stopped_at % 100, "saved at the signal's step, not at a periodic checkpoint"
    assert f"stopped by SIGTERM at step {stopped_at}; checkpoint written to {interrupted / CHECKPOINT}" in stderr
    assert "--resume" in stderr

    steps = str(stopped_at + 40)
    resumed = subprocess.run([str(BENCH), "train", *run, "--steps", steps, "--out", str(interrupted),
                              "--resume"], capture_output=True, text=True, timeout=120)
    straight = subprocess.run([str(BENCH), "train", *run, "--steps", steps, "--out", str(tmp_path / "straight")],
                              capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0 and straight.returncode == 0, resumed.stderr + straight.stderr
    resumed_losses, straight_losses = (pd.read_csv(folder / "losses.csv") for folder in (interrupted, tmp_path / "straight"))
    assert list(resumed_losses["step"]) == list(range(1, stopped_at + 41))
    pd.testing.assert_frame_equal(resumed_losses, straight_losses)
    resumed_weights, straight_weights = (checkpoint.load(folder)["variant"] for folder in (interrupted, tmp_path / "straight"))
    assert all(torch.equal(value, straight_weights[key]) for key, value in resumed_weights.items())


def test_a_signal_during_scoring_stops_without_it_and_the_resumed_run_scores_that_step_first(tmp_path, monkeypatch):
    """Scoring can take minutes (Inception on a CPU): a SIGTERM that comes while it runs ends the
    run at once, with a checkpoint and no half-made scores, and the resumed run scores that step
    before it trains on."""
    config = TrainConfig("gan", dataset="digits", steps=20, eval_every=10, eval_samples=64)
    score, scored_at = Scorer.score, []

    def score_after_the_first_signal(self, *args, **kwargs):
        scored_at.append(trainer.step)
        if len(scored_at) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # handled before the next line runs
        return score(self, *args, **kwargs)

    monkeypatch.setattr(Scorer, "score", score_after_the_first_signal)
    trainer = Trainer(config, tmp_path, progress=False)
    with pytest.raises(Interrupted, match="stopped by SIGTERM at step 10; checkpoint written"):
        trainer.run()
    saved = checkpoint.load(tmp_path)
    assert saved["step"] == 10 and saved["evaluations"] == []

    trainer = Trainer(config, tmp_path, resume=True, progress=False)
    result = trainer.run()
    assert scored_at == [10, 10, 20]
    assert list(result.scores["step"]) == [10, 20] and result.scores["fid_domain"].notna().all()
    assert [row["step"] for row in checkpoint.load(tmp_path)["evaluations"]] == [10, 20]


def test_a_checkpoint_is_written_by_training_time_as_well_as_by_steps(tmp_path):
    trainer = Trainer(TrainConfig("gan", dataset="digits", steps=400, checkpoint_every=10_000,
                                  checkpoint_seconds=1e-9), tmp_path, progress=False)
    saves = []
    save = trainer.save
    trainer.save = lambda: saves.append(trainer.step) or save()
    trainer.run(until=3)
    assert saves == [1, 2, 3], "with a tiny time interval, every step is past it"


@pytest.mark.e2e
def test_the_doctors_rolling_state_resumes_with_the_run(tmp_path):
    """The doctor's loss window, real-image spread and persistence counters carry over, so its
    checks after a resume see what they would have seen without one."""
    # Two runs compared bit for bit: on the CPU (on a GPU, cuDNN and atomics need not repeat exactly).
    config = dict(variant="gan", dataset="digits", seed=1, log_every=10, device="cpu")
    straight = Trainer(TrainConfig(**config, steps=420), progress=False)
    straight.run(until=250)
    halfway = doctor_of(straight).state_dict()
    straight.run()  # before the resumed run: both draw from the process's one global RNG
    train(TrainConfig(**config, steps=250), tmp_path, progress=False)
    resumed = Trainer(TrainConfig(**config, steps=420), tmp_path, resume=True, progress=False)
    state = doctor_of(resumed).state_dict()
    assert len(state["rows"]) == 200 and state["real_spread"] > 0 and state["seen"], "a window full, a sample check done"
    assert state == halfway
    resumed.run()
    assert doctor_of(resumed).state_dict() == doctor_of(straight).state_dict()


class StepCounter(Observer):
    """An observer with state of its own: the steps it saw end."""

    name = "step_counter"

    def __init__(self):
        self.started: RunStart | None = None
        self.before: list[int] = []
        self.after: list[int] = []

    def on_start(self, run: RunStart) -> None:
        self.started = run

    def before_step(self, step: int, real: torch.Tensor) -> None:
        self.before.append(step)

    def after_step(self, step: int) -> None:
        self.after.append(step)

    def state_dict(self) -> dict:
        return {"after": list(self.after)}

    def load_state_dict(self, state: dict) -> None:
        self.after = list(state["after"])


def test_an_observer_hears_each_step_and_its_state_resumes_with_the_run(tmp_path):
    config = dict(variant="gan", dataset="digits", device="cpu", amp="off")
    first = StepCounter()
    train(TrainConfig(**config, steps=4), tmp_path, progress=False, observers=[first])
    assert first.before == first.after == [1, 2, 3, 4]
    assert (first.started.device, first.started.precision) == (torch.device("cpu"), "float32")
    assert checkpoint.load(tmp_path)["observers"]["step_counter"] == {"after": [1, 2, 3, 4]}
    resumed = StepCounter()
    trainer = Trainer(TrainConfig(**config, steps=6), tmp_path, resume=True, progress=False, observers=[resumed])
    assert resumed.started.variant is trainer.variant and resumed.after == [1, 2, 3, 4]
    trainer.run()
    assert resumed.before == [5, 6] and resumed.after == [1, 2, 3, 4, 5, 6]


def test_a_version_1_checkpoint_resumes_with_the_doctors_state_and_the_findings_it_held(tmp_path):
    """Version 1 gave the doctor a field of its own, and kept the run's findings in its state."""
    config = dict(variant="gan", dataset="digits", device="cpu")
    train(TrainConfig(**config, steps=3), tmp_path, progress=False)
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    doctor = state.pop("observers")["doctor"]
    finding = Finding("clipping", 2, "D's weights reach 0.03, beyond the bound 0.01", fatal=False)
    del state["findings"]
    torch.save({**state, "version": 1, "doctor": {**doctor, "findings": [finding.as_dict()]}}, tmp_path / CHECKPOINT)
    resumed = Trainer(TrainConfig(**config, steps=4), tmp_path, resume=True, progress=False)
    assert doctor_of(resumed).state_dict() == doctor
    assert resumed.findings() == [finding] and read_health(tmp_path / HEALTH) == [finding]
    assert resumed.run().findings == [finding]
    rewritten = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert rewritten["version"] == checkpoint.VERSION and rewritten["findings"] == [finding.as_dict()]


def tampered(key: str, value) -> Callable[[dict], None]:
    """Sets ``key`` (a path through nested dicts, 'config.seed') of a checkpoint's state to ``value``."""
    *parents, last = key.split(".")

    def tamper(state: dict) -> None:
        for parent in parents:
            state = state[parent]
        state[last] = value
    return tamper


TAMPERED = {  # tensors and plain containers, as a teammate's or a server's file can be, wrong inside; message: a regex
    "image_shape of two entries": ("gan", tampered("image_shape", [1, 8]), "'image_shape' is \\[1, 8\\]"),
    "image_shape of strings": ("gan", tampered("image_shape", ["1", "8", "8"]), "'image_shape' is \\['1'"),
    "a huge image_shape": ("gan", tampered("image_shape", [1, 100000, 100000]), "sides of 1-4096 pixels"),
    "another image_shape": ("gan", tampered("image_shape", [1, 16, 16]), "image_shape differ|do not fit gan on images"),
    "a negative num_classes": ("cgan", tampered("num_classes", -5), "'num_classes' is -5"),
    "a huge num_classes": ("cgan", tampered("num_classes", 10 ** 9), "num_classes differ|do not fit cgan"),
    "the seed as a string": ("gan", tampered("config.seed", "3"), "config field 'seed' is '3'"),
    "hparams as a list": ("gan", tampered("config.hparams", [1]), "config field 'hparams' is \\[1\\]"),
    "a step of True": ("gan", tampered("step", True), "'step' is True"),
    "a step beyond its rows": ("gan", tampered("step", 10 ** 9), "'rows' is not the loss table of its"),
    "rows of strings": ("gan", tampered("rows", ["a", "b"]), "'rows' is not the loss table"),
    "evaluations of ints": ("gan", tampered("evaluations", [1, 2]), "'evaluations' is not a table"),
    "the sampler at a string": ("gan", tampered("sampler.position", "x"), "position 'x' is not within|ok for eval"),
    "the sampler past its end": ("gan", tampered("sampler.position", 10 ** 12), "is not within|ok for eval"),
    "the sampler's order as floats": ("gan", tampered("sampler.order", torch.rand(3)), "not a shuffle|ok for eval"),
    "a seed of 2**70": ("gan", tampered("config.seed", 2**70), f"seed {2**70} is out of range; a seed is from 0 to"),
    "a negative seed": ("gan", tampered("config.seed", -1), "seed -1 is out of range"),
}


def test_a_checkpoint_holds_exactly_the_declared_fields_and_writing_another_is_refused(tmp_path):
    train(TrainConfig("gan", dataset="digits", steps=2), tmp_path, progress=False)
    state = checkpoint.load(tmp_path)
    assert state.keys() - {"format", "version"} == checkpoint.FIELDS.keys()  # what the engine writes
    fields = {key: state[key] for key in checkpoint.FIELDS}
    checkpoint.save(fields, tmp_path / "copy.pt")
    assert torch.equal(checkpoint.load(tmp_path / "copy.pt")["torch_rng"], state["torch_rng"])
    for wrong in ({**fields, "ema": {}}, {key: value for key, value in fields.items() if key != "sampler"}):
        with pytest.raises(TypeError, match="exactly the fields of State"):
            checkpoint.save(wrong, tmp_path / "wrong.pt")
    assert not (tmp_path / "wrong.pt").exists()


@pytest.mark.parametrize("name", TAMPERED)
def test_a_checkpoint_wrong_inside_is_one_line_naming_the_field_in_eval_and_resume(tmp_path_factory, name):
    variant, tamper, message = TAMPERED[name]
    folder = tmp_path_factory.mktemp("tampered")
    train(TrainConfig(variant, dataset="digits", steps=3, seed=3), folder, progress=False)
    state = torch.load(folder / CHECKPOINT, weights_only=True)
    tamper(state)
    torch.save(state, folder / CHECKPOINT)
    for args in (["eval", "--checkpoint", str(folder), "--samples", "64", "--device", "cpu"],
                 ["train", "--variant", variant, "--dataset", "digits", "--seed", "3", "--steps", "5",
                  "--out", str(folder), "--resume", "--device", "cpu"]):
        result = CliRunner().invoke(main, args)
        lines = result.stderr.strip().splitlines()
        if args[0] == "eval" and "ok for eval" in message:  # eval reads no sampler
            assert result.exit_code == 0, result.output
            continue
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (args[0], result.output)
        assert len(lines) == 1 and re.search(message, lines[0]) and str(folder) in lines[0], (args[0], lines)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_checkpoint_whose_weights_hold_nan_is_named_as_such_in_eval_and_resume(tmp_path, value):
    """Not blamed on the generator's learning rate at scoring time: the weights were already gone."""
    train(TrainConfig("gan", dataset="digits", steps=3, seed=3), tmp_path, progress=False)
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    name = next(key for key, tensor in state["variant"].items() if tensor.is_floating_point())
    state["variant"][name].view(-1)[5] = value
    torch.save(state, tmp_path / CHECKPOINT)
    for args in (["eval", "--checkpoint", str(tmp_path), "--samples", "64", "--device", "cpu"],
                 ["train", *DIGITS_RUN, "--steps", "5", "--out", str(tmp_path), "--resume", "--device", "cpu"]):
        result = CliRunner().invoke(main, args)
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (args[0], result.output)
        assert len(lines) == 1, lines
        assert f"{tmp_path / CHECKPOINT} is a checkpoint whose weights hold NaN/Inf ({name})" in lines[0]
        assert "the run diverged before this checkpoint; use an earlier checkpoint" in lines[0]
        assert "learning rate" not in lines[0]


def test_a_checkpoint_that_is_a_fifo_is_refused_unopened(tmp_path):
    fifo = tmp_path / "fifo" / CHECKPOINT
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    result = CliRunner().invoke(main, ["eval", "--checkpoint", str(fifo.parent)])  # would block in torch.load
    assert result.exit_code == 2 and result.stderr.strip() == (
        f"Error: checkpoint {fifo} is a FIFO, refused unopened; pass a run folder written by `bench train` or its "
        f"{CHECKPOINT}"), result.output


@where_modes_bind
def test_an_unreadable_checkpoint_is_one_line_naming_it_and_the_fix(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig("gan", dataset="digits", steps=3), run, progress=False)
    (run / CHECKPOINT).chmod(0)
    for args in (["eval", "--checkpoint", str(run)], ["train", *DIGITS_RUN, "--steps", "5", "--out", str(run),
                                                      "--resume"]):
        result = CliRunner().invoke(main, args)
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1, (args[0], result.output)
        assert f"checkpoint {run / CHECKPOINT} cannot be read (permission denied)" in lines[0], lines
        assert "chmod u+r" in lines[0]
