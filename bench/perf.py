"""Training throughput and scoring speed, measured the way a user can rerun it (`bench perf`).

The machine is noisy, so every figure is the median of several repeats, each timed after a
warm-up on the same trainer.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.data import ImageDataset, load_dataset
from bench.devices import autocast_dtype, resolve_device
from bench.engine import TrainConfig, Trainer
from bench.errors import ConfigError
from bench.registry import REFERENCE_VARIANT, HParamValue, get_variant
from bench.scores import REAL_SAMPLES, check_samples
from bench.scoring import Scorer
from bench.connections import redact
from bench.locations import FEATURE_CACHE
from bench.storage import check_storage
from bench.timing import inception_throughput, matmul_gflops, prdc_cost, scoring_seconds, synchronize


def training_throughput(variant: str, *, dataset: str = "fashion-mnist", steps: int = 40, repeats: int = 3,
                        batch_size: int = 64, device: str = "auto") -> dict:
    """Median real images/s (through D) and generator steps/s of the engine for ``variant``, and
    its speed-up over the plain loop (:func:`plain_loop_throughput`)."""
    trainer = Trainer(TrainConfig(variant, dataset=dataset, steps=5, batch_size=batch_size, device=device,
                                  log_every=steps), progress=False)
    rates = timed_repeats({"engine": trainer}, steps, repeats)["engine"]
    images_per_second = statistics.median(rates)
    plain = plain_loop_throughput(variant, dataset=dataset, steps=steps, repeats=repeats, batch_size=batch_size,
                                  device=device)
    return {"variant": variant, "dataset": dataset, "batch_size": batch_size, "device": str(trainer.device),
            "images_per_second": round(images_per_second, 1),
            "g_steps_per_second": round(images_per_second / (batch_size * trainer.variant.real_batches_per_step), 2),
            "repeats": [round(rate, 1) for rate in rates], **plain,
            "speedup": round(images_per_second / plain["plain_images_per_second"], 2)}


def timed_repeats(trainers: dict[str, Trainer], steps: int, repeats: int) -> dict[str, list[float]]:
    """images/s of ``steps`` more steps per trainer, ``repeats`` times, after each trainer's own
    ``config.steps`` of warm-up (allocator, oneDNN/cuDNN kernel choice). The repeats are
    interleaved so that the machine's drift hits every trainer alike."""
    for trainer in trainers.values():
        trainer.run()
    rates = {name: [] for name in trainers}
    for _ in range(repeats):
        for name, trainer in trainers.items():
            rates[name].append(trainer.run(until=trainer.step + steps).images_per_second)
    return rates


class PerImageDataset(torch.utils.data.Dataset):
    """What a torchvision dataset does: each image through PIL, ToTensor and Normalize on its own."""

    def __init__(self, data: ImageDataset):
        from torchvision import transforms

        channels = data.image_shape[0]
        self.data = data
        self.transform = transforms.Compose([transforms.ToTensor(),
                                             transforms.Normalize([0.5] * channels, [0.5] * channels)])

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        image = self.data.images[index].permute(1, 2, 0).squeeze(-1).numpy()
        return self.transform(Image.fromarray(image)), int(self.data.labels[index])


def plain_loop_throughput(variant: str, *, dataset: str = "fashion-mnist", steps: int = 40, repeats: int = 3,
                          batch_size: int = 64, device: str = "auto") -> dict:
    """The baseline: the loop most GAN repositories write around the same variant (networks,
    hyperparameters, train_step). A DataLoader over per-image transforms, each batch copied to
    the device, every loss read with .item() every step. Median images/s, and the share of the
    loop's time spent waiting for data."""
    device = resolve_device(device)
    data = load_dataset(dataset, "train")
    torch.manual_seed(0)
    model = get_variant(variant)(data.image_shape, data.num_classes).to(device)
    loader = torch.utils.data.DataLoader(PerImageDataset(data), batch_size=batch_size, shuffle=True, drop_last=True)

    def forever():
        while True:
            yield from loader

    stream = forever()

    def step() -> float:
        started = time.perf_counter()
        parts = [next(stream) for _ in range(model.real_batches_per_step)]
        real = torch.cat([images for images, _ in parts]).to(device)
        labels = torch.cat([labels for _, labels in parts]).to(device)
        loading = time.perf_counter() - started
        for value in model.train_step(real, labels).values():
            value.item()
        return loading

    for _ in range(5):  # warm-up, as for the engine
        step()
    rates, shares = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        loading = sum(step() for _ in range(steps))
        elapsed = time.perf_counter() - started
        rates.append(steps * batch_size * model.real_batches_per_step / elapsed)
        shares.append(loading / elapsed)
    return {"plain_images_per_second": round(statistics.median(rates), 1),
            "plain_data_share": round(statistics.median(shares), 3),
            "plain_repeats": [round(rate, 1) for rate in rates]}


