"""SN-GAN (Miyato et al. 2018): spectral normalisation of every weight of D.

Each convolution and linear layer of D divides its weight by its largest singular value,
estimated by one power iteration per forward pass, so D is 1-Lipschitz layer by layer without a
gradient penalty or weight clipping, and D has no batch norm. The loss is the non-saturating GAN's,
as in the authors' code (pfnet-research/chainer-gan-lib: ``stdgan`` with ``sndcgan``), or the
hinge loss their later results used (``minimax``, G's log(1 - D(G(z))), is there as in ``gan``):

    L_D = E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))]        L_G = -E[D(G(z))]

The defaults are the paper's Table 1 setting C, the one the authors' example runs (``--n_dis 1
--adam_beta1 0.5 --adam_beta2 0.999``, alpha 2e-4): one D step per G step, so an SN-GAN costs a
DCGAN's step plus the power iterations. The networks are ganbench's DCGAN pair (as every variant's),
not the paper's "standard CNN", so that a comparison isolates the loss and the normalisation.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from bench.errors import ConfigError
from bench.registry import HParam, adam_hparams, register, tips
from variants.blocks import arch, init
from variants.gan import GAN, GENERATOR_LOSSES, Batch, discriminator_bce


def hinge_d_loss(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))] on D's raw scores (N,), in float32."""
    return F.relu(1 - real_scores.float()).mean() + F.relu(1 + fake_scores.float()).mean()


def hinge_g_loss(fake_scores: Tensor) -> Tensor:
    """-E[D(G(z))]: G raises D's score of its fakes, without a bound."""
    return -fake_scores.float().mean()


LOSSES = (*GENERATOR_LOSSES, "hinge")


@register
class SNGAN(GAN):
    """Miyato et al. 2018, spectral norm in D on DCGAN networks; Adam 2e-4, betas (0.5, 0.999), n_dis 1."""

    name = "sngan"
    hparams = {**adam_hparams(lr=2e-4, beta1=0.5, beta2=0.999),
               "loss": HParam("nonsaturating", choices=LOSSES, help="D's and G's loss: nonsaturating (the "
                                                                    "authors' code), minimax or hinge"),
               **arch("dcgan"), **init("pytorch"), **tips()}

    def build(self) -> None:
        if self.hp.loss == "hinge" and self.tip("label_smoothing"):
            raise ConfigError("label_smoothing smooths a cross-entropy target; the hinge loss has none: "
                              "leave label_smoothing at 0, or use loss=nonsaturating")
        super().build()

    def architecture(self) -> dict[str, str]:
        return {"arch": self.hp.arch, "d_norm": "spectral", "init": self.hp.init}

    def d_losses(self, batch: Batch) -> dict[str, Tensor]:
        real, fake = self.discriminate(batch.real, batch.labels), self.discriminate(batch.fake, batch.labels)
        if self.hp.loss == "hinge":
            return {"loss_d": hinge_d_loss(real, fake)}
        return {"loss_d": discriminator_bce(real, fake, self.real_target)}

    def g_losses(self, batch: Batch) -> dict[str, Tensor]:
        fake = self.discriminate(batch.fake, batch.labels)
        return {"loss_g": hinge_g_loss(fake) if self.hp.loss == "hinge" else GENERATOR_LOSSES[self.hp.loss](fake)}
