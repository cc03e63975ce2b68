"""A third-party variant: a GAN with smaller MLPs, registered only through its entry point."""

from bench.registry import adam_hparams, register
from variants.blocks import MLPDiscriminator, MLPGenerator
from variants.gan import GAN


@register
class TinyGAN(GAN):
    """A GAN with small MLPs, from a separately installed package."""

    name = "tiny_gan"
    z_dim = 16
    hparams = {**adam_hparams(lr=1e-3, beta1=0.5), "loss": GAN.hparams["loss"]}

    def build(self) -> None:
        self.G = MLPGenerator(self.z_dim, self.image_shape, hidden=(64,))
        self.D = MLPDiscriminator(self.image_shape, hidden=(64,))
        self.opt_g = self.adam(self.G)
        self.opt_d = self.adam(self.D)
