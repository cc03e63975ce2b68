"""Feature extractors: a network that maps images in [-1, 1] to the features every score is computed
from, with what scoring needs to know of it (its name in metric names, its weights file, its batch
size). The ``domain`` one is here; the ``inception`` one in :mod:`bench.inception`."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from bench.classifier import DomainClassifier, file_sha256, load_domain_classifier, weights_path

SPOT_ROWS = 8
"""Rows of a real-feature cache entry checked before the entry is used: their features recomputed by
the extractor (fewer for Inception on a CPU), their radii measured from the cached features."""


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

    def class_logits(self, features: Tensor) -> Tensor | None:
        """The network's ImageNet class logits for its ``features``, which the Inception Score needs;
        None where it has no such classes."""
        return None

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


class PrecomputedFeatures(nn.Module):
    """Lets torchmetrics' FID take features instead of images, so that the extractor runs once per
    batch for every score and cached real features load without recomputing."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features
