"""Sample quality: torchmetrics FID on the features of a domain classifier.

The ``domain`` extractor is a small CNN trained by ganbench on the dataset's training split;
its penultimate layer (128-d) feeds torchmetrics' FrechetInceptionDistance as a custom feature
module. Its weights ship in bench/weights/ beside a card with its test accuracy, seed and the
command that trains it again. FIDs from different extractors are not comparable, so every
metric name carries the extractor's (``fid_domain``).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance

from bench.data import BatchSampler, ImageDataset, load_dataset, to_unit_range
from bench.errors import ConfigError

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


class DomainFeatures(nn.Module):
    """The classifier's features as a torchmetrics custom feature module (float [-1, 1] input)."""

    def __init__(self, classifier: DomainClassifier):
        super().__init__()
        self.classifier = classifier.eval().requires_grad_(False)
        self.num_features = classifier.num_features

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier.features(images.float())

    def train(self, mode: bool = True) -> "DomainFeatures":
        return super().train(False)  # a feature extractor is always in eval mode


def weights_path(dataset: str) -> Path:
    return WEIGHTS_DIR / f"domain-{dataset}.pt"


def load_domain_classifier(dataset: str, device: torch.device | str = "cpu") -> DomainClassifier:
    """The shipped classifier for ``dataset``; a missing one names the command that trains it."""
    path = weights_path(dataset)
    if not path.exists():
        raise ConfigError(f"no domain classifier for '{dataset}' ({path} is missing); train one with "
                          f"'bench features train --dataset {dataset}'")
    state = torch.load(path, map_location=device, weights_only=True)
    model = DomainClassifier(tuple(state["image_shape"]), state["num_classes"])
    model.load_state_dict(state["model"])
    return model.to(device).eval()


@torch.no_grad()
def accuracy(model: nn.Module, dataset: ImageDataset, device: torch.device, batch: int = 500) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(dataset), batch):
        images = to_unit_range(dataset.images[start:start + batch].to(device))
        correct += (model(images).argmax(1).cpu() == dataset.labels[start:start + batch]).sum().item()
    return correct / len(dataset)


def train_domain_classifier(dataset: str, *, epochs: int = 8, seed: int = 0, batch_size: int = 128,
                            device: torch.device | str = "cpu", log=print) -> tuple[DomainClassifier, dict]:
    """Trains the domain classifier on ``dataset``'s train split; returns it and its card."""
    device = torch.device(device)
    train_set, test_set = load_dataset(dataset, "train"), load_dataset(dataset, "test")
    torch.manual_seed(seed)
    model = DomainClassifier(train_set.image_shape, train_set.num_classes).to(device)
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
            "command": f"bench features train --dataset {dataset} --epochs {epochs} --seed {seed}"}
    return model.eval(), card


def save_domain_classifier(model: DomainClassifier, card: dict) -> Path:
    """Writes the weights and their card (with the weights' sha256) to bench/weights/."""
    path = weights_path(card["dataset"])
    num_classes = model.classify[-1].out_features
    torch.save({"model": model.state_dict(), "image_shape": model.image_shape, "num_classes": num_classes}, path)
    card = {**card, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    return path


def domain_fid(classifier: DomainClassifier) -> FrechetInceptionDistance:
    """A torchmetrics FID on the classifier's features that keeps its real statistics across
    ``reset()``, so that many generators can be scored against one pass over the real data."""
    return FrechetInceptionDistance(feature=DomainFeatures(classifier), reset_real_features=False)
