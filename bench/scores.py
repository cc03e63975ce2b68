"""Every score ganbench reports, in one table: which way is better, what it needs, and how it is
computed from one scoring pass (torchmetrics' ``higher_is_better``, declared once). Study files,
the leaderboard, ``bench compare``, the report and the progress line read directions from here;
:class:`bench.scoring.Scorer` extracts features and hands each score its :class:`Evidence`.
Adding a score is one row in ``SCORES`` and, when it needs one, its function below.

A score computed on an extractor's features is named ``<score>_<extractor>`` (``fid_domain``,
``recall_inception``): values from different extractors are not comparable.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor

if TYPE_CHECKING:
    from torchmetrics.image.fid import FrechetInceptionDistance

EXTRACTORS = ("domain", "inception")
NEAREST_K = 5
"""Neighbours for precision, recall, density and coverage, as in StudioGAN and the prdc package."""
MIN_SAMPLES = NEAREST_K + 1
"""The fewest images on either side of a scoring: each image's k-th nearest other image must exist."""
REAL_SAMPLES = 10000
"""Real test images the real statistics come from by default (all of a smaller split): the papers' 10,000."""


def check_samples(what: str, count: int, fix: str = "") -> None:
    """ConfigError, ``what`` holding ``count`` images (``what`` 'is N, ...' reads on), when a scoring
    cannot use that few: below MIN_SAMPLES; ``fix`` ends the message."""
    if count < MIN_SAMPLES:
        from bench.errors import ConfigError

        raise ConfigError(f"{what} {count}: scoring needs at least {MIN_SAMPLES} (precision, recall, density and "
                          f"coverage measure each image's distance to its {NEAREST_K}th nearest neighbour){fix}")


@dataclass
class Evidence:
    """What one scoring pass over generated images gives every score."""

    real: Tensor
    """The real images' features (N, D), on the extractor the scores are named for."""
    real_radii: Tensor
    """Each real feature's distance to its k-th nearest real neighbour (:func:`nearest_neighbour_radii`)."""
    fake: Tensor
    """The generated images' features (M, D)."""
    fid: FrechetInceptionDistance
    """torchmetrics' FID over pass-through features, holding the real ones."""
    kid: KernelDistance
    """KID against the real features, their subsets drawn once."""
    real_classes: Tensor | None
    """The real split's class histogram, where the dataset has a domain classifier."""
    predicted: Tensor | None
    """The classes the domain classifier sees in the generated images."""
    labels: Tensor | None
    """The classes a conditional generator was asked for."""
    codes: Tensor | None
    """The categorical codes the generated images came from (InfoGAN)."""
    class_logits: Tensor | None = None
    """The Inception network's ImageNet class logits of the generated images, from their features
    (no second pass), where its classification weights are on this machine."""

    def has(self, needs: str) -> bool:
        classified = self.predicted is not None  # labels and codes are checked against the classifier's classes
        return {"": True, "classifier": classified, "labels": classified and self.labels is not None,
                "codes": classified and self.codes is not None, "logits": self.class_logits is not None}[needs]

    @functools.cached_property
    def inception_score(self) -> tuple[float, float]:
        return inception_score(self.class_logits)

    @functools.cached_property
    def prdc(self) -> dict[str, float]:
        """The four nearest-neighbour scores share one pass over the distances."""
        return precision_recall_density_coverage(self.real, self.fake, self.real_radii)

    @functools.cached_property
    def generated_classes(self) -> Tensor:
        return class_histogram(self.predicted, len(self.real_classes))


@dataclass(frozen=True)
class Score:
    name: str
    higher_is_better: bool
    per_extractor: bool
    """Computed on an extractor's features, and named for it."""
    compute: Callable[[Evidence], float]
    needs: str = ""
    """What it needs beyond generated images: "classifier" (the dataset's domain classifier),
    "labels" (a conditional generator, and the classifier), "codes" (a categorical latent code, and
    the classifier), "logits" (the Inception network's classification weights)."""
    summary: str = ""
    ranked: bool = True
    """A score that compares generators (an objective, a leaderboard column); False for a value
    reported beside one (its spread)."""


