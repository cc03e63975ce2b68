"""The GPU path, checked on the CPU: bfloat16 autocast that trains on current weights, checkpoints
that resume on another device, scoring in true float32, workers spread over GPUs."""

import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench import checkpoint, devices
from bench.device_check import stale_weight_gaps
from bench.devices import worker_device
from bench.engine import TrainConfig, Trainer, train
from bench.registry import ENTRY_POINT_GROUP
from bench.feature_cache import PRECISION
from bench.scoring import Scorer


@pytest.fixture
def bf16(monkeypatch):
    """bfloat16 autocast on any CPU: emulated where it is not native (slower, the same numbers)."""
    monkeypatch.setattr(devices, "native_bf16", lambda device: True)


def bf16_trainer(variant: str) -> Trainer:
    return Trainer(TrainConfig(variant, steps=1, amp="on", device="cpu", doctor=False), progress=False)


@pytest.mark.parametrize("variant", ["wgan", "wgan_gp", "dcgan"])
def test_under_bfloat16_every_forward_of_d_sees_its_weights_as_they_are_now(bf16, variant):
    """Each D forward of a step (after D's updates, WGAN's clipping, and G's pass through the new D)
    agrees with a float32 forward of D's current weights to bfloat16's precision. With autocast's
    weight cache they were the weights from before the step's first update: 11-170% apart."""
    gaps = stale_weight_gaps(bf16_trainer(variant))
    assert len(gaps) >= 3 and max(gaps) < 0.03, [round(gap, 4) for gap in gaps]


@pytest.mark.parametrize("variant", ["wgan_gp", "dcgan"])
def test_a_bfloat16_step_lands_near_the_float32_step_from_the_same_state(bf16, variant):
    start = dict(variant=variant, steps=1, device="cpu", log_every=1, doctor=False)
    low, full = (train(TrainConfig(**start, amp=amp), progress=False).history for amp in ("on", "off"))
    torch.testing.assert_close(torch.tensor(low.values), torch.tensor(full.values), rtol=1e-2, atol=1e-2)


def tagged_as_written_on(location: str, path: Path, monkeypatch) -> None:
    """Rewrites the checkpoint at ``path`` as a GPU machine would have: every tensor tagged with
    ``location`` (torch.load without a CPU map would put them there) and that GPU's RNG state."""
    state = checkpoint.load(path)
    state["cuda_rng"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator's state: seed and offset
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: location)
        checkpoint.save({key: state[key] for key in checkpoint.FIELDS}, path)
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(path, weights_only=True)  # the file really names a GPU


def test_a_checkpoint_written_on_a_gpu_resumes_on_the_cpu_as_if_never_stopped(tmp_path, monkeypatch):
    run = dict(variant="dcgan", steps=8, log_every=4, seed=0, device="cpu")
    straight = train(TrainConfig(**run), tmp_path / "straight", progress=False)
    train(TrainConfig(**{**run, "steps": 4}), tmp_path / "moved", progress=False)
    tagged_as_written_on("cuda:1", tmp_path / "moved" / checkpoint.FILENAME, monkeypatch)
    state = checkpoint.load(tmp_path / "moved")
    assert all(value.device.type == "cpu" for value in state["variant"].values())
    resumed = train(TrainConfig(**run), tmp_path / "moved", resume=True, progress=False)
    pd.testing.assert_frame_equal(straight.history, resumed.history)
    for key, value in straight.variant.state_dict().items():
        assert torch.equal(value, resumed.variant.state_dict()[key]), key


def test_scoring_runs_in_ieee_float32_and_its_cache_names_device_and_precision(tmp_path):
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"  # PyTorch's default: TF32 convolutions on a GPU
    scorer = Scorer("digits", "domain", real_samples=64, cache_dir=tmp_path)
    seen = []
    scorer.extractor.register_forward_hook(lambda *_: seen.append(
        (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)))
    scorer.score(Trainer(TrainConfig("gan", dataset="digits", device="cpu"), progress=False).variant, 32)
    assert seen and set(seen) == {("ieee", "ieee")}
    assert torch.backends.cudnn.conv.fp32_precision == "tf32", "training keeps PyTorch's setting"
    (cached,) = (tmp_path / "real-features").glob(f"*-{PRECISION}.pt")  # beside it: the real k-NN radii
    key = torch.load(cached, weights_only=True)["key"]
    assert (key["device"], key["precision"]) == ("cpu", PRECISION) and cached.stem.endswith(f"-cpu-{PRECISION}")


def test_study_workers_spread_over_the_gpus_and_share_them(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for name in ("auto", "cuda"):
        assert [worker_device(name, worker) for worker in range(5)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]
    assert worker_device("cuda:1", 0) == "cuda:1" and worker_device("cpu", 1) == "cpu"


@pytest.mark.e2e
def test_the_device_check_runs_every_measurement_in_smoke_mode(tmp_path):
    out = tmp_path / "device-check.json"
    subprocess.run([sys.executable, "-m", "bench.device_check", "--smoke", "--device", "cpu", "-o", str(out)],
                   check=True, capture_output=True, cwd=tmp_path)
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["smoke"] is True
    installed = {entry.name for entry in entry_points(group=ENTRY_POINT_GROUP)}  # what the subprocess sees
    assert report["training"].keys() == installed and "dcgan" in installed
    for precisions in report["training"].values():
        assert precisions["float32"]["steps_per_second"] > 0
        assert precisions.get("bfloat16", {"stale_weight_max_gap": 0})["stale_weight_max_gap"] < 0.03
    assert report["launches_per_step"] > 0
    assert report["resume"] == {"max_weight_difference": 0.0, "max_loss_difference": 0.0, "resumed_on_cpu_to_step": 8}
    assert report["inception_max_relative_difference_vs_cpu"] == 0.0  # the same device: the same numbers
    assert report["scoring"]["samples"] == 8 and report["scoring"]["untrained_fid_domain"] > 0


def test_the_device_check_refuses_a_device_this_machine_lacks_in_one_line():
    done = subprocess.run([sys.executable, "-m", "bench.device_check", "--device", "tpu"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip() == "Error: unknown device 'tpu'; use auto, cpu, cuda or cuda:N"
