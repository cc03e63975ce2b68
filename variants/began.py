"""BEGAN (Berthelot et al. 2017): an auto-encoder D, and an equilibrium kept by a proportional controller.

A sample's loss is its L1 reconstruction error L(v) = |v - D(v)| (per-pixel mean). D lowers it on
real images and raises it on fakes, by as much as the controller's k_t in [0, 1] says; G lowers it
on its fakes (the paper's algorithm box):

    L_D = L(x) - k_t L(G(z))        L_G = L(G(z))
    k_{t+1} = clip(k_t + lambda_k (gamma L(x) - L(G(z))), 0, 1),  k_0 = 0

so that E[L(G(z))] = gamma E[L(x)]: gamma (the diversity ratio) trades diversity for quality.
M_global = L(x) + |gamma L(x) - L(G(z))| is the paper's convergence measure; it is returned
with k. D is EBGAN's DCGAN auto-encoder (code of 64), or with ``arch=lucic`` compare_gan's
(``compare_gan/src/gans/BEGAN.py``: two convolutions to a code of 64 and back through Lucic's G
blocks, about 1.3 M parameters, batch norm as their default ``discriminator_batchnorm``). compare_gan v1
(``compare_gan/src/gans/BEGAN.py``, tag v1.0) does not clip k, and its defaults train D five
times per G step (``params.py``, disc_iters 5); this follows the paper: k clipped, one D step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bench.registry import HParam, Variant, adam_hparams, register, tips
from variants.blocks import (CONV_WIDTH, LUCIC_NOISE, ConvDiscriminator, ConvGenerator, LucicGenerator, arch,
                             conv_generator, init, initialised, lucic_generator, lucic_initialised, lucic_quarter,
                             scaled, tf_batch_norm)
from variants.ebgan import CODE


def reconstruction_loss(images: Tensor, reconstructions: Tensor) -> Tensor:
    """L(v) = |v - D(v)| per image (N,): the mean absolute error over its pixels, in float32."""
    return (reconstructions.float() - images.float()).abs().flatten(1).mean(1)


def began_d_loss(real_loss: Tensor, fake_loss: Tensor, k: Tensor) -> Tensor:
    """L(x) - k_t L(G(z)) on batch means; k_t is a constant to D."""
    return real_loss - k * fake_loss


def next_k(k: Tensor, real_loss: Tensor, fake_loss: Tensor, gamma: float, lambda_k: float) -> Tensor:
    """clip(k_t + lambda_k (gamma L(x) - L(G(z))), 0, 1), on the device (no host sync)."""
    return (k + lambda_k * (gamma * real_loss - fake_loss)).clamp(0.0, 1.0)


def convergence_measure(real_loss: Tensor, fake_loss: Tensor, gamma: float) -> Tensor:
    """M_global = L(x) + |gamma L(x) - L(G(z))|: falls as the samples improve."""
    return real_loss + (gamma * real_loss - fake_loss).abs()


class ReconstructionAutoEncoder(nn.Module):
    """An encoder to a code of 64 and a decoder back, with BEGAN's loss: images (N, C, H, W) -> (L(v) (N,), code)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        code = self.encoder(images)
        return reconstruction_loss(images, self.decoder(code)), code


def lucic_auto_encoder(image_shape: tuple[int, int, int]) -> ReconstructionAutoEncoder:
    """compare_gan v1's BEGAN D: conv 4x4/2 to 64, LeakyReLU, conv 4x4/2 to 128, FC to the code, batch norm,
    LeakyReLU; then Lucic's generator from the code, without its FC 1024 (a Tanh for their sigmoid, as in G)."""
    channels, side, _ = image_shape
    encoder = nn.Sequential(
        nn.Conv2d(channels, 64, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(64, 128, 4, 2, 1),
        nn.Flatten(), nn.Linear(128 * lucic_quarter(side) ** 2, CODE), tf_batch_norm(CODE, 1),
        nn.LeakyReLU(0.2, inplace=True))
    return lucic_initialised(ReconstructionAutoEncoder(encoder, LucicGenerator(CODE, image_shape, hidden=())))


@register
class BEGAN(Variant):
    """Berthelot et al. 2017, auto-encoder D, k controller; Adam 1e-4, beta1 0.5, gamma 0.75, lambda_k 1e-3."""

    name = "began"
    critic = True  # D's output is a reconstruction error to push apart, not a real/fake classifier's logit
    hparams = {**adam_hparams(lr=1e-4, beta1=0.5),
               "gamma": HParam(0.75, 0.0, 1.0, help="diversity ratio: the target of E[L(G(z))] / E[L(x)]"),
               "lambda_k": HParam(1e-3, 1e-5, 1e-1, log=True, help="the controller's gain: learning rate of k"),
               # The paper does not say; compare_gan v1 (ops.py) draws every weight from N(0, 0.02), and it learned
               # faster here than PyTorch's default (docs: Variants).
               **init("dcgan"), **arch("dcgan", choices=("dcgan", "lucic")),
               **tips("lr_d_ratio", "g_width", "d_width", "g_ema", "g_ema_start")}

    def build(self) -> None:
        if self.hp.arch == "lucic":
            self.z_dim, self.z_prior = LUCIC_NOISE
            self.G, self.D = lucic_generator(self), lucic_auto_encoder(self.image_shape)
        else:
            self.G = conv_generator(self, init=self.hp.init)
            width = scaled(CONV_WIDTH, self.tip("d_width"))
            self.D = initialised(ReconstructionAutoEncoder(ConvDiscriminator(self.image_shape, width, outputs=CODE),
                                                           ConvGenerator(CODE, self.image_shape, width)), self.hp.init)
        self.opt_g = self.adam(self.G)
        self.opt_d = self.adam(self.D, lr=self.lr_d)
        # Training state, not a weight: a buffer, so that checkpoints save it and a resumed run goes on from it.
        self.register_buffer("k", torch.zeros(()))

    def discriminate(self, images: Tensor, labels: Tensor) -> Tensor:
        """Minus the reconstruction error, so that as for every other variant a higher score means more real."""
        return -self.D(images)[0]

    def train_step(self, real: Tensor, labels: Tensor) -> dict[str, Tensor]:
        fake = self.G(self.latent(len(real)))
        real_loss, fake_loss = self.D(real)[0].mean(), self.D(fake.detach())[0].mean()
        loss_d = began_d_loss(real_loss, fake_loss, self.k)
        self.update(self.opt_d, loss_d)
        loss_g = self.D(fake)[0].mean()  # D's fresh verdict, as in the other variants
        self.update(self.opt_g, loss_g)
        # The controller sees L(x) and L(G(z)) of D's step: one D, one batch of fakes, as in the paper's box.
        real_loss, fake_loss = real_loss.detach(), fake_loss.detach()
        with torch.no_grad():
            self.k.copy_(next_k(self.k, real_loss, fake_loss, self.hp.gamma, self.hp.lambda_k))
        return {"loss_d": loss_d, "loss_g": loss_g, "recon_real": real_loss, "recon_fake": fake_loss,
                "k": self.k.clone(), "convergence": convergence_measure(real_loss, fake_loss, self.hp.gamma)}
