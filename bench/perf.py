"""Training throughput and scoring speed, measured the way a user can rerun it (`bench perf`).

The machine is noisy, so every figure is the median of several repeats, each timed after a
warm-up on the same trainer.
"""

from __future__ import annotations

import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.data import ImageDataset, load_dataset, to_unit_range
from bench.engine import TrainConfig, Trainer, resolve_device
from bench.registry import get_variant
from bench.scoring import InceptionFeatures, Scorer


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


def overhead(variant: str = "dcgan", *, tracking: bool, doctor: bool, dataset: str = "fashion-mnist",
             steps: int = 200, repeats: int = 3, device: str = "auto") -> dict:
    """Median images/s of the engine with MLflow logging (losses by step, one sample grid per
    repeat) and/or the doctor's checks on, against both off: same variant, settings and seed."""
    from bench.tracking import Tracking

    with tempfile.TemporaryDirectory() as folder:
        config = dict(dataset=dataset, steps=5, device=device, sample_every=steps, checkpoint_every=10**9)
        observers, run = [], None
        if tracking:
            client = Tracking(f"sqlite:///{folder}/mlflow.db", "perf", artifacts=Path(folder) / "artifacts")
            parent = client.start_parent({"bench.study": "perf", "bench.variant": variant}, {})
            run = client.start_trial(parent, 0, TrainConfig(variant, **config), {})
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


def scoring_time(*, dataset: str = "fashion-mnist", samples: int = 10000, repeats: int = 3,
                 device: str = "auto") -> dict:
    """Median seconds to generate and score ``samples`` DCGAN images with fid_domain (and KID
    and the class metrics) against cached real statistics."""
    device = resolve_device(device)
    scorer = Scorer(dataset, "domain", device=device)  # builds the cache on a first run
    data = load_dataset(dataset, "test")
    variant = get_variant("dcgan")(data.image_shape, data.num_classes).to(device, memory_format=torch.channels_last)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        scorer.score(variant, samples)
        times.append(time.perf_counter() - started)
    return {"samples": samples, "device": str(device), "seconds": round(statistics.median(times), 2),
            "repeats": [round(t, 2) for t in times]}


def inception_throughput(*, batch_sizes: tuple[int, ...] = (8, 32, 64), images: int = 64,
                         device: str = "auto") -> dict:
    """Inception feature extraction images/s for 28x28 grayscale input at several batch sizes."""
    device = resolve_device(device)
    extractor = InceptionFeatures().to(device)
    batch = to_unit_range(load_dataset("fashion-mnist", "test").images[:images]).to(device)
    rates = {}
    with torch.no_grad():
        extractor(batch[:2])  # warm-up
        for size in batch_sizes:
            started = time.perf_counter()
            for chunk in batch.split(size):
                extractor(chunk)
            if device.type == "cuda":
                torch.cuda.synchronize()
            rates[size] = round(images / (time.perf_counter() - started), 2)
    return {"device": str(device), "images_per_second_by_batch": rates,
            "best_batch": max(rates, key=rates.get), "best_images_per_second": max(rates.values())}


def run_perf(variants: list[str], out: Path | None, *, dataset: str = "fashion-mnist", steps: int = 40,
             repeats: int = 3, device: str = "auto", inception: bool = False, scoring_samples: int = 10000,
             overhead_steps: int = 200) -> dict:
    """Every measurement, written to ``out`` as JSON."""
    report = {"meta": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                       "machine": platform.machine(), "processor": platform.processor()},
              "training": [training_throughput(name, dataset=dataset, steps=steps, repeats=repeats, device=device)
                           for name in variants],
              "scoring": scoring_time(dataset=dataset, samples=scoring_samples, device=device),
              "overhead": {name: overhead(tracking=name != "doctor", doctor=name != "tracking", steps=overhead_steps,
                                          dataset=dataset, repeats=repeats, device=device)
                           for name in ("tracking", "doctor", "both")}}
    if inception:
        report["inception"] = inception_throughput(device=device)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    return report
