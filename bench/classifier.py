"""The domain classifier: a small CNN trained by ganbench on a dataset's training split, whose
penultimate layer is the ``domain`` feature extractor and whose predictions give the class-aware
metrics. Its network, training, weights files (shipped in bench/weights/, trained by users under
results/classifiers/) and the checks a weights file passes before use."""

from __future__ import annotations

import functools
import hashlib
import json
import re
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.data import (IMAGE_FOLDER, BatchSampler, ImageDataset, check_dataset_name, load_dataset, split_subset,
                        to_unit_range)
from bench.errors import ConfigError
from bench.locations import CLASSIFIERS
from bench.readers import load_tensors, read_bytes
from bench.scores import EXTRACTORS

WEIGHTS_DIR = Path(__file__).parent / "weights"


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


def file_stem(dataset: str) -> str:
    """The dataset's name as files are named for it: the name, or for an image folder its last part
    and a hash of its whole path (which holds slashes and may be long)."""
    check_dataset_name(dataset)
    dataset = split_subset(dataset)[0]  # a subset is scored with its whole dataset's classifier and statistics
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
    dataset = split_subset(dataset)[0]
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
        raise refused("is not one `bench features train` wrote ("
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
    whole, size = split_subset(dataset)
    if size is not None:
        raise ConfigError(f"a domain classifier learns from the whole dataset, and scores its subsets too: "
                          f"train it with --dataset {whole}")
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