def fid(evidence: Evidence) -> float:
    evidence.fid.reset()  # keeps the real features
    evidence.fid.update(evidence.fake, real=False)
    return float(evidence.fid.compute())


def kid(evidence: Evidence) -> float:
    return evidence.kid(evidence.fake)


def poly_kernel(x: Tensor, y: Tensor) -> Tensor:
    """KID's cubic polynomial kernel, (x·y / d + 1)³, torchmetrics' own (imported here: it takes
    seconds, and only scoring needs it)."""
    from torchmetrics.image.kid import poly_kernel

    return poly_kernel(x, y)


def off_diagonal_sum(features: Tensor) -> Tensor:
    kernel = poly_kernel(features, features)
    return kernel.sum(dtype=torch.float64) - kernel.diagonal().sum(dtype=torch.float64)


class KernelDistance:
    """KID as torchmetrics' ``KernelInceptionDistance`` computes it: the unbiased MMD² between
    random subsets of real and generated features, averaged over 100 subsets of 1000. The real
    subsets and their kernel sums do not change between evaluations, so they are drawn and summed
    once per scorer; where the generated set is one subset's size (every subset is all of it, in
    another order), its kernel sum is one and the cross terms are row sums of one real x generated
    kernel. That turns 300 kernels of 1000 x 1000 per evaluation into one of 10,000 x 1000."""

    def __init__(self, real: Tensor, *, subset_size: int = 1000, subsets: int = 100, seed: int = 0):
        self.real, self.subset_size, self.subsets, self.seed = real, subset_size, subsets, seed
        self._real_subsets: dict[int, tuple[Tensor, Tensor]] = {}

    def real_subsets(self, size: int) -> tuple[Tensor, Tensor]:
        """(subsets, size) indices into the real features, and each subset's off-diagonal kernel sum."""
        if size not in self._real_subsets:
            generator = torch.Generator().manual_seed(self.seed)
            indices = torch.stack([torch.randperm(len(self.real), generator=generator)[:size]
                                   for _ in range(self.subsets)]).to(self.real.device)
            sums = torch.stack([off_diagonal_sum(self.real[subset]) for subset in indices])
            self._real_subsets[size] = indices, sums
        return self._real_subsets[size]

    def fake_subsets(self, count: int, size: int) -> Tensor:
        """(subsets, size) indices into ``count`` generated features, the same for every call:
        an evaluation's score depends on its samples only."""
        generator = torch.Generator().manual_seed(self.seed + 1)
        return torch.stack([torch.randperm(count, generator=generator)[:size] for _ in range(self.subsets)])

    def __call__(self, fake: Tensor) -> float:
        m = min(self.subset_size, len(fake), len(self.real))
        real_indices, real_sums = self.real_subsets(m)
        if m == len(fake):
            fake_sums = off_diagonal_sum(fake).expand(self.subsets)
            cross_rows = poly_kernel(self.real, fake).sum(1, dtype=torch.float64)
            cross_sums = cross_rows[real_indices].sum(1)
        else:
            subsets = [fake[indices.to(fake.device)] for indices in self.fake_subsets(len(fake), m)]
            fake_sums = torch.stack([off_diagonal_sum(subset) for subset in subsets])
            cross_sums = torch.stack([poly_kernel(self.real[indices], subset).sum(dtype=torch.float64)
                                      for indices, subset in zip(real_indices, subsets)])
        mmd = (real_sums + fake_sums) / (m * (m - 1)) - 2 * cross_sums / m ** 2
        return mmd.mean().item()


def inception_score(logits: Tensor, splits: int = 10) -> tuple[float, float]:
    """Salimans et al. 2016's Inception Score of samples' class ``logits`` (N, classes):
    exp(E_x KL(p(y|x) || p(y))) in each of ``splits`` parts of the samples (torch.chunk's), then
    the mean and the standard deviation over the parts, as torchmetrics' ``InceptionScore`` computes
    it; there the samples are shuffled first, here they stay in their order (independent draws)."""
    probabilities, log_probabilities = logits.softmax(1), logits.log_softmax(1)
    scores = torch.stack([(p * (log_p - p.mean(0, keepdim=True).log())).sum(1).mean().exp()
                          for p, log_p in zip(probabilities.chunk(splits), log_probabilities.chunk(splits))])
    return scores.mean().item(), scores.std().item()