def overhead(variant: str = REFERENCE_VARIANT, *, tracking: bool, doctor: bool, dataset: str = "fashion-mnist",
             steps: int = 200, repeats: int = 3, device: str = "auto") -> dict:
    """Median images/s of the engine with MLflow logging (losses by step, one sample grid per
    repeat) and/or the doctor's checks on, against both off: same variant, settings and seed."""
    from bench.schema import study_tags, trial_tags
    from bench.tracking import Tracking, TrackingStore

    with tempfile.TemporaryDirectory() as folder:
        config = dict(dataset=dataset, steps=5, device=device, sample_every=steps, checkpoint_every=10**9)
        observers, run = [], None
        if tracking:
            store = TrackingStore.open(f"sqlite:///{folder}/mlflow.db", create=True)
            client = Tracking(store, "perf", artifacts=Path(folder) / "artifacts")
            logged = TrainConfig(variant, **config)
            parent = client.start_parent(study_tags("perf", [variant], dataset, logged.features, []), {})
            run = client.start_trial(parent, logged, trial_tags(logged, 0, study="perf"))
            observers = [run]
        trainers = {"on": Trainer(TrainConfig(variant, doctor=doctor, **config), Path(folder) / "on",
                                  progress=False, observers=observers),
                    "off": Trainer(TrainConfig(variant, doctor=False, **config), Path(folder) / "off", progress=False)}
        rates = timed_repeats(trainers, steps, repeats)
        if run is not None:
            client.end(run.run_id, "complete")
    medians = {name: statistics.median(values) for name, values in rates.items()}
    return {"variant": variant, "steps": steps, "tracking": tracking, "doctor": doctor,
            "on_images_per_second": round(medians["on"], 1), "off_images_per_second": round(medians["off"], 1),
            "ratio": round(medians["on"] / medians["off"], 3),
            "repeats": {name: [round(rate, 1) for rate in values] for name, values in rates.items()}}


