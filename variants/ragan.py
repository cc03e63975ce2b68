"""RaGAN (Jolicoeur-Martineau 2019): the relativistic average GAN on DCGAN networks.

D estimates how much more realistic a real image is than the average fake (and the reverse);
G gets gradient from both terms, so it also learns to make reals look less real.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.registry import adam_hparams, register, tips
from variants.blocks import arch, discriminator_batchnorm, init
from variants.dcgan import DCGAN
from variants.gan import Batch


def ragan_d_loss(real_logits: Tensor, fake_logits: Tensor, real_target: float = 1.0) -> Tensor:
    """-E[log s(C(x_r) - E C(x_f))] - E[log(1 - s(C(x_f) - E C(x_r)))], s the sigmoid; the
    first term's target is ``real_target`` (< 1: one-sided label smoothing). In float32: autocast
    would take the differences in bfloat16 (only binary cross-entropy is on its float32 list)."""
    real_logits, fake_logits = real_logits.float(), fake_logits.float()
    real_rel = real_logits - fake_logits.mean()
    fake_rel = fake_logits - real_logits.mean()
    return (F.binary_cross_entropy_with_logits(real_rel, torch.full_like(real_rel, real_target))
            + F.binary_cross_entropy_with_logits(fake_rel, torch.zeros_like(fake_rel)))


def ragan_g_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """The same with the roles swapped: fakes should look more real than the average real."""
    return ragan_d_loss(fake_logits, real_logits)


@register
class RaGAN(DCGAN):
    """Jolicoeur-Martineau 2019, relativistic average loss; Adam 2e-4, beta1 0.5."""

    name = "ragan"
    hparams = {**adam_hparams(lr=2e-4, beta1=0.5), **arch("dcgan"), **discriminator_batchnorm(), **init("pytorch"),
               **tips()}

    def architecture(self) -> dict[str, str | bool]:
        return {**super().architecture(), "arch": self.hp.arch}

    def d_losses(self, batch: Batch) -> dict[str, Tensor]:
        return {"loss_d": ragan_d_loss(self.discriminate(batch.real), self.discriminate(batch.fake), self.real_target)}

    def g_losses(self, batch: Batch) -> dict[str, Tensor]:
        with torch.no_grad():  # D's verdict on reals after its update; no gradient reaches G through it
            real_logits = self.discriminate(batch.real)
        return {"loss_g": ragan_g_loss(real_logits, self.discriminate(batch.fake))}