def class_kl(evidence: Evidence) -> float:
    # KL(real || generated) has a floor on empty bins, so that a missing class costs a large
    # but finite penalty.
    real, generated = evidence.real_classes, evidence.generated_classes
    return float((real * (real / generated.clamp_min(1e-4)).log()).sum())


def classes_covered(evidence: Evidence) -> float:
    # A class is covered when it gets at least a quarter of its real share (above the classifier's
    # usual confusions).
    return int((evidence.generated_classes >= 0.25 * evidence.real_classes).sum())


def code_accuracy(codes: Tensor, predicted: Tensor, num_classes: int) -> float:
    """Accuracy of ``predicted`` classes against ``codes`` under the best one-to-one
    code -> class matching (Hungarian algorithm), as for InfoGAN's unsupervised codes."""
    from scipy.optimize import linear_sum_assignment

    counts = torch.zeros(int(codes.max()) + 1, num_classes, dtype=torch.long)
    counts.index_put_((codes.cpu(), predicted.cpu()), torch.ones(len(codes), dtype=torch.long), accumulate=True)
    rows, cols = linear_sum_assignment(counts.numpy(), maximize=True)
    return counts[rows, cols].sum().item() / len(codes)


def class_histogram(classes: Tensor, num_classes: int) -> Tensor:
    return torch.bincount(classes.cpu(), minlength=num_classes).double() / len(classes)


def nearest_neighbour_radii(features: Tensor, k: int = NEAREST_K, chunk: int = 1000) -> Tensor:
    """Each row's distance to its k-th nearest other row (the row itself is its own nearest, at 0),
    in float64 as the prdc package's scikit-learn distances; ``chunk`` rows at a time, so that
    memory stays at chunk x N distances."""
    features = features.double()
    return torch.cat([torch.cdist(rows, features).kthvalue(k + 1, dim=1).values for rows in features.split(chunk)])


def spot_radii(features: Tensor, rows: Tensor, k: int = NEAREST_K) -> Tensor:
    """The k-NN radii of a few ``rows`` of ``features``, as :func:`nearest_neighbour_radii` gives them
    (float64), in one pass over the features, to check cached radii: the nearest candidates are ranked
    in float32, then measured in float64. Tens of milliseconds at 10,000 x 2048, where float64
    distances to every row take ten times as long."""
    chosen = features[rows]
    ranking = torch.linalg.vector_norm(features, dim=1).square()[None] - 2 * chosen @ features.T  # |f|² - 2 r·f
    candidates = ranking.topk(min(4 * k + 8, len(features)), dim=1, largest=False).indices
    exact = torch.linalg.vector_norm(features[candidates].double() - chosen.double()[:, None], dim=2)
    return exact.kthvalue(k + 1, dim=1).values


