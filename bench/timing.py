"""Timings of this machine and of scoring that `bench perf` and `python -m bench.device_check` both
report: a device's matmul throughput, Inception's images/s and its agreement across devices, the
seconds a trial's scoring takes, and the cost of precision/recall at scale."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.data import load_dataset, to_unit_range
from bench.devices import resolve_device
from bench.engine import TrainConfig, Trainer
from bench.inception import InceptionFeatures, ShippedInception
from bench.locations import FEATURE_CACHE
from bench.registry import REFERENCE_VARIANT
from bench.scoring import Scorer, ieee_float32


def synchronize(device: torch.device) -> None:
    """Waits for the device's queued work, so that a timer around it times the work (a no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def real_images(count: int) -> torch.Tensor:
    """The first ``count`` Fashion-MNIST test images in [-1, 1], on the CPU: the input of the Inception timings."""
    return to_unit_range(load_dataset("fashion-mnist", "test").images[:count])


def matmul_gflops(*, size: int = 2048, repeats: int = 5, device: str = "auto",
                  dtype: torch.dtype = torch.float32) -> float:
    """This device's matrix-multiply throughput in ``dtype``: the best of ``repeats`` timed products."""
    device = resolve_device(device)
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    a @ b  # warm-up
    best = math.inf
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def scoring_seconds(*, samples: int = 10000, real_samples: int | None = None, features: str = "domain",
                    dataset: str = "fashion-mnist", repeats: int = 1, device: str | torch.device = "auto",
                    cache: Path = FEATURE_CACHE) -> dict:
    """Seconds to compute (or load from ``cache``) the real statistics of ``real_samples`` test images
    (default: ``samples``), then the median of ``repeats`` scorings of ``samples`` images of an
    untrained DCGAN (FID, KID, precision and recall, the class metrics), as a trial's evaluation does."""
    device = resolve_device(str(device))
    started = time.perf_counter()
    scorer = Scorer(dataset, features, real_samples=real_samples or samples, device=device, cache_dir=cache)
    real_seconds = time.perf_counter() - started
    generator = Trainer(TrainConfig(REFERENCE_VARIANT, dataset, device=str(device), doctor=False),
                        progress=False).variant
    times, scores = [], {}
    for _ in range(repeats):
        started = time.perf_counter()
        scores = scorer.score(generator, samples)
        synchronize(device)
        times.append(time.perf_counter() - started)
    return {"samples": samples, "features": features, "device": str(device), "real_seconds": round(real_seconds, 2),
            "seconds": round(statistics.median(times), 2), "repeats": [round(t, 2) for t in times],
            f"untrained_fid_{features}": round(scores[f"fid_{features}"], 1)}


def inception_throughput(*, batch_sizes: tuple[int, ...] = (4, 8, 16, 64), images: int = 128, repeats: int = 3,
                         device: str = "auto") -> dict:
    """Inception feature extraction images/s for 28x28 grayscale input at several batch sizes, for
    the network as shipped (before) and as ganbench runs it (after), with how far their features differ."""
    device = resolve_device(device)
    batch = real_images(images).to(device)
    report: dict = {"device": str(device), "images": images}
    features = {}
    for name, extractor in (("shipped", ShippedInception()), ("rebuilt", InceptionFeatures())):
        extractor = extractor.to(device)
        rates = {}
        with torch.no_grad():
            features[name] = torch.cat([extractor(chunk) for chunk in batch.split(8)])  # also the warm-up
            for size in batch_sizes:
                seconds = []
                for _ in range(repeats):
                    started = time.perf_counter()
                    for chunk in batch.split(size):
                        extractor(chunk)
                    synchronize(device)
                    seconds.append(time.perf_counter() - started)
                rates[size] = round(images / statistics.median(seconds), 2)
        report[name] = {"images_per_second_by_batch": rates, "best_batch": max(rates, key=rates.get),
                        "best_images_per_second": max(rates.values())}
    report["speedup"] = round(report["rebuilt"]["best_images_per_second"] /
                              report["shipped"]["best_images_per_second"], 2)
    difference = (features["rebuilt"] - features["shipped"]).norm(dim=1) / features["shipped"].norm(dim=1)
    report["max_relative_difference"] = float(difference.max())
    return report


def inception_difference(device: torch.device, images: int) -> float:
    """The largest relative difference (feature-vector norm) between Inception features of real
    images computed on ``device`` and on the CPU; the project promises at most 1e-4."""
    batch = real_images(images)
    extractor = InceptionFeatures()
    with torch.no_grad(), ieee_float32():
        on_cpu = extractor(batch)
        on_device = extractor.to(device)(batch.to(device)).cpu()
    return ((on_device - on_cpu).norm(dim=1) / on_cpu.norm(dim=1)).max().item()


PRDC_PROBE = """
import json, resource, sys, time, torch
from bench.scores import nearest_neighbour_radii, precision_recall_density_coverage
samples, dims = int(sys.argv[1]), int(sys.argv[2])
generator = torch.Generator().manual_seed(0)
real, fake = torch.randn(samples, dims, generator=generator), torch.randn(samples, dims, generator=generator)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
radii = nearest_neighbour_radii(real)
radii_seconds = time.perf_counter() - started
precision_recall_density_coverage(real, fake, radii)
print(json.dumps({"real_radii_seconds": round(radii_seconds, 2),
                  "seconds": round(time.perf_counter() - started - radii_seconds, 2),
                  "peak_mb": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)}))
"""


def prdc_cost(*, samples: int = 10000, dims: int = InceptionFeatures.num_features) -> dict:
    """Seconds and memory of precision/recall/density/coverage at ``samples`` real vs ``samples``
    generated features (Inception's 2048 by default), in a fresh process so that its peak resident
    memory over the features already loaded is this computation's alone. Gaussian features: the
    cost depends on the sizes only."""
    result = subprocess.run([sys.executable, "-c", PRDC_PROBE, str(samples), str(dims)], capture_output=True,
                            text=True, check=True)
    return {"samples": samples, "dims": dims, **json.loads(result.stdout)}
