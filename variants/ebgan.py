"""EBGAN (Zhao, Mathieu & LeCun 2017): the discriminator is an energy function.

D is an auto-encoder and a sample's energy is its reconstruction error C(x) = ||Dec(Enc(x)) - x||,
low on real images, pushed up to a margin m on fakes: L_D = C(x) + [m - C(G(z))]^+ and
L_G = C(G(z)). The optional pulling-away term (weight ``pt_weight``, 0.1 in the paper) adds
to L_G the mean squared cosine similarity between the encoder's codes of a fake batch, so
that G does not put a whole batch on one point.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from bench.registry import HParam, Variant, adam_hparams, register, tips
from variants.blocks import CONV_WIDTH, ConvDiscriminator, ConvGenerator, conv_generator, scaled

CODE = 64
"""Size of the auto-encoder's code."""


def ebgan_d_loss(real_energy: Tensor, fake_energy: Tensor, margin: float) -> Tensor:
    """E[C(x)] + E[max(0, m - C(G(z)))]: reals down, fakes up to the margin and no further."""
    return real_energy.mean() + F.relu(margin - fake_energy).mean()


def pulling_away_term(codes: Tensor) -> Tensor:
    """1/(N(N-1)) sum over i != j of (S_i . S_j / (|S_i| |S_j|))^2 for codes S (N, d)."""
    unit = F.normalize(codes.flatten(1), dim=1)
    cosine = unit @ unit.T
    n = len(codes)
    return ((cosine ** 2).sum() - (cosine.diagonal() ** 2).sum()) / (n * (n - 1))


class EnergyAutoEncoder(nn.Module):
    """images (N, C, H, W) -> (energy (N,), code (N, CODE)): a DCGAN encoder to a code, a DCGAN
    decoder back to the image, and the L2 norm of the reconstruction error per image."""

    def __init__(self, image_shape: tuple[int, int, int], width: int = CONV_WIDTH):
        super().__init__()
        self.encoder = ConvDiscriminator(image_shape, width, outputs=CODE)
        self.decoder = ConvGenerator(CODE, image_shape, width)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        code = self.encoder(images)
        error = (self.decoder(code) - images).float()
        return error.flatten(1).norm(dim=1), code


@register
class EBGAN(Variant):
    """Zhao et al. 2017, auto-encoder discriminator with a margin loss; Adam 2e-4, beta1 0.5, m 10."""

    name = "ebgan"
    critic = True  # D's output is an energy to push apart, not a real/fake classifier's logit
    hparams = {**adam_hparams(lr=2e-4, beta1=0.5),
               "margin": HParam(10.0, 0.1, 100.0, log=True, help="energy margin m for fakes (10 for MNIST in the paper)"),
               "pt_weight": HParam(0.0, 0.0, 1.0, help="weight of the pulling-away term in G's loss (0: off; "
                                                       "the paper's EBGAN-PT uses 0.1)"),
               **tips("lr_d_ratio", "g_width", "d_width", "g_ema", "g_ema_start")}

    def build(self) -> None:
        self.G = conv_generator(self, init="pytorch")
        self.D = EnergyAutoEncoder(self.image_shape, scaled(CONV_WIDTH, self.tip("d_width")))
        self.opt_g = self.adam(self.G)
        self.opt_d = self.adam(self.D, lr=self.lr_d)

    def discriminate(self, images: Tensor, labels: Tensor) -> Tensor:
        """Minus the energy, so that as for every other variant a higher score means more real."""
        return -self.D(images)[0]

    def train_step(self, real: Tensor, labels: Tensor) -> dict[str, Tensor]:
        fake = self.G(self.latent(len(real)))
        real_energy, _ = self.D(real)
        fake_energy, _ = self.D(fake.detach())
        loss_d = ebgan_d_loss(real_energy, fake_energy, self.hp.margin)
        self.update(self.opt_d, loss_d)
        energy, codes = self.D(fake)
        losses = {"energy_real": real_energy.mean().detach(), "energy_fake": energy.mean()}
        loss_g = energy.mean()
        if self.hp.pt_weight > 0:
            losses["pulling_away"] = pulling_away_term(codes)
            loss_g = loss_g + self.hp.pt_weight * losses["pulling_away"]
        self.update(self.opt_g, loss_g)
        return {"loss_d": loss_d, "loss_g": loss_g, **losses}
