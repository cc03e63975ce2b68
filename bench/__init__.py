"""ganbench: a benchmark harness for GAN training. Each function here is the twin of a `bench` command.

    from bench import TrainConfig, evaluate, leaderboard, run_study, train

    result = train(TrainConfig("dcgan", steps=500), out="results/train/dcgan")     # bench train
    evaluate("results/train/dcgan", samples=2000).scores                          # bench eval
    study = run_study("dcgan", "lr_sweep", trials=8)                              # bench run
    leaderboard(study="lr_sweep")                                                 # bench leaderboard
"""

from bench.engine import Budget, Evaluation, TrainConfig, TrainResult, evaluate, train
from bench.leaderboard import effects, leaderboard
from bench.registry import HParam, Variant, get_variant, register, variants
from bench.runner import run_study
from bench.study import StudySpec, load_study

__all__ = ["Budget", "Evaluation", "HParam", "StudySpec", "TrainConfig", "TrainResult", "Variant", "effects",
           "evaluate", "get_variant", "leaderboard", "load_study", "register", "run_study", "train", "variants"]
