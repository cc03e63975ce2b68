"""GAN (Goodfellow et al. 2014): an MLP generator and discriminator playing the minimax game.

The generator's loss is the non-saturating -log D(G(z)) by default, which gives strong
gradients early in training; ``loss=minimax`` uses the paper's log(1 - D(G(z))).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.registry import HParam, Variant, adam_hparams, register, tips
from variants.blocks import arch, discriminator_batchnorm, networks


def discriminator_bce(real_logits: Tensor, fake_logits: Tensor, real_target: float = 1.0) -> Tensor:
    """-log D(x) - log(1 - D(G(z))), averaged: D's cross-entropy, reals labelled 1, fakes 0.
    ``real_target`` < 1 is one-sided label smoothing: the reals' label only."""
    return (F.binary_cross_entropy_with_logits(real_logits, torch.full_like(real_logits, real_target))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def generator_nonsaturating(fake_logits: Tensor) -> Tensor:
    """-log D(G(z)), averaged."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def generator_minimax(fake_logits: Tensor) -> Tensor:
    """log(1 - D(G(z))), averaged: the paper's objective, which saturates when D wins."""
    return -F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))


GENERATOR_LOSSES = {"nonsaturating": generator_nonsaturating, "minimax": generator_minimax}


@register
class GAN(Variant):
    """Goodfellow et al. 2014, MLP networks; Adam 2e-4, beta1 0.5."""

    name = "gan"
    hparams = {**adam_hparams(lr=2e-4, beta1=0.5),
               "loss": HParam("nonsaturating", choices=tuple(GENERATOR_LOSSES), help="generator loss"),
               **arch("mlp"), **discriminator_batchnorm(),
               **tips("label_smoothing", "lr_d_ratio", "g_width", "d_width", "activation")}

    def build(self) -> None:
        self.G, self.D = networks(self)
        self.opt_g = self.adam(self.G)
        self.opt_d = self.adam(self.D, lr=self.lr_d)

    @property
    def real_target(self) -> float:
        """D's label for real images: 1, or 1 - label_smoothing."""
        return 1.0 - self.tip("label_smoothing")

    def d_losses(self, real: Tensor, fake: Tensor, latent: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """D's losses on a real batch and a detached fake batch; ``loss_d`` is optimised."""
        return {"loss_d": discriminator_bce(self.discriminate(real, labels), self.discriminate(fake, labels),
                                            self.real_target)}

    def g_losses(self, real: Tensor, fake: Tensor, latent: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """G's losses on a fake batch that carries its graph; ``loss_g`` is optimised."""
        return {"loss_g": GENERATOR_LOSSES[self.hp.loss](self.discriminate(fake, labels))}

    def train_step(self, real: Tensor, labels: Tensor) -> dict[str, Tensor]:
        latent = self.latent(len(real))
        fake = self.generate(latent, labels)
        # D learns from a detached fake (no gradient into G); G then needs D's fresh verdict.
        d_losses = self.d_losses(real, fake.detach(), latent, labels)
        self.update(self.opt_d, d_losses["loss_d"])
        g_losses = self.g_losses(real, fake, latent, labels)
        self.update(self.opt_g, g_losses["loss_g"])
        return {**d_losses, **g_losses}
