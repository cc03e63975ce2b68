"""ganbench: a benchmark harness for GAN training. Each function here is the twin of a `bench` command.

    from bench import TrainConfig, compare, evaluate, leaderboard, run_studies, run_study, train, write_report

    result = train(TrainConfig("dcgan", steps=500), out="results/train/dcgan")     # bench train
    evaluate("results/train/dcgan", samples=2000).scores                          # bench eval
    study = run_study("dcgan", "lr_sweep", trials=8)                              # bench run
    studies = run_studies(["dcgan", "wgan_gp"], "compare_quick")                  # bench run --variant a,b
    leaderboard(study="lr_sweep")                                                 # bench leaderboard
    compare("compare_quick").summary                                              # bench compare
    write_report("compare_quick", "results/report.html")                          # bench report
"""

from bench.compare import Comparison, compare
from bench.engine import Budget, Evaluation, TrainConfig, TrainResult, evaluate, train
from bench.leaderboard import effects, leaderboard
from bench.registry import HParam, Variant, get_variant, register, variants
from bench.report import write_report
from bench.runner import run_studies, run_study
from bench.study import StudySpec, load_study

__all__ = ["Budget", "Comparison", "Evaluation", "HParam", "StudySpec", "TrainConfig", "TrainResult", "Variant",
           "compare", "effects", "evaluate", "get_variant", "leaderboard", "load_study", "register", "run_studies",
           "run_study", "train", "variants", "write_report"]
