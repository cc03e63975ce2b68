"""LSGAN (Mao et al. 2017): the GAN game with least-squares losses on DCGAN networks.

D regresses its raw output to b for real images and to a for fakes; G pulls D's output on its
fakes to c. With a = 0, b = c = 1 (the paper's choice for its experiments):

    L_D = 1/2 E[(D(x) - 1)^2] + 1/2 E[D(G(z))^2]        L_G = 1/2 E[(D(G(z)) - 1)^2]

Unlike a sigmoid cross-entropy, the square keeps penalising fakes that D already classes
correctly but that lie far from the real data, so G's gradient does not vanish there.
compare_gan v1 (``compare_gan/src/gans/LSGAN.py``, tag v1.0), the code of Lucic et al. 2018,
squares D's *sigmoid* output instead; ``d_output=sigmoid`` trains that form.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bench.registry import HParam, adam_hparams, register, tips
from variants.blocks import arch, discriminator_batchnorm, init
from variants.dcgan import DCGAN
from variants.gan import Batch


def lsgan_d_loss(real_scores: Tensor, fake_scores: Tensor, *, a: float = 0.0, b: float = 1.0) -> Tensor:
    """1/2 E[(D(x) - b)^2] + 1/2 E[(D(G(z)) - a)^2] on D's scores (N,). In float32: under bfloat16
    autocast a score near its target would keep only ~3 digits of its distance to it."""
    return 0.5 * ((real_scores.float() - b) ** 2).mean() + 0.5 * ((fake_scores.float() - a) ** 2).mean()


def lsgan_g_loss(fake_scores: Tensor, *, c: float = 1.0) -> Tensor:
    """1/2 E[(D(G(z)) - c)^2]: G wants D to give its fakes the value c."""
    return 0.5 * ((fake_scores.float() - c) ** 2).mean()


D_OUTPUTS = ("raw", "sigmoid")


@register
class LSGAN(DCGAN):
    """Mao et al. 2017, least-squares losses with a = 0, b = c = 1; Adam 2e-4, beta1 0.5."""

    name = "lsgan"
    hparams = {**adam_hparams(lr=2e-4, beta1=0.5),
               "d_output": HParam("raw", choices=D_OUTPUTS, help="what the squares are taken of: raw (D's output, "
                                                                 "the paper) or sigmoid (of it, as compare_gan v1)"),
               **arch("dcgan"), **discriminator_batchnorm(), **init("pytorch"),
               # no label smoothing: D regresses to targets, it is not trained with cross-entropy
               **tips("minibatch_std", "lr_d_ratio", "g_width", "d_width", "activation", "d_norm", "r1_gamma",
                      "gp_weight", "diffaugment", "g_ema", "g_ema_start")}

    def scores(self, images: Tensor, labels: Tensor) -> Tensor:
        """D's output (N,) as the squared losses see it."""
        scores = self.discriminate(images, labels)
        return torch.sigmoid(scores) if self.hp.d_output == "sigmoid" else scores

    def architecture(self) -> dict[str, str | bool]:
        return {**super().architecture(), "arch": self.hp.arch}

    def d_losses(self, batch: Batch) -> dict[str, Tensor]:
        return {"loss_d": lsgan_d_loss(self.scores(batch.real, batch.labels), self.scores(batch.fake, batch.labels))}

    def g_losses(self, batch: Batch) -> dict[str, Tensor]:
        return {"loss_g": lsgan_g_loss(self.scores(batch.fake, batch.labels))}