def precision_recall_density_coverage(real: Tensor, fake: Tensor, real_radii: Tensor, k: int = NEAREST_K,
                                      chunk: int = 1000) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) and density and coverage (Naeem et
    al. 2020) of ``fake`` features against ``real`` ones, whose k-NN radii are ``real_radii``: the
    prdc package's formulas, with its N x M distance matrix computed ``chunk`` generated samples at
    a time (at 10,000 x 10,000 the whole matrix would take 800 MB in float64)."""
    real, fake = real.double(), fake.double()
    fake_radii = nearest_neighbour_radii(fake, k, chunk)
    real_balls_holding = torch.zeros(len(fake), dtype=torch.float64, device=fake.device)
    recalled = torch.zeros(len(real), dtype=torch.bool, device=real.device)
    nearest_fake = torch.full((len(real),), math.inf, dtype=torch.float64, device=real.device)
    for start in range(0, len(fake), chunk):
        distances = torch.cdist(real, fake[start:start + chunk])  # (real, chunk)
        real_balls_holding[start:start + chunk] = (distances < real_radii[:, None]).sum(0)
        recalled |= (distances < fake_radii[start:start + chunk]).any(1)
        nearest_fake = torch.minimum(nearest_fake, distances.min(1).values)
    return {"precision": (real_balls_holding > 0).double().mean().item(),
            "recall": recalled.double().mean().item(),
            "density": (real_balls_holding.sum() / (k * len(fake))).item(),
            "coverage": (nearest_fake < real_radii).double().mean().item()}


SCORES = (
    Score("fid", False, True, fid, summary="Fréchet distance between Gaussian fits of real and generated features"),
    Score("kid", False, True, kid, summary="kernel (MMD) distance between real and generated features, unbiased"),
    Score("precision", True, True, lambda evidence: evidence.prdc["precision"],
          summary="fidelity: share of generated samples inside the real data's k-NN balls (Kynkäänniemi et al.)"),
    Score("recall", True, True, lambda evidence: evidence.prdc["recall"],
          summary="diversity: share of real samples inside the generated samples' k-NN balls"),
    Score("density", True, True, lambda evidence: evidence.prdc["density"],
          summary="fidelity, robust to outliers: real k-NN balls containing each sample, over k (Naeem et al.)"),
    Score("coverage", True, True, lambda evidence: evidence.prdc["coverage"],
          summary="diversity, robust to outliers: share of real k-NN balls that hold a generated sample"),
    Score("classes_covered", True, False, classes_covered, "classifier",
          summary="classes the classifier finds in at least a quarter of their real share"),
    Score("class_kl", False, False, class_kl, "classifier", summary="KL(real class histogram || generated)"),
    Score("label_accuracy", True, False,
          lambda evidence: (evidence.predicted.cpu() == evidence.labels.cpu()).double().mean().item(), "labels",
          summary="generated images classified as the class asked for"),
    Score("inception_score", True, False, lambda evidence: evidence.inception_score[0], "logits",
          summary="Inception Score (Salimans et al.): exp E KL(p(y|x) ‖ p(y)) over ImageNet's classes, mean of 10 "
                  "splits"),
    Score("inception_score_std", False, False, lambda evidence: evidence.inception_score[1], "logits",
          summary="the Inception Score's standard deviation over its 10 splits (its spread, not a ranking)",
          ranked=False),
    Score("code_accuracy", True, False,
          lambda evidence: code_accuracy(evidence.codes, evidence.predicted, len(evidence.real_classes)), "codes",
          summary="categorical code -> class agreement under the best one-to-one matching"),
)


def metric_name(score: Score, extractor: str) -> str:
    return f"{score.name}_{extractor}" if score.per_extractor else score.name


def score_all(evidence: Evidence, extractor: str) -> dict[str, float]:
    """Every score the evidence allows, by metric name."""
    return {metric_name(score, extractor): score.compute(evidence) for score in SCORES if evidence.has(score.needs)}


def score_of(metric: str) -> Score | None:
    """The score a metric name denotes (``recall_inception`` -> recall), or None for losses and
    throughput."""
    for score in SCORES:
        if metric == score.name and not score.per_extractor:
            return score
        if score.per_extractor and metric.startswith(score.name + "_") \
                and metric.removeprefix(score.name + "_") in EXTRACTORS:
            return score
    return None


def extractor_of(metric: str) -> str | None:
    """The extractor a per-extractor score was computed on (``recall_inception`` -> inception); None
    for the class-aware scores and for what is not a score."""
    score = score_of(metric)
    return metric.removeprefix(score.name + "_") if score is not None and score.per_extractor else None


def is_score(metric: str) -> bool:
    """Scores compare generators; losses, throughput and a score's spread do not."""
    score = score_of(metric)
    return score is not None and score.ranked


def higher_is_better(metric: str) -> bool:
    score = score_of(metric)
    if score is None:
        raise ValueError(f"'{metric}' is not a score")
    return score.higher_is_better


def metric_names() -> list[str]:
    """Every ranked score's metric name, extractor by extractor."""
    return [metric_name(score, extractor) for score in SCORES if score.ranked
            for extractor in (EXTRACTORS if score.per_extractor else ("",))]
