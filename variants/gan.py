"""GAN (Goodfellow et al. 2014): an MLP generator and discriminator playing the minimax game.

The generator's loss is the non-saturating -log D(G(z)) by default, which gives strong
gradients early in training; ``loss=minimax`` uses the paper's log(1 - D(G(z))).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.registry import HParam, Variant, adam_hparams, register, tips
from variants.blocks import arch, discriminator_batchnorm, networks, paper_norm
from variants.penalties import with_penalties


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


@dataclass(frozen=True)
class Batch:
    """What one step's losses are computed from: real images (N, C, H, W) in [-1, 1], the fakes G made from
    ``latent`` (N, z) (detached in D's losses, carrying G's graph in G's), and the labels (N,) of both."""

    real: Tensor
    fake: Tensor
    latent: Tensor
    labels: Tensor


@register
class GAN(Variant):
    """Goodfellow et al. 2014, MLP networks; Adam 2e-4, beta1 0.5."""

    name = "gan"
    hparams = {**adam_hparams(lr=2e-4, beta1=0.5),
               "loss": HParam("nonsaturating", choices=tuple(GENERATOR_LOSSES), help="generator loss"),
               **arch("mlp"), **discriminator_batchnorm(),
               **tips("label_smoothing", "lr_d_ratio", "g_width", "d_width", "activation", "d_norm", "r1_gamma",
                      "gp_weight", "diffaugment", "g_ema", "g_ema_start")}

    def build(self) -> None:
        nets = networks(self, **self.architecture())
        self.G, self.D, self.z_dim, self.z_prior = nets.G, nets.D, nets.z_dim, nets.z_prior
        self.opt_g = self.adam(self.G)
        self.opt_d = self.adam(self.D, lr=self.lr_d)

    def architecture(self) -> dict[str, str | bool]:
        """The networks' options (see :func:`variants.blocks.networks`): here an MLP by default."""
        return {"arch": self.hp.arch, "d_norm": paper_norm(self.hp.discriminator_batchnorm), "init": "pytorch"}

    @property
    def real_target(self) -> float:
        """D's label for real images: 1, or 1 - label_smoothing."""
        return 1.0 - self.tip("label_smoothing")

    def d_losses(self, batch: Batch) -> dict[str, Tensor]:
        """D's losses on a real batch and a detached fake batch; ``loss_d`` is optimised."""
        return {"loss_d": discriminator_bce(self.discriminate(batch.real, batch.labels),
                                            self.discriminate(batch.fake, batch.labels), self.real_target)}

    def g_losses(self, batch: Batch) -> dict[str, Tensor]:
        """G's losses on a fake batch that carries its graph; ``loss_g`` is optimised."""
        return {"loss_g": GENERATOR_LOSSES[self.hp.loss](self.discriminate(batch.fake, batch.labels))}

    def train_step(self, real: Tensor, labels: Tensor) -> dict[str, Tensor]:
        latent = self.latent(len(real))
        batch = Batch(real, self.generate(latent, labels), latent, labels)
        # D learns from a detached fake (no gradient into G); G then needs D's fresh verdict.
        fake = batch.fake.detach()
        d_losses = with_penalties(self, self.d_losses(replace(batch, fake=fake)), real, fake, labels)
        self.update(self.opt_d, d_losses["loss_d"])
        g_losses = self.g_losses(batch)
        self.update(self.opt_g, g_losses["loss_g"])
        return {**d_losses, **g_losses}
