"""Network blocks the variants share: an MLP pair and a DCGAN-style convolutional pair.

Shapes follow the dataset: any channel count, and any image side that halves down to a base
of 3 to 7 pixels (8, 28, 32, 64, ...).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from bench.errors import ConfigError


def conv_plan(side: int) -> tuple[int, int]:
    """(base side, number of stride-2 stages) for a square image of ``side`` pixels.

    28 -> (7, 2), 32 -> (4, 3), 8 -> (4, 1): G grows base->side by doubling, D halves back.
    """
    base, stages = side, 0
    while base % 2 == 0 and base > 7:
        base, stages = base // 2, stages + 1
    if stages == 0 or base < 3:
        raise ConfigError(f"image side {side} is not supported by the convolutional networks; "
                          "use a side that halves down to 3..7 pixels (e.g. 8, 28, 32, 64)")
    return base, stages


class MLPGenerator(nn.Module):
    """z (N, in_dim) -> images (N, C, H, W) in [-1, 1] through fully connected layers."""

    def __init__(self, in_dim: int, image_shape: tuple[int, int, int], hidden: tuple[int, ...] = (256, 512, 1024)):
        super().__init__()
        self.image_shape = image_shape
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_dim, width), nn.LeakyReLU(0.2)]
            in_dim = width
        layers += [nn.Linear(in_dim, math.prod(image_shape)), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(-1, *self.image_shape)


class MLPDiscriminator(nn.Module):
    """images (N, C, H, W) -> logits (N,)."""

    def __init__(self, image_shape: tuple[int, int, int], hidden: tuple[int, ...] = (512, 256)):
        super().__init__()
        in_dim = math.prod(image_shape)
        layers: list[nn.Module] = [nn.Flatten()]
        for width in hidden:
            layers += [nn.Linear(in_dim, width), nn.LeakyReLU(0.2)]
            in_dim = width
        layers.append(nn.Linear(in_dim, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).flatten()


class ConvGenerator(nn.Module):
    """DCGAN generator: z (N, in_dim) -> images (N, C, H, W) in [-1, 1].

    A transposed conv projects z to a base x base map, then stride-2 transposed convs double
    it up to H; batch norm and ReLU everywhere but the Tanh output (Radford et al. 2016).
    """

    def __init__(self, in_dim: int, image_shape: tuple[int, int, int], width: int = 32):
        super().__init__()
        channels, side, _ = image_shape
        base, stages = conv_plan(side)
        features = width * 2 ** (stages - 1)
        layers: list[nn.Module] = [nn.ConvTranspose2d(in_dim, features, base, 1, 0, bias=False),
                                   nn.BatchNorm2d(features), nn.ReLU(True)]
        for _ in range(stages - 1):
            layers += [nn.ConvTranspose2d(features, features // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(features // 2), nn.ReLU(True)]
            features //= 2
        layers += [nn.ConvTranspose2d(features, channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z[:, :, None, None])


class ConvDiscriminator(nn.Module):
    """DCGAN discriminator: images (N, C + extra_channels, H, W) -> scores (N,).

    Stride-2 convs with LeakyReLU(0.2), no pooling, no hidden fully connected layer; batch
    norm on every layer but the input one, unless ``batch_norm=False`` (WGAN-GP's critic,
    whose gradient penalty is per sample). ``trunk`` is exposed for heads that share it.
    """

    def __init__(self, image_shape: tuple[int, int, int], width: int = 32, *, extra_channels: int = 0,
                 batch_norm: bool = True):
        super().__init__()
        channels, side, _ = image_shape
        base, stages = conv_plan(side)
        layers: list[nn.Module] = [nn.Conv2d(channels + extra_channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        features = width
        for _ in range(stages - 1):
            layers.append(nn.Conv2d(features, features * 2, 4, 2, 1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(features * 2))
            layers.append(nn.LeakyReLU(0.2, True))
            features *= 2
        self.trunk = nn.Sequential(*layers)
        self.trunk_features = features * base * base
        self.head = nn.Conv2d(features, 1, base, 1, 0)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.trunk(x)).flatten()
