"""Network blocks the variants share: an MLP pair, a DCGAN-style convolutional pair, and the
network every loss of Lucic et al. 2018 was trained on (compare_gan v1's).

Shapes follow the dataset: any channel count, and any image side that halves down to a base
of 3 to 7 pixels (8, 28, 32, 64, ...); Lucic's network takes any side divisible by 4. The tips that change networks (width multipliers, SELU
without batch norm, the minibatch standard-deviation channel) are arguments here, and
:func:`conv_generator` / :func:`conv_discriminator` read them from a variant's hyperparameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TypeVar

import torch
from torch import Tensor, nn

from bench.errors import ConfigError
from bench.registry import TIPS, HParam, Variant

CONV_WIDTH = 32
"""Base channels of the convolutional networks: chosen by time to quality (README, Performance)."""


def activation(selu: bool, *, leaky: bool) -> nn.Module:
    """SELU, whose self-normalisation replaces batch norm, or else LeakyReLU(0.2) (DCGAN's D, the
    MLPs) or ReLU (DCGAN's G)."""
    if selu:
        return nn.SELU(inplace=True)
    return nn.LeakyReLU(0.2, inplace=True) if leaky else nn.ReLU(inplace=True)


def scaled(width: int, multiplier: float) -> int:
    """A width multiplier applied to a layer width (at least one unit)."""
    return max(1, round(width * multiplier))


D_NORMS = ("none", "batch", "layer", "spectral")
"""D's normalisations (the d_norm tip; Kurach et al. 2019's axis): none; batch norm; layer norm over a
sample's channels and positions; spectral normalisation of every weight (Miyato et al. 2018)."""


def norm_layer(norm: str, features: int, *, dims: int) -> list[nn.Module]:
    """The layer after a hidden linear (``dims`` 1) or convolutional (2) layer of D for ``norm`` (D_NORMS):
    batch norm, layer norm over a sample's features (channels and positions: one group of GroupNorm), or
    none (``spectral`` acts on the weights instead: :func:`spectral`)."""
    if norm == "batch":
        return [nn.BatchNorm1d(features) if dims == 1 else nn.BatchNorm2d(features)]
    if norm == "layer":
        return [nn.LayerNorm(features) if dims == 1 else nn.GroupNorm(1, features)]
    return []


Network = TypeVar("Network", bound=nn.Module)


def spectral(network: Network, norm: str) -> Network:
    """``network`` with every convolution and linear layer spectrally normalised when ``norm`` is 'spectral':
    W / sigma(W), sigma estimated by one power iteration per training forward (Miyato et al. 2018), through
    ``torch.nn.utils.parametrizations.spectral_norm``. Applied after initialisation, to the weights it made."""
    if norm == "spectral":
        for module in network.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.utils.parametrizations.spectral_norm(module)
    return network


def resolved_norm(variant: Variant, paper: str) -> str:
    """D's normalisation for ``variant``: its d_norm tip, or ``paper`` (its paper's) where the tip is 'default'."""
    norm = variant.tip("d_norm")
    return paper if norm == "default" else norm


class MinibatchStd(nn.Module):
    """Appends one channel: the standard deviation of each feature over the batch, averaged
    (Karras et al. 2018). D can then see a batch whose samples all look alike."""

    def forward(self, x: Tensor) -> Tensor:
        spread = x.float().std(dim=0, unbiased=False).mean().to(x.dtype)
        return torch.cat([x, spread.expand(len(x), 1, *x.shape[2:])], dim=1)


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

    def __init__(self, in_dim: int, image_shape: tuple[int, int, int], hidden: tuple[int, ...] = (256, 512, 1024),
                 *, selu: bool = False):
        super().__init__()
        self.image_shape = image_shape
        layers: list[nn.Module] = []
        for width in hidden:
            # Batch norm in every layer but the output, as DCGAN's generator has it (SELU instead normalises itself).
            norm = [] if selu else [nn.BatchNorm1d(width)]
            layers += [nn.Linear(in_dim, width), *norm, activation(selu, leaky=True)]
            in_dim = width
        layers += [nn.Linear(in_dim, math.prod(image_shape)), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(-1, *self.image_shape)


class MLPDiscriminator(nn.Module):
    """images (N, C, H, W) -> logits (N,); ``norm`` after each hidden layer (D_NORMS; Goodfellow's had none)."""

    def __init__(self, image_shape: tuple[int, int, int], hidden: tuple[int, ...] = (512, 256), *, selu: bool = False,
                 norm: str = "none"):
        super().__init__()
        in_dim = math.prod(image_shape)
        layers: list[nn.Module] = [nn.Flatten()]
        for width in hidden:
            layers += [nn.Linear(in_dim, width), *norm_layer(norm, width, dims=1), activation(selu, leaky=True)]
            in_dim = width
        layers.append(nn.Linear(in_dim, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).flatten()


class ConvGenerator(nn.Module):
    """DCGAN generator: z (N, in_dim) -> images (N, C, H, W) in [-1, 1].

    A transposed conv projects z to a base x base map, then stride-2 transposed convs double
    it up to H; batch norm and ReLU everywhere but the Tanh output (Radford et al. 2016), or
    SELU and no batch norm with ``selu``.
    """

    def __init__(self, in_dim: int, image_shape: tuple[int, int, int], width: int = CONV_WIDTH, *,
                 selu: bool = False):
        super().__init__()
        channels, side, _ = image_shape
        base, stages = conv_plan(side)
        features = width * 2 ** (stages - 1)

        def block(conv: nn.Module, out: int) -> list[nn.Module]:
            return [conv] + ([] if selu else [nn.BatchNorm2d(out)]) + [activation(selu, leaky=False)]

        layers = block(nn.ConvTranspose2d(in_dim, features, base, 1, 0, bias=selu), features)
        for _ in range(stages - 1):
            layers += block(nn.ConvTranspose2d(features, features // 2, 4, 2, 1, bias=selu), features // 2)
            features //= 2
        layers += [nn.ConvTranspose2d(features, channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z[:, :, None, None])


class ConvDiscriminator(nn.Module):
    """DCGAN discriminator: images (N, C + extra_channels, H, W) -> scores (N,), or (N, outputs).

    Stride-2 convs with LeakyReLU(0.2), no pooling, no hidden fully connected layer; ``norm``
    (D_NORMS) on every layer but the input one: batch norm by DCGAN's rules, none in WGAN-GP's
    critic (whose gradient penalty is per sample), none either with ``selu`` in place of batch
    norm. ``minibatch_std`` appends the batch's feature spread as a channel before the head.
    ``trunk`` is exposed for heads that share it.
    """

    def __init__(self, image_shape: tuple[int, int, int], width: int = CONV_WIDTH, *, extra_channels: int = 0,
                 norm: str = "batch", selu: bool = False, minibatch_std: bool = False, outputs: int = 1):
        super().__init__()
        channels, side, _ = image_shape
        base, stages = conv_plan(side)
        if selu and norm == "batch":
            norm = "none"  # SELU normalises itself
        layers: list[nn.Module] = [nn.Conv2d(channels + extra_channels, width, 4, 2, 1),
                                   activation(selu, leaky=True)]
        features = width
        for _ in range(stages - 1):
            normed = norm_layer(norm, features * 2, dims=2)
            layers += [nn.Conv2d(features, features * 2, 4, 2, 1, bias=not normed), *normed,
                       activation(selu, leaky=True)]
            features *= 2
        self.trunk = nn.Sequential(*layers)
        self.trunk_features = features * base * base
        head = nn.Conv2d(features + minibatch_std, outputs, base, 1, 0)
        self.head = nn.Sequential(MinibatchStd(), head) if minibatch_std else head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.trunk(x)).flatten(1).squeeze(1)


def conv_generator(variant: Variant, in_dim: int | None = None, *, init: str) -> ConvGenerator:
    """The DCGAN generator for ``variant``'s images (from its noise, or ``in_dim`` inputs), sized and activated
    as its tips say, initialised as ``init`` names."""
    return initialised(ConvGenerator(in_dim or variant.z_dim, variant.image_shape,
                                     scaled(CONV_WIDTH, variant.tip("g_width")),
                                     selu=variant.tip("activation") == "selu"), init)


def conv_discriminator(variant: Variant, *, d_norm: str, init: str, **options) -> ConvDiscriminator:
    """The DCGAN discriminator for ``variant``'s images, sized, activated and normalised as its tips say
    (``d_norm``: its paper's normalisation, which the d_norm tip may replace), initialised as ``init`` names
    (``options``: see :class:`ConvDiscriminator`)."""
    norm = resolved_norm(variant, d_norm)
    return spectral(initialised(ConvDiscriminator(variant.image_shape, scaled(CONV_WIDTH, variant.tip("d_width")),
                                                  norm=norm, selu=variant.tip("activation") == "selu",
                                                  minibatch_std=bool(variant.tip("minibatch_std")), **options),
                                init), norm)


INITS = ("dcgan", "pytorch")


def init(default: str) -> dict[str, HParam]:
    """The ``init`` hyperparameter of the convolutional networks, for the variants whose papers'
    code initialised them as DCGAN does."""
    return {"init": HParam(default, choices=INITS, help="conv weights: dcgan (N(0, 0.02), batch norm scale "
                                                         "N(1, 0.02), Radford et al. 2016) or pytorch (its default)")}


def initialised(network: nn.Module, init: str) -> nn.Module:
    """``network`` with DCGAN's initialisation when ``init`` is 'dcgan' (Radford et al. 2016: every convolution
    N(0, 0.02), batch norm scales N(1, 0.02), biases 0); as PyTorch made it for 'pytorch'."""
    if init != "dcgan":
        return network
    for module in network.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d)):
            nn.init.normal_(module.weight, 1.0 if isinstance(module, nn.BatchNorm2d) else 0.0, 0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return network


def mlp_pair(variant: Variant, d_norm: str = "none") -> tuple[MLPGenerator, MLPDiscriminator]:
    """The MLP generator and discriminator for ``variant``, as its tips say, D normalised as ``d_norm`` (the
    paper's: DCGAN's batch-norm rule is for convolutional D's, Goodfellow et al.'s MLP had none) unless the
    d_norm tip names another."""
    selu = variant.tip("activation") == "selu"
    g_hidden = tuple(scaled(width, variant.tip("g_width")) for width in (256, 512, 1024))
    d_hidden = tuple(scaled(width, variant.tip("d_width")) for width in (512, 256))
    norm = resolved_norm(variant, d_norm)
    return (MLPGenerator(variant.z_dim, variant.image_shape, g_hidden, selu=selu),
            spectral(MLPDiscriminator(variant.image_shape, d_hidden, selu=selu, norm=norm), norm))


LUCIC_NOISE = (64, "uniform")
"""compare_gan's noise (z_dim, z_prior): 64-d, uniform on (-1, 1); it belongs to the network as much as its layers do."""


class DebiasedRunningStatistics:
    """Batch norm whose running statistics (what eval-mode sampling uses) are an exponential average with
    decay 0.999, as compare_gan's TensorFlow batch norm, divided by 1 - 0.999^t (TensorFlow's zero_debias):
    PyTorch's momentum at the t-th training forward is 0.001 / (1 - 0.999^t). Without that the average
    is 1 - 0.999^250 = 22% formed after 250 steps, and the eval-mode samples of a healthy run look
    collapsed; after compare_gan's 15,625 steps the two averages differ by 0.999^15625 = 2e-7 of the
    first batch's statistics."""

    DECAY = 0.999
    forwards = 0

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.forwards += 1
            self.momentum = (1 - self.DECAY) / (1 - self.DECAY ** self.forwards)
        return super().forward(x)

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args)
        self.forwards = int(state_dict.get(prefix + "num_batches_tracked", 0))  # a resumed run goes on from there


class DebiasedBatchNorm1d(DebiasedRunningStatistics, nn.BatchNorm1d):
    pass


class DebiasedBatchNorm2d(DebiasedRunningStatistics, nn.BatchNorm2d):
    pass


def tf_batch_norm(features: int, dims: int) -> nn.Module:
    """Batch norm as compare_gan's TensorFlow ops.batch_norm: decay 0.999 (debiased), eps 1e-3."""
    norm = DebiasedBatchNorm1d if dims == 1 else DebiasedBatchNorm2d
    return norm(features, eps=1e-3, momentum=1e-3)


def lucic_quarter(side: int) -> int:
    """The side of Lucic's network's smallest feature map: a quarter of the image's."""
    if side % 4 or side < 8:
        raise ConfigError(f"image side {side} is not supported by arch=lucic (two stride-2 stages); "
                          "use a side divisible by 4, at least 8 (e.g. 28, 32)")
    return side // 4


class LucicGenerator(nn.Module):
    """compare_gan v1's generator (``gans/abstract_gan.py``, the InfoGAN network): z -> FC 1024 -> FC
    128 x (H/4) x (W/4) -> deconv 4x4/2 to 64 channels -> deconv 4x4/2 to C, batch norm and LeakyReLU(0.2)
    between. Its output is a Tanh on [-1, 1] data where theirs is a sigmoid on [0, 1] data: the same
    family of functions (tanh(a) = 2 sigmoid(2a) - 1), so only the data's affine scale differs.
    ``hidden``: the FC layers before the projection (BEGAN's decoder has none)."""

    def __init__(self, in_dim: int, image_shape: tuple[int, int, int], hidden: tuple[int, ...] = (1024,)):
        super().__init__()
        channels, side, _ = image_shape
        quarter = lucic_quarter(side)
        layers: list[nn.Module] = []
        for width in (*hidden, 128 * quarter ** 2):
            layers += [nn.Linear(in_dim, width), tf_batch_norm(width, 1), nn.LeakyReLU(0.2, inplace=True)]
            in_dim = width
        layers += [nn.Unflatten(1, (128, quarter, quarter)),
                   nn.ConvTranspose2d(128, 64, 4, 2, 1), tf_batch_norm(64, 2), nn.LeakyReLU(0.2, inplace=True),
                   nn.ConvTranspose2d(64, channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class LucicDiscriminator(nn.Module):
    """compare_gan v1's discriminator: conv 4x4/2 to 64 -> conv 4x4/2 to 128 -> FC 1024 -> FC ``outputs``,
    LeakyReLU(0.2) between, ``norm`` (D_NORMS) after the second conv and the first FC: batch norm is
    TensorFlow's, as theirs (their ``discriminator_batchnorm``). Images (N, C, H, W) -> scores (N,), or (N, outputs)."""

    def __init__(self, image_shape: tuple[int, int, int], *, norm: str = "batch", outputs: int = 1):
        super().__init__()
        channels, side, _ = image_shape
        quarter = lucic_quarter(side)

        def normed(features: int, dims: int) -> list[nn.Module]:
            return [tf_batch_norm(features, dims)] if norm == "batch" else norm_layer(norm, features, dims=dims)

        self.trunk = nn.Sequential(
            nn.Conv2d(channels, 64, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(64, 128, 4, 2, 1), *normed(128, 2), nn.LeakyReLU(0.2, inplace=True),
            nn.Flatten(), nn.Linear(128 * quarter ** 2, 1024), *normed(1024, 1), nn.LeakyReLU(0.2, inplace=True))
        self.head = nn.Linear(1024, outputs)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.trunk(x)).squeeze(1)


def lucic_initialised(network: nn.Module) -> nn.Module:
    """compare_gan's initialisation (``gans/ops.py``): every weight N(0, 0.02), a convolution's truncated
    at two standard deviations, biases 0; batch norm at scale 1, shift 0 (TensorFlow's, and PyTorch's)."""
    for module in network.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.trunc_normal_(module.weight, std=0.02, a=-0.04, b=0.04)
        elif isinstance(module, (nn.Linear, nn.ConvTranspose2d)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)):
            nn.init.zeros_(module.bias)
    return network


NETWORK_TIPS = ("g_width", "d_width", "activation", "minibatch_std")


def lucic_generator(variant: Variant) -> LucicGenerator:
    """Lucic's G for ``variant``'s images, from compare_gan's noise (LUCIC_NOISE), initialised as compare_gan did."""
    changed = [name for name in NETWORK_TIPS if variant.tip(name) != TIPS[name].hparam.default]
    if changed:
        raise ConfigError(f"arch=lucic is compare_gan's fixed network; {', '.join(changed)} would change it: "
                          "leave them at their defaults, or use arch=dcgan")
    return lucic_initialised(LucicGenerator(LUCIC_NOISE[0], variant.image_shape))


ARCHITECTURES = ("dcgan", "mlp", "lucic")


def arch(default: str, choices: tuple[str, ...] = ARCHITECTURES) -> dict[str, HParam]:
    """The ``arch`` hyperparameter, for variants whose paper works with other networks than its own: a
    study can then hold one architecture fixed across variants (as Lucic et al. 2018 did) or search it."""
    return {"arch": HParam(default, choices=choices,
                           help="networks: dcgan (strided convolutions), mlp (fully connected) or lucic "
                                "(compare_gan v1's, the one network of Lucic et al. 2018; its own initialisation)")}


def discriminator_batchnorm() -> dict[str, HParam]:
    """compare_gan's ``discriminator_batchnorm``, for the variants whose D may have batch norm: what their
    d_norm=default means (1: batch, 0: none); a d_norm other than default decides instead."""
    return {"discriminator_batchnorm": HParam(1, 0, 1, help="1: batch norm in D's hidden layers (DCGAN's rule, "
                                                            "compare_gan's default), 0: none; the paper's "
                                                            "normalisation that d_norm=default keeps")}


def per_sample_d_norm() -> dict[str, HParam]:
    """The d_norm tip for a D with a per-sample gradient penalty: any normalisation but batch norm, which
    couples a batch's samples (Gulrajani et al. 2017 suggest layer norm in its place)."""
    hparam = TIPS["d_norm"].hparam
    return {"d_norm": replace(hparam, choices=tuple(choice for choice in hparam.choices if choice != "batch"),
                              help=hparam.help + "; no batch: the gradient penalty is per sample")}


def paper_norm(batchnorm: int) -> str:
    """D's paper normalisation from compare_gan's ``discriminator_batchnorm`` flag (1: batch, 0: none)."""
    return "batch" if batchnorm else "none"


@dataclass(frozen=True)
class Networks:
    """A generator and a discriminator, and the noise the generator takes."""

    G: nn.Module
    D: nn.Module
    z_dim: int
    z_prior: str
    """The variant's own noise, or the network's where it brings one (LUCIC_NOISE)."""


def networks(variant: Variant, *, arch: str, d_norm: str, init: str) -> Networks:
    """G and D for ``variant``'s images in the architecture ``arch`` names (ARCHITECTURES), D normalised as
    ``d_norm`` (D_NORMS: the paper's, which the d_norm tip may replace; the MLP's D has none by default),
    the convolutional pair initialised as ``init`` names (INITS; Lucic's network has its own)."""
    if arch == "mlp":
        if variant.tip("minibatch_std"):
            raise ConfigError("minibatch_std=1 needs a convolutional discriminator; with arch=mlp leave it at 0")
        return Networks(*mlp_pair(variant, "none" if d_norm == "batch" else d_norm), variant.z_dim, variant.z_prior)
    if arch == "lucic":
        norm = resolved_norm(variant, d_norm)
        return Networks(lucic_generator(variant),
                        spectral(lucic_initialised(LucicDiscriminator(variant.image_shape, norm=norm)), norm),
                        *LUCIC_NOISE)
    return Networks(conv_generator(variant, init=init), conv_discriminator(variant, d_norm=d_norm, init=init),
                    variant.z_dim, variant.z_prior)
