"""`python -m bench.device_check`: the figures a GPU gives in a few minutes, collected by one
script that the suite also runs on the CPU in smoke mode (``--smoke``), so that the script is
known to work before it runs on a GPU.

    python -m bench.device_check --device cuda -o results/device-check.json

It reports, on the device: generator steps/s of every variant in float32 and under bfloat16
autocast (where the device computes it natively), kernel launches per step (a DCGAN step is
launch-bound on a GPU), a resume round trip (on the device, then on the CPU from the device's
checkpoint), the stale-weight check (every D forward of a bfloat16 step against a float32 forward
of D's current weights), Inception features on the device against the CPU, and the time to
score ``fid_inception`` on 10,000 samples against 10,000 real images.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.devices import native_bf16, resolve_device
from bench.engine import TrainConfig, Trainer, train
from bench.errors import ConfigError
from bench.locations import check_output
from bench.registry import REFERENCE_VARIANT, variants
from bench.timing import inception_difference, scoring_seconds, synchronize

FULL = {"steps": 50, "inception_images": 64, "scoring_samples": 10000, "scoring_features": "inception"}
SMOKE = {"steps": 1, "inception_images": 2, "scoring_samples": 8, "scoring_features": "domain"}
"""Smoke mode: every path once, small enough for the suite on a CPU (where FID's 2048x2048
eigenvalue problem alone takes tens of seconds, so it scores with the domain features)."""


def training(variant: str, device: str, amp: str, steps: int) -> dict:
    """Generator steps/s of ``variant`` at its defaults, timed after as many warm-up steps (cuDNN's
    autotuning); under bfloat16 the first of them is the stale-weight check."""
    trainer = Trainer(TrainConfig(variant, steps=2 * steps + 1, device=device, amp=amp, doctor=False), progress=False)
    report = {"stale_weight_max_gap": max(stale_weight_gaps(trainer))} if trainer.amp_dtype else {}
    trainer.run(until=steps + 1)
    synchronize(trainer.device)
    started = time.perf_counter()
    trainer.run()
    synchronize(trainer.device)
    return {"steps_per_second": round(steps / (time.perf_counter() - started), 1), **report}


def launches_per_step(variant: str, device: str, steps: int = 2) -> float:
    """Kernels launched per generator step on a GPU (operators dispatched on a CPU)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    trainer = Trainer(TrainConfig(variant, steps=steps + 1, device=device, doctor=False), progress=False)
    trainer.run(until=1)
    cuda = trainer.device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as profiler:
        trainer.run()
        synchronize(trainer.device)
    events = profiler.events()
    counted = [event for event in events if event.device_type == DeviceType.CUDA] if cuda else \
        [event for event in events if event.name.startswith("aten::")]
    return len(counted) / steps


def stale_weight_gaps(trainer: Trainer) -> list[float]:
    """Runs one step of ``trainer`` and returns, for every forward of its D, the largest difference
    from a float32 forward of D's weights at that moment, relative to that output's largest value.
    Under bfloat16 a few 1e-3; with autocast's weight cache the forwards after D's first update
    used its old weights (differences of 0.1 to 1.7)."""
    gaps, checking = [], False

    def as_float32(value):
        return value.float() if isinstance(value, torch.Tensor) and value.is_floating_point() else value

    def against_float32(module, args, kwargs, output):
        nonlocal checking
        if checking:
            return
        checking = True
        with torch.autocast(trainer.device.type, enabled=False), torch.no_grad():
            exact = module(*map(as_float32, args), **{key: as_float32(value) for key, value in kwargs.items()})
        checking = False
        for low, full in zip(*(value if isinstance(value, tuple) else (value,) for value in (output, exact))):
            if isinstance(full, torch.Tensor) and full.is_floating_point():
                gaps.append(((low.float() - full).abs().max() / full.abs().max()).item())

    hook = trainer.variant.D.register_forward_hook(against_float32, with_kwargs=True)
    try:
        trainer.run(until=trainer.step + 1)
    finally:
        hook.remove()
    return gaps


def resume_round_trip(device: str, folder: Path) -> dict:
    """Four steps and a checkpoint, then four more on the device, against eight straight (the
    largest difference over losses and weights); and the same checkpoint resumed on the CPU."""
    run = dict(variant=REFERENCE_VARIANT, steps=8, log_every=4, seed=0, device=device)
    straight = train(TrainConfig(**run), folder / "straight", progress=False)
    train(TrainConfig(**{**run, "steps": 4}), folder / "halves", progress=False)
    shutil.copytree(folder / "halves", folder / "to-cpu")
    resumed = train(TrainConfig(**run), folder / "halves", resume=True, progress=False)
    on_cpu = train(TrainConfig(**{**run, "device": "cpu"}), folder / "to-cpu", resume=True, progress=False)
    weights = max((value.float() - resumed.variant.state_dict()[key].float()).abs().max().item()
                  for key, value in straight.variant.state_dict().items() if value.is_floating_point())
    return {"max_weight_difference": weights,
            "max_loss_difference": float((straight.history - resumed.history).abs().max().max()),
            "resumed_on_cpu_to_step": int(on_cpu.history["step"].max())}


def device_check(device: str = "auto", *, smoke: bool = False) -> dict:
    """Every figure of this module on ``device``; ``smoke``: tiny sizes, to run on a CPU in seconds."""
    sizes = SMOKE if smoke else FULL
    resolved = resolve_device(device)
    precisions = ("off", "on") if native_bf16(resolved) else ("off",)
    report: dict = {"device": str(resolved), "torch": torch.__version__, "smoke": smoke,
                    "gpu": torch.cuda.get_device_name(resolved) if resolved.type == "cuda" else None}
    report["training"] = {name: {("bfloat16" if amp == "on" else "float32"): training(name, device, amp, sizes["steps"])
                                 for amp in precisions} for name in variants()}
    report["launches_per_step"] = launches_per_step(REFERENCE_VARIANT, device)
    with tempfile.TemporaryDirectory() as folder:
        report["resume"] = resume_round_trip(device, Path(folder))
        report["scoring"] = scoring_seconds(samples=sizes["scoring_samples"], features=sizes["scoring_features"],
                                            device=resolved, cache=Path(folder))
    report["inception_max_relative_difference_vs_cpu"] = inception_difference(resolved, sizes["inception_images"])
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script, measures nothing")
    parser.add_argument("-o", "--output", type=Path, help="also write the report here as JSON")
    args = parser.parse_args()
    try:
        if args.output is not None:  # checked now, not after minutes of measuring
            check_output(args.output)
        report = device_check(args.device, smoke=args.smoke)
    except ConfigError as exc:  # a device this machine lacks: one line, as every bench command
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(2)
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
