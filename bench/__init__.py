"""ganbench: a benchmark harness for GAN training. Each function here is the twin of a `bench` command.

    from bench import TrainConfig, compare_study, evaluate, leaderboard, run_studies, run_study, train, write_report

    result = train(TrainConfig("dcgan", steps=500), out="results/train/dcgan")     # bench train
    evaluate("results/train/dcgan", samples=2000).scores                          # bench eval
    evaluate_images("samples/mine", "fashion-mnist").scores                       # bench eval --images
    study = run_study("dcgan", "lr_sweep", trials=8)                              # bench run
    studies = run_studies(["dcgan", "wgan_gp"], "compare_quick")                  # bench run --variant a,b
    leaderboard(study="lr_sweep")                                                 # bench leaderboard
    compare_study("compare_quick").summary                                        # bench compare
    write_report("compare_quick", "results/report.html")                          # bench report
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what type checkers and editors read; at run time each name is imported on first use
    from bench.compare import Comparison, compare_study
    from bench.config import Budget, TrainConfig
    from bench.engine import TrainResult, train
    from bench.evaluation import Evaluation, ImagesEvaluation, evaluate, evaluate_images, record_images
    from bench.ranking import effects, leaderboard
    from bench.registry import HParam, Variant, get_variant, register, variants
    from bench.report import write_report
    from bench.runner import run_studies, run_study
    from bench.study import StudySpec, load_study

_HOMES = {
    "compare": ("Comparison", "compare_study"),
    "config": ("Budget", "TrainConfig"),
    "engine": ("TrainResult", "train"),
    "evaluation": ("Evaluation", "ImagesEvaluation", "evaluate", "evaluate_images", "record_images"),
    "ranking": ("effects", "leaderboard"),
    "registry": ("HParam", "Variant", "get_variant", "register", "variants"),
    "report": ("write_report",),
    "runner": ("run_studies", "run_study"),
    "study": ("StudySpec", "load_study"),
}
"""The submodule that defines each public name. No name is also a submodule's, so that `import
bench.X` gives module X and `from bench import name` gives the function or class."""
_HOME = {name: module for module, names in _HOMES.items() for name in names}

__all__ = sorted(_HOME)


def __getattr__(name: str):
    """A public name, its module imported on first use (PEP 562), so that a plugin's
    `from bench.registry import register` and `bench list`, which import bench first, load neither
    optuna, pandas nor mlflow."""
    if name not in _HOME:
        raise AttributeError(f"module 'bench' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
