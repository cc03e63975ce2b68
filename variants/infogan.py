"""InfoGAN (Chen et al. 2016): G's input carries latent codes that a head Q recovers from fakes.

Latent: z (62) + a 10-way categorical code + 2 continuous codes in U[-1, 1]. Q shares D's
trunk. The mutual-information lower bound becomes a loss: cross-entropy for the categorical
code plus a unit-variance Gaussian negative log-likelihood for the continuous ones. As in the
paper's code, D's update trains Q (and the shared trunk) on it and G's update trains G on it,
and G learns faster than D: Adam 1e-3 for G, 2e-4 for D (lr_d_ratio 0.2).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.registry import TIPS, HParam, adam_hparams, register, tips
from variants.blocks import conv_discriminator, conv_generator
from variants.gan import GAN, Batch, discriminator_bce, generator_nonsaturating

CATEGORIES = 10
CONTINUOUS = 2


def info_loss(q_output: Tensor, codes: Tensor, lambda_cont: float) -> Tensor:
    """Cross-entropy of the categorical code + lambda_cont * Gaussian NLL of the continuous
    codes (unit variance, constant dropped).

    ``q_output``: (N, CATEGORIES + CONTINUOUS) logits then means; ``codes``: (N, CATEGORIES +
    CONTINUOUS), a one-hot then the continuous values, as :meth:`InfoGAN.latent` lays them out.
    """
    cat_logits, cont_mean = q_output.split([CATEGORIES, CONTINUOUS], dim=1)
    cat_code, cont_code = codes.split([CATEGORIES, CONTINUOUS], dim=1)
    categorical = F.cross_entropy(cat_logits, cat_code.argmax(dim=1))
    gaussian = 0.5 * ((cont_code - cont_mean) ** 2).sum(dim=1).mean()
    return categorical + lambda_cont * gaussian


@register
class InfoGAN(GAN):
    """Chen et al. 2016, DCGAN networks with a Q head; Adam G 1e-3, D 2e-4, beta1 0.5, lambda_info 1."""

    name = "infogan"
    z_dim = 62
    hparams = {**adam_hparams(lr=1e-3, beta1=0.5),
               "lambda_info": HParam(1.0, 0.0, 10.0, help="weight of the mutual-information loss"),
               "lambda_cont": HParam(0.1, 0.0, 10.0, help="weight of the continuous codes within it"),
               **tips(), "lr_d_ratio": replace(TIPS["lr_d_ratio"].hparam, default=0.2)}

    def build(self) -> None:
        self.G = conv_generator(self, self.z_dim + CATEGORIES + CONTINUOUS, init="pytorch")
        self.D = conv_discriminator(self, d_norm="batch", init="pytorch")
        self.Q = nn.Sequential(nn.Flatten(), nn.Linear(self.D.trunk_features, 128), nn.BatchNorm1d(128),
                               nn.LeakyReLU(0.2, True), nn.Linear(128, CATEGORIES + CONTINUOUS))
        self.opt_g = self.adam(self.G)
        self.opt_d = self.adam(self.D, self.Q, lr=self.lr_d)

    def latent(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """(n, 62 + 10 + 2): z, then a one-hot categorical code, then continuous codes."""
        device = self.rng_device(generator)
        z = torch.randn(n, self.z_dim, generator=generator, device=device)
        category = torch.randint(CATEGORIES, (n,), generator=generator, device=device)
        continuous = torch.rand(n, CONTINUOUS, generator=generator, device=device) * 2 - 1
        return torch.cat([z, F.one_hot(category, CATEGORIES).to(z.dtype), continuous], dim=1).to(self.device)

    def categorical_code(self, latent: Tensor) -> Tensor:
        return latent[:, self.z_dim:self.z_dim + CATEGORIES].argmax(dim=1)

    def scores_and_codes(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """D's scores (N,) and Q's code predictions (N, 12) from one pass through the trunk."""
        features = self.D.trunk(self.augmented(images))
        return self.D.head(features).flatten(), self.Q(features)

    def d_losses(self, batch: Batch) -> dict[str, Tensor]:
        fake_scores, predicted = self.scores_and_codes(batch.fake)
        info = info_loss(predicted, batch.latent[:, self.z_dim:], self.hp.lambda_cont)
        return {"loss_d": discriminator_bce(self.discriminate(batch.real), fake_scores, self.real_target)
                + self.hp.lambda_info * info}

    def g_losses(self, batch: Batch) -> dict[str, Tensor]:
        fake_scores, predicted = self.scores_and_codes(batch.fake)
        info = info_loss(predicted, batch.latent[:, self.z_dim:], self.hp.lambda_cont)
        return {"loss_g": generator_nonsaturating(fake_scores) + self.hp.lambda_info * info, "loss_info": info}
