"""Scoring a trained generator (`bench eval`): a checkpoint, checked and loaded, then scored with
FID and KID by its extractor and the class-aware metrics, on samples drawn with the run's seed; or a
folder of images a generator made elsewhere, scored by the same scorer against the same real images."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from bench import checkpoint
from bench.classifier import default_extractor
from bench.config import TrainConfig
from bench.data import load_dataset, load_image_folder, seeded_draw, to_unit_range
from bench.devices import resolve_device
from bench.errors import ConfigError
from bench.registry import Variant, get_variant
from bench.scores import REAL_SAMPLES, check_samples
from bench.scoring import shared_scorer
from bench.study import StudySpec, load_study


def load_trained(path: Path | str, device: str = "auto") -> tuple[Variant, TrainConfig, int]:
    """(variant, its config, its step) from a checkpoint file or a run folder holding one."""
    device = resolve_device(device)
    state = checkpoint.load(path)
    path = checkpoint.locate(path)
    with checkpoint.damaged(path):
        config = TrainConfig.from_saved(state["config"])
        build = functools.partial(get_variant(config.variant), tuple(state["image_shape"]), state["num_classes"],
                                  **config.hparams)
        with torch.device("meta"):  # the shapes the weights must have, before any memory is taken for them
            expected = {key: value.shape for key, value in build().state_dict().items()}
        wrong = [key for key, value in state["variant"].items()
                 if not isinstance(value, torch.Tensor) or expected.get(key, value.shape) != value.shape]
        if wrong:
            raise ValueError(f"weights {', '.join(wrong[:3])} do not fit {config.variant} on images "
                             f"{state['image_shape']} with {state['num_classes']} classes")
        variant = build()
        variant.load_state_dict(state["variant"])
    return variant.to(device).eval(), config, state["step"]


@dataclass(frozen=True)
class Evaluation:
    """A trained generator's scores, and what they were measured on."""

    config: TrainConfig
    step: int
    samples: int
    features: str
    real_split: str
    real_images: int
    """How many real images the statistics come from: ``config.real_samples``, or the whole split where it has fewer."""
    real_features_source: str
    """Where the real statistics came from: computed now, or the cache file."""
    scores: dict[str, float]
    """fid_<features>, kid_<features> and the class-aware metrics."""


def evaluate(checkpoint: Path | str, *, features: str | None = None, samples: int = 10000,
             device: str = "auto") -> Evaluation:
    """Scores the generator saved in a checkpoint file or run folder with FID and KID (named by
    their extractor) and the class-aware metrics, on ``samples`` samples drawn with the run's seed.
    ``features``: inception or domain (default: inception on a GPU; on a CPU, domain where the dataset
    has a domain classifier).

    Example::

        evaluate("results/train/dcgan-1e-4", samples=2000).scores["fid_domain"]
    """
    check_samples("--samples is", samples)
    variant, config, step = load_trained(checkpoint, device)
    # The standard Inception FID is what papers quote, but at a few images/s it is for GPUs only.
    features = features or ("inception" if variant.device.type == "cuda" else default_extractor(config.dataset))
    scorer = shared_scorer(config.dataset, features, variant.device, config.data_root,  # refuses unknown features
                           config.real_samples)
    scores = scorer.score(variant, samples, seed=config.seed)
    return Evaluation(config, step, samples, features, scorer.real_split, len(scorer.real_features),
                      scorer.real_features_source, scores)


@dataclass(frozen=True)
class ImagesEvaluation:
    """A folder of generated images' scores, and what they were measured against."""

    folder: Path
    dataset: str
    samples: int
    features: str
    real_split: str
    real_samples: int
    """The real images asked for, as a run's budget records them."""
    real_images: int
    """The real images the statistics come from: ``real_samples``, or the whole split where it has fewer."""
    real_features_source: str
    scores: dict[str, float]


