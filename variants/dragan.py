"""DRAGAN (Kodali et al. 2017): the non-saturating GAN with a gradient penalty around the real data.

D's loss is the usual cross-entropy plus lambda * E[(||grad D(x_hat)||_2 - 1)^2] on points x_hat
near real images: sharp gradients of D there are what the paper blames for mode collapse, and
the penalty keeps D smooth only locally, where WGAN-GP constrains it between real and fake.

The perturbation is the one of the authors' code (kodalinaveen3/DRAGAN, ``DRAGAN.ipynb``,
``get_perturbed_batch``), which compare_gan v1 (``compare_gan/src/gans/DRAGAN.py``, tag v1.0)
copied: x_p = x + c * std(x) * U[0, 1) per pixel, std over the whole batch (c = 0.5), and
x_hat = x + alpha * (x_p - x), alpha ~ U[0, 1) per sample; the paper's x + delta, delta ~ N(0, cI),
is given as the idea, the code is what was run. Scaled by the batch's spread, it is the same
relative perturbation on this project's [-1, 1] data as on their [0, 1] data. The penalty is on
D's logit, as in the authors' code; compare_gan differentiates D's sigmoid output
(``penalty_on=sigmoid``; it also adds 1e-4 under the square root, left out here). D has no batch
norm: the penalty is per sample (Lucic et al.'s narrow range also drops it for DRAGAN).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from bench.registry import TIPS, Expected, HParam, adam_hparams, register, tips
from variants.blocks import arch, init, per_sample_d_norm
from variants.dcgan import DCGAN
from variants.gan import Batch, discriminator_bce, generator_nonsaturating
from variants.penalties import gradient_penalty


def perturbed(real: Tensor, scale: float = 0.5) -> Tensor:
    """x + scale * std(x) * U[0, 1) noise, the std over every pixel of the batch (the authors' form)."""
    spread = real.float().std(correction=0).to(real.dtype)  # numpy's std, as in their code
    return real + scale * spread * torch.rand_like(real)


def dragan_penalty(critic: Callable[[Tensor], Tensor], real: Tensor, scale: float = 0.5) -> tuple[Tensor, Tensor]:
    """(mean of (||grad D(x_hat)||_2 - 1)^2, mean gradient norm) on x_hat = x + alpha * (x_p - x):
    WGAN-GP's penalty with the perturbed batch in place of the fakes."""
    return gradient_penalty(critic, perturbed(real, scale), real)  # eps * x_p + (1 - eps) * x


PENALISED = {"logit": lambda scores: scores, "sigmoid": torch.sigmoid}


@register
class DRAGAN(DCGAN):
    """Kodali et al. 2017, NS-GAN loss + a gradient penalty near the data; Adam 1e-4, beta1 0.5, lambda 10."""

    name = "dragan"
    hparams = {**adam_hparams(lr=1e-4, beta1=0.5),
               "gp_lambda": HParam(10.0, 0.01, 1000.0, log=True, help="gradient-penalty weight lambda"),
               "perturb_scale": HParam(0.5, 0.01, 10.0, log=True, help="c in x + c * std(x) * U[0, 1): how far "
                                                                       "around the data the penalty reaches"),
               "penalty_on": HParam("logit", choices=tuple(PENALISED),
                                    help="output whose input gradient is penalised: logit (the authors' code) or "
                                         "sigmoid (compare_gan v1)"),
               **arch("dcgan"), **init("pytorch"),
               **tips(*(name for name in TIPS if name != "gp_weight")),  # its own penalty, not a second one
               **per_sample_d_norm()}
    expected = {"grad_norm": Expected("gradient_penalty_norm", 0.2, 2.0, "D's gradient norm near the real data",
                                      "the penalty pulls it towards 1; raise gp_lambda or lower the learning rate")}

    def architecture(self) -> dict[str, str | bool]:
        return {"arch": self.hp.arch, "d_norm": "none", "init": self.hp.init}  # the penalty is per sample

    def d_losses(self, batch: Batch) -> dict[str, Tensor]:
        real, labels = batch.real, batch.labels
        loss = discriminator_bce(self.discriminate(real, labels), self.discriminate(batch.fake, labels),
                                 self.real_target)
        penalised = PENALISED[self.hp.penalty_on]
        penalty, grad_norm = dragan_penalty(lambda images: penalised(self.discriminate(images, labels)), real,
                                            self.hp.perturb_scale)
        return {"loss_d": loss + self.hp.gp_lambda * penalty, "gradient_penalty": penalty, "grad_norm": grad_norm}

    def g_losses(self, batch: Batch) -> dict[str, Tensor]:
        """-log D(G(z)): the paper's DRAGAN is the non-saturating game (no minimax form)."""
        return {"loss_g": generator_nonsaturating(self.discriminate(batch.fake, batch.labels))}