def time_to_quality(variant: str, *, threshold: float, dataset: str = "fashion-mnist", eval_every: int | None = None,
                    samples: int = 2000, max_seconds: float = 300, seed: int = 0, device: str = "auto",
                    hparams: dict[str, HParamValue] | None = None, amp: str = "auto") -> dict:
    """Seconds of training (wall clock and this process's CPU time, evaluations excluded) until
    ``variant`` (at its defaults, or ``hparams``) first scores fid_domain below ``threshold``, evaluated on
    ``samples`` images every ``eval_every`` generator steps (default: every 200 real batches,
    so 40 steps for a WGAN with n_critic 5); gives up after ``max_seconds``. The whole curve is kept."""
    config = TrainConfig(variant, dataset=dataset, seed=seed, device=device, hparams=hparams or {}, amp=amp)
    trainer = Trainer(config, progress=False)
    eval_every = eval_every or max(1, 200 // trainer.variant.real_batches_per_step)
    scorer = Scorer(dataset, "domain", device=trainer.device)

    def fid() -> float:
        return scorer.score(trainer.variant, samples, seed=seed + 1)["fid_domain"]

    untrained, wall, cpu, curve = fid(), 0.0, 0.0, []
    while wall < max_seconds:
        started, started_cpu = time.perf_counter(), time.process_time()
        trainer.run(until=trainer.step + eval_every)
        synchronize(trainer.device)
        wall += time.perf_counter() - started
        cpu += time.process_time() - started_cpu
        curve.append({"step": trainer.step, "seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
                      "fid_domain": round(fid(), 2)})
        if curve[-1]["fid_domain"] < threshold:
            break
    reached = curve[-1] if curve[-1]["fid_domain"] < threshold else None
    return {"variant": variant, "hparams": hparams or {}, "threshold": threshold, "max_seconds": max_seconds,
            "device": str(trainer.device), "precision": trainer.precision,
            "eval_every": eval_every,
            "samples": samples, "untrained_fid_domain": round(untrained, 2),
            "seconds": reached and reached["seconds"], "cpu_seconds": reached and reached["cpu_seconds"],
            "steps": reached and reached["step"], "best_fid_domain": min(point["fid_domain"] for point in curve),
            "curve": curve}


PARALLEL_STUDY = """\
description = "bench perf: a fixed small study, timed with 1 and 2 workers"
dataset = "{dataset}"
trials = {trials}
sampler = "random"
pruner = "none"

[budget]
steps = {steps}
eval_every = {eval_every}
eval_samples = 1000

[space]
lr = {{ low = 1e-4, high = 4e-4, log = true }}
"""


def parallel_study(variant: str = REFERENCE_VARIANT, *, workers: tuple[int, ...] = (1, 2), trials: int = 4,
                   steps: int = 300, storage: str | None = None, dataset: str = "fashion-mnist",
                   device: str = "auto") -> dict:
    """Trials per hour of one fixed small study (no pruning, so every trial does the same work)
    run by ``bench run --workers K`` for each K, each in a fresh folder: start-up, evaluation,
    logging and the workers' own start-up all count, as they do for a user. ``storage``: the
    Optuna storage (e.g. a PostgreSQL URL; each K gets a study of its own there), else a
    journal file in each folder."""
    import subprocess
    import sys

    Scorer(dataset, "domain", device=resolve_device(device))  # the real features, computed once, shared below
    cache = FEATURE_CACHE.resolve()
    rows = []
    for count in workers:
        with tempfile.TemporaryDirectory() as folder:
            folder = Path(folder)
            (folder / "results").mkdir()
            (folder / "results" / "cache").symlink_to(cache, target_is_directory=True)
            study = folder / f"parallel_{count}w_{os.getpid()}_{time.time_ns()}.toml"
            study.write_text(PARALLEL_STUDY.format(dataset=dataset, trials=trials, steps=steps,
                                                   eval_every=steps // 2))
            command = [sys.executable, "-m", "bench.cli", "run", "--variant", variant, "--study", str(study),
                       "--workers", str(count), "--device", device] + (["--storage", storage] if storage else [])
            env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
            started = time.perf_counter()
            done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
            seconds = round(time.perf_counter() - started, 1)  # the rate below derives from the figure reported
            if done.returncode != 0:
                raise RuntimeError(f"bench run --workers {count} failed:\n{done.stderr[-2000:]}")
        rows.append({"workers": count, "threads_per_worker": max(1, torch.get_num_threads() // count),
                     "seconds": seconds, "trials_per_hour": round(trials * 3600 / seconds, 1)})
    for row in rows:
        row["speedup"] = round(row["trials_per_hour"] / rows[0]["trials_per_hour"], 2)
    return {"variant": variant, "trials": trials, "steps": steps, "dataset": dataset,
            "storage": redact(storage) if storage else "journal file", "runs": rows}


def hardware_limit(variant: str = REFERENCE_VARIANT, *, hparams: dict[str, HParamValue] | None = None,
                   dataset: str = "fashion-mnist", steps: int = 40, repeats: int = 3, device: str = "auto",
                   top: int = 10) -> dict:
    """The fraction of the device's matmul throughput (in the training's precision) a training step
    of ``variant`` achieves (its FLOPs counted by torch's FlopCounterMode), and where the time goes: the operators that
    take the most self time in a torch.profiler trace of ``steps`` steps."""
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    trainer = Trainer(TrainConfig(variant, dataset=dataset, steps=5, device=device, log_every=steps, doctor=False,
                                  hparams=hparams or {}), progress=False)
    batch = trainer.config.batch_size * trainer.variant.real_batches_per_step
    real, labels = trainer.batches.next(batch)
    try:
        with FlopCounterMode(display=False) as counter, trainer.autocast():
            trainer.variant.train_step(real, labels)
    except RuntimeError as error:
        if "autograd.grad()" not in str(error):
            raise
        raise ConfigError(f"--roofline {variant}: torch's FlopCounterMode cannot count a step that differentiates "
                          "a gradient (a gradient penalty); choose a variant without one, e.g. dcgan, or gan with "
                          "--set arch=lucic") from None
    step_flops = counter.get_total_flops()
    rate = statistics.median(timed_repeats({"engine": trainer}, steps, repeats)["engine"])
    steps_per_second = rate / batch
    peak = matmul_gflops(device=device, dtype=trainer.amp_dtype or torch.float32)
    achieved = step_flops * steps_per_second / 1e9
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if trainer.device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        trainer.run(until=trainer.step + steps)
    events = sorted(profiler.key_averages(), key=lambda event: event.self_cpu_time_total, reverse=True)
    total = sum(event.self_cpu_time_total for event in events)
    return {"variant": variant, "hparams": hparams or {}, "device": str(trainer.device),
            "precision": trainer.precision, "step_gflop": round(step_flops / 1e9, 3),
            "g_steps_per_second": round(steps_per_second, 2), "achieved_gflops": round(achieved, 1),
            "matmul_gflops": round(peak, 1), "fraction_of_matmul": round(achieved / peak, 3),
            "top_operators": [{"name": event.key, "self_cpu_share": round(event.self_cpu_time_total / total, 3),
                               "calls": event.count} for event in events[:top]]}


@dataclass(frozen=True)
class PerfPlan:
    """What `bench perf` measures. The slow measurements are opt-in: time to quality
    (``quality_threshold``: a fid_domain to reach), the parallel study (``parallel``: its worker
    counts) and the Inception extractor. ``hparams``: per variant, settings for its time to quality;
    ``compare_amp``: time to quality with bfloat16 autocast on and off, instead of at the default;
    ``roofline``: the variant (with its ``hparams``) whose step is set against the matmul peak."""

    variants: tuple[str, ...]
    dataset: str = "fashion-mnist"
    steps: int = 40
    repeats: int = 3
    device: str = "auto"
    scoring_samples: int = 10000
    overhead_steps: int = 200
    quality_threshold: float | None = None
    quality_seconds: float = 300
    parallel: tuple[int, ...] = ()
    parallel_storage: str | None = None
    hparams: dict[str, dict[str, HParamValue]] = field(default_factory=dict)
    compare_amp: bool = False
    roofline: str = REFERENCE_VARIANT
    inception: bool = False

    def check(self) -> None:
        """Refuses what no measurement can use, in seconds rather than after the others ran."""
        for name in (*self.variants, self.roofline):
            get_variant(name)
        check_samples("--scoring-samples is", self.scoring_samples)
        if self.quality_threshold is not None and not self.quality_threshold > 0:
            raise ConfigError(f"--time-to-quality must be a positive FID, got {self.quality_threshold}")
        if any(count < 1 for count in self.parallel):
            raise ConfigError(f"--parallel worker counts must be at least 1, got {','.join(map(str, self.parallel))}")
        if self.parallel_storage is not None:
            check_storage(self.parallel_storage)
        if self.compare_amp and self.quality_threshold is not None:
            autocast_dtype(resolve_device(self.device), "on")  # refused where bfloat16 is not native


def run_perf(plan: PerfPlan, out: Path | None) -> dict:
    """Every measurement of ``plan``, written to ``out`` as JSON (and, with time to quality, its curves as a PNG)."""
    plan.check()
    variants, dataset, steps, repeats, device = plan.variants, plan.dataset, plan.steps, plan.repeats, plan.device
    # First: the one measurement a variant can refuse (its FLOPs), in seconds rather than after the others.
    hardware = hardware_limit(plan.roofline, hparams=plan.hparams.get(plan.roofline), dataset=dataset, steps=steps,
                              repeats=repeats, device=device)
    report = {"meta": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                       "machine": platform.machine(), "processor": platform.processor()},
              "training": [training_throughput(name, dataset=dataset, steps=steps, repeats=repeats, device=device)
                           for name in variants],
              "scoring": scoring_seconds(dataset=dataset, samples=plan.scoring_samples, real_samples=REAL_SAMPLES, repeats=3,
                                         device=device),
              "overhead": {name: overhead(tracking=name != "doctor", doctor=name != "tracking", steps=plan.overhead_steps,
                                          dataset=dataset, repeats=repeats, device=device)
                           for name in ("tracking", "doctor", "both")},
              "hardware": hardware}
    if plan.quality_threshold is not None:
        report["time_to_quality"] = [time_to_quality(name, threshold=plan.quality_threshold, dataset=dataset,
                                                     max_seconds=plan.quality_seconds, device=device,
                                                     hparams=plan.hparams.get(name), amp=amp)
                                     for name in variants for amp in (("on", "off") if plan.compare_amp else ("auto",))]
    if plan.parallel:
        report["parallel"] = parallel_study(workers=plan.parallel, storage=plan.parallel_storage, dataset=dataset,
                                            device=device)
    if plan.inception:
        report["inception"] = inception_throughput(device=device)
        report["prdc"] = prdc_cost()
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        if "time_to_quality" in report:
            plot_time_to_quality(report["time_to_quality"], out.with_suffix(".png"))
    return report


def plot_time_to_quality(rows: list[dict], path: Path) -> None:
    """fid_domain against training seconds, a panel per variant and setting, a line per precision."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[str, list[dict]] = {}
    for row in rows:
        settings = settings_text(row["hparams"])
        panels.setdefault(row["variant"] + settings, []).append(row)
    columns = min(4, len(panels))
    lines = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(lines, columns, figsize=(3.2 * columns, 2.6 * lines), squeeze=False)
    for axis, (title, panel) in zip(axes.flat, panels.items()):
        for row in panel:
            seconds = [0.0] + [point["seconds"] for point in row["curve"]]
            fids = [row["untrained_fid_domain"]] + [point["fid_domain"] for point in row["curve"]]
            axis.plot(seconds, fids, marker=".", label=row["precision"])
        axis.axhline(panel[0]["threshold"], color="grey", linestyle=":", linewidth=1)
        axis.set(title=title, xlabel="training seconds", ylabel="fid_domain")
        axis.legend(fontsize="small")
    for axis in list(axes.flat)[len(panels):]:
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def settings_text(hparams: dict[str, HParamValue]) -> str:
    """`` key=value`` for each setting, as a report line names a run's hyperparameters."""
    return "".join(f" {key}={value}" for key, value in hparams.items())


def perf_lines(report: dict) -> list[str]:
    """The report as `bench perf` prints it: a table of the training rows, then a line per measurement."""
    lines = [f"{'variant':<10} {'images/s':>9} {'G steps/s':>10} {'plain loop':>11} {'speedup':>8} "
             f"{'plain: data share':>18}  device"]
    for row in report["training"]:
        lines.append(f"{row['variant']:<10} {row['images_per_second']:>9.0f} {row['g_steps_per_second']:>10.2f} "
                     f"{row['plain_images_per_second']:>11.0f} {row['speedup']:>8.2f} "
                     f"{row['plain_data_share']:>18.1%}  {row['device']}")
    scoring = report["scoring"]
    lines.append(f"scoring {scoring['samples']} samples (fid_domain, cached real statistics): {scoring['seconds']} s")
    for name, row in report["overhead"].items():
        lines.append(f"{name} overhead ({row['variant']}, {row['steps']} steps per repeat): "
                     f"{row['on_images_per_second']:.0f} images/s with "
                     f"{'MLflow logging and the doctor' if name == 'both' else name}, "
                     f"{row['off_images_per_second']:.0f} without (ratio {row['ratio']})")
    hardware = report["hardware"]
    settings = settings_text(hardware.get("hparams", {}))
    lines.append(f"hardware limit ({hardware['variant']}{settings}): {hardware['step_gflop']} GFLOP per step x "
                 f"{hardware['g_steps_per_second']} steps/s = {hardware['achieved_gflops']} GFLOP/s, "
                 f"{hardware['fraction_of_matmul']:.1%} of this device's matmul {hardware['matmul_gflops']} GFLOP/s "
                 f"({hardware['precision']}); "
                 "top operators: " + ", ".join(f"{op['name']} {op['self_cpu_share']:.0%}"
                                               for op in hardware["top_operators"][:5]))
    for row in report.get("time_to_quality", []):
        reached = (f"{row['seconds']} s ({row['cpu_seconds']} CPU-s, step {row['steps']})" if row["seconds"]
                   else f"not within {row['max_seconds']:g} s (best {row['best_fid_domain']})")
        settings = settings_text(row.get("hparams", {}))
        lines.append(f"time to fid_domain < {row['threshold']:g} ({row['variant']}{settings}, {row['precision']}, untrained "
                     f"{row['untrained_fid_domain']}): {reached}")
    for row in report.get("parallel", {}).get("runs", []):
        lines.append(f"study of {report['parallel']['trials']} trials ({report['parallel']['storage']}) with "
                     f"--workers {row['workers']} ({row['threads_per_worker']} threads each): {row['seconds']} s, "
                     f"{row['trials_per_hour']} trials/hour ({row['speedup']}x)")
    if "inception" in report:
        inception = report["inception"]
        for name in ("shipped", "rebuilt"):
            lines.append(f"inception features, {name}: {inception[name]['images_per_second_by_batch']} images/s "
                         f"by batch size ({inception['device']})")
        lines.append(f"inception speedup at the best batch sizes: {inception['speedup']}x; features differ by at most "
                     f"{inception['max_relative_difference']:.1e} (relative)")
        prdc = report["prdc"]
        lines.append(f"precision/recall/density/coverage, {prdc['samples']} vs {prdc['samples']} features of "
                     f"{prdc['dims']}: {prdc['seconds']} s (the real k-NN radii, cached after a first run: "
                     f"{prdc['real_radii_seconds']} s), peak memory {prdc['peak_mb']} MB over the features'")
    return lines
