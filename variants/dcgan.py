"""DCGAN (Radford et al. 2016): the GAN game with the all-convolutional architecture rules.

Strided convs instead of pooling, batch norm except at G's output and D's input, ReLU in G
with a Tanh output, LeakyReLU(0.2) in D, no hidden fully connected layers (variants.blocks).
"""

from __future__ import annotations

from bench.registry import register, tips
from variants.blocks import init, paper_norm
from variants.gan import GAN


@register
class DCGAN(GAN):
    """Radford et al. 2016, convolutional networks; Adam 2e-4, beta1 0.5."""

    name = "dcgan"
    hparams = {**{key: spec for key, spec in GAN.hparams.items() if key != "arch"},  # convolutional by definition
               **init("pytorch"), **tips()}

    def architecture(self) -> dict[str, str | bool]:
        return {"arch": "dcgan", "d_norm": paper_norm(self.hp.discriminator_batchnorm), "init": self.hp.init}
