"""CGAN (Mirza & Osindero 2014): G and D both see the class label.

G gets the one-hot label concatenated to z; D gets it as constant extra input channels, so
both networks keep the DCGAN structure. Fakes in a training step reuse the real batch's labels,
so the generated class mix follows the data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.registry import register
from variants.blocks import conv_discriminator, conv_generator, paper_norm
from variants.dcgan import DCGAN


@register
class CGAN(DCGAN):
    """Mirza & Osindero 2014 on DCGAN networks; Adam 2e-4, beta1 0.5."""

    name = "cgan"
    conditional = True

    def build(self) -> None:
        self.G = conv_generator(self, self.z_dim + self.num_classes, init=self.hp.init)
        self.D = conv_discriminator(self, extra_channels=self.num_classes,
                                    d_norm=paper_norm(self.hp.discriminator_batchnorm), init=self.hp.init)
        self.opt_g = self.adam(self.G)
        self.opt_d = self.adam(self.D, lr=self.lr_d)

    def generate(self, latent: Tensor, labels: Tensor) -> Tensor:
        one_hot = F.one_hot(labels, self.num_classes).to(latent.dtype)
        return self.G(torch.cat([latent, one_hot], dim=1))

    def discriminate(self, images: Tensor, labels: Tensor) -> Tensor:
        n, _, h, w = images.shape
        label_maps = F.one_hot(labels, self.num_classes).to(images.dtype)[:, :, None, None].expand(n, -1, h, w)
        return self.D(torch.cat([self.augmented(images), label_maps], dim=1))