def evaluate_images(folder: Path | str, dataset: str, *, features: str | None = None, samples: int | None = None,
                    device: str = "auto", data_root: str | None = None,
                    real_samples: int = REAL_SAMPLES) -> ImagesEvaluation:
    """Scores the images in ``folder`` (PNG, JPEG, ...: directly in it, or in sub-folders) as a generator's
    samples of ``dataset``, with the scorer a trained variant of that dataset gets: the same extractor, real
    statistics (``real_samples`` of them, as a run's budget sets them) and sample count, so that a model trained
    elsewhere ranks beside ganbench's. The images are
    read as an image folder dataset is (grayscale when every image is, else RGB; decoded to 8 bits) and must
    have the dataset's channels and size: resizing changes FID, so it is left to the caller. ``samples``:
    that many, drawn with a fixed seed (default: every image).

    Example::

        evaluate_images("samples/stylegan", "fashion-mnist", features="inception").scores["fid_inception"]
    """
    folder = Path(folder)
    generated = load_image_folder(folder)  # refuses mixed sizes and unreadable folders
    real = load_dataset(dataset, "test", root=data_root)
    if generated.image_shape != real.image_shape:
        have, want = generated.image_shape, real.image_shape
        colours = {1: "grayscale", 3: "RGB"}
        raise ConfigError(f"the images in {folder} are {colours.get(have[0], have[0])} {have[1]}x{have[2]} and "
                          f"'{dataset}' is {colours.get(want[0], want[0])} {want[1]}x{want[2]}: FID compares like "
                          f"with like; write the samples at the dataset's size and colours (resizing changes FID, "
                          f"so do it the way your model's training data was resized)")
    count = len(generated) if samples is None else samples
    check_samples(f"the images in {folder} number", len(generated))
    check_samples("--samples is", count)
    if count > len(generated):
        raise ConfigError(f"--samples {count} is more than the {len(generated)} images in {folder}")
    device = resolve_device(device)
    features = features or ("inception" if device.type == "cuda" else default_extractor(dataset))
    scorer = shared_scorer(dataset, features, device, data_root, real_samples)
    chosen = seeded_draw(len(generated), count)
    scores = scorer.score_images(to_unit_range(generated.images[chosen] if count < len(generated) else generated.images))
    return ImagesEvaluation(folder, dataset, count, features, scorer.real_split, real_samples,
                            len(scorer.real_features), scorer.real_features_source, scores)


def study_images(folder: Path | str, study: str, *, dataset: str | None = None, device: str = "auto",
                 data_root: str | None = None) -> tuple[ImagesEvaluation, StudySpec]:
    """(the images of ``folder`` scored as ``study`` scores its trials, the study): against its
    dataset (``dataset``, if given, must be it), with its objective's extractor, on as many images as its
    trials' last scoring takes (budget.final_samples, else budget.eval_samples; the folder must hold them),
    against as many real images as they are (budget.real_samples)."""
    from bench.scores import extractor_of

    spec = load_study(study)
    if dataset is not None and dataset != spec.dataset:
        raise ConfigError(f"study '{spec.name}' scores against '{spec.dataset}', not '{dataset}': leave out --dataset, "
                          "or record the images in a study of that dataset")
    samples = spec.budget.final_samples or spec.budget.eval_samples
    scored = evaluate_images(folder, spec.dataset, features=extractor_of(spec.objective) or spec.features,
                             samples=samples, device=device, data_root=data_root,
                             real_samples=spec.budget.real_samples)
    return scored, spec


def check_entry_name(name: str) -> None:
    """Refuses a name an external entry cannot have: a variant's, an empty or unprintable one."""
    from bench.registry import variants

    if name in variants():
        raise ConfigError(f"'{name}' is the name of a variant ganbench trains; give the external entry another "
                          "--name (for example the model's)")
    if not name.strip() or len(name) > 100 or any(ord(char) < 32 for char in name):
        raise ConfigError(f"--name {name[:40]!r} is not a usable name: give 1 to 100 printable characters")


def record_images(scored: ImagesEvaluation, name: str, study: str, objective: str, *, provenance: str = "",
                  tracking=None) -> str:
    """Records ``scored`` in ``study``'s MLflow experiment as the external entry ``name`` (a later one of the
    same name is its next entry), with ``provenance`` (default: the folder it was read from); `bench
    leaderboard`, `bench compare` and `bench report` then show it beside the study's variants, marked
    external. Returns its run id. ``tracking``: a :class:`~bench.tracking.TrackingStore` or its URI."""
    from bench.schema import Tag, external_tags, tag_column
    from bench.tracking import Tracking, TrackingStore

    check_entry_name(name)
    store = TrackingStore.open(tracking, create=True)
    try:
        runs = store.trial_runs(study)
        entry = int((runs[tag_column(Tag.VARIANT)] == name).sum()) if len(runs) else 0
    except ConfigError:  # the study has no runs in this store yet
        entry = 0
    tags = external_tags(name, entry, study=study, dataset=scored.dataset, extractor=scored.features,
                         objective=objective, provenance=(provenance or f"images from {scored.folder}")[:5000])
    params = {"dataset": scored.dataset, "features": scored.features, "seed": 0, "eval_samples": scored.samples,
              "real_samples": scored.real_samples}
    return Tracking(store, study).record_external(tags, params, scored.scores)
