"""Which scores exist, which way is better, and what each needs: the one table that study files,
the leaderboard, ``bench compare``, the report and the progress line read (torchmetrics'
``higher_is_better``, declared once). Adding a score means a row here and its computation in
bench/scoring.py.

A score computed on an extractor's features is named ``<score>_<extractor>`` (``fid_domain``,
``recall_inception``): values from different extractors are not comparable.
"""

from __future__ import annotations

from dataclasses import dataclass

EXTRACTORS = ("domain", "inception")


@dataclass(frozen=True)
class Score:
    name: str
    higher_is_better: bool
    per_extractor: bool
    """Computed on an extractor's features, and named for it."""
    needs: str = ""
    """What it needs beyond generated images: "classifier" (the dataset's domain classifier),
    "labels" (a conditional generator), "codes" (a categorical latent code)."""
    summary: str = ""


SCORES = (
    Score("fid", False, True, summary="Fréchet distance between Gaussian fits of real and generated features"),
    Score("kid", False, True, summary="kernel (MMD) distance between real and generated features, unbiased"),
    Score("precision", True, True,
          summary="fidelity: share of generated samples inside the real data's k-NN balls (Kynkäänniemi et al.)"),
    Score("recall", True, True,
          summary="diversity: share of real samples inside the generated samples' k-NN balls"),
    Score("density", True, True,
          summary="fidelity, robust to outliers: real k-NN balls containing each sample, over k (Naeem et al.)"),
    Score("coverage", True, True,
          summary="diversity, robust to outliers: share of real k-NN balls that hold a generated sample"),
    Score("classes_covered", True, False, "classifier",
          summary="classes the classifier finds in at least a quarter of their real share"),
    Score("class_kl", False, False, "classifier", summary="KL(real class histogram || generated)"),
    Score("label_accuracy", True, False, "labels", summary="generated images classified as the class asked for"),
    Score("code_accuracy", True, False, "codes",
          summary="categorical code -> class agreement under the best one-to-one matching"),
)
NEAREST_K = 5
"""Neighbours for precision, recall, density and coverage, as in StudioGAN and the prdc package."""


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


def is_score(metric: str) -> bool:
    """Scores compare generators; losses and throughput do not."""
    return score_of(metric) is not None


def higher_is_better(metric: str) -> bool:
    score = score_of(metric)
    if score is None:
        raise ValueError(f"'{metric}' is not a score")
    return score.higher_is_better


def metric_names() -> list[str]:
    """Every score's metric name, extractor by extractor."""
    return [f"{score.name}_{extractor}" if score.per_extractor else score.name
            for score in SCORES for extractor in (EXTRACTORS if score.per_extractor else ("",))]
