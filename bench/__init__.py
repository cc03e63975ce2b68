"""ganbench: a benchmark harness for GAN training.

    from bench import TrainConfig, train
    result = train(TrainConfig("wgan_gp", steps=500), out="results/train/wgan_gp")
"""

from bench.engine import TrainConfig, TrainResult, train
from bench.registry import HParam, Variant, get_variant, register, variants

__all__ = ["HParam", "TrainConfig", "TrainResult", "Variant", "get_variant", "register", "train", "variants"]
