"""The variant contract, the @register decorator and entry-point discovery.

A variant is a small class that states its networks, losses and paper defaults; the engine
owns everything else (devices, seeds, the loop, AMP, checkpoints). Variants shipped with
ganbench and third-party ones are both found through the entry-point group ``bench.variants``.
"""

from __future__ import annotations

import abc
import contextlib
import copy
import math
import warnings
from dataclasses import dataclass
from importlib.metadata import entry_points
from types import SimpleNamespace
from typing import ClassVar, Iterator

import torch
from torch import nn

from bench.augment import CHOICES, augment
from bench.errors import ConfigError, DuplicateVariantError

ENTRY_POINT_GROUP = "bench.variants"
HParamValue = float | int | str
REFERENCE_VARIANT = "dcgan"
"""The variant that machine-level benchmarks (`bench perf`: overheads, the hardware limit) time:
one plain convolutional G and D update per step, nothing variant-specific in the way."""


@dataclass(frozen=True)
class Expected:
    """A value ``train_step`` returns that should average within [low, high] once training is under
    way, because the variant enforces it (WGAN-GP's gradient norm of 1 on interpolates); the
    training doctor reports ``check`` when it does not."""

    check: str
    low: float
    high: float
    meaning: str
    """What the value is, as the start of a sentence: "the critic's gradient norm on interpolates"."""
    fix: str


@dataclass(frozen=True)
class HParam:
    """One hyperparameter: its paper default and the range a study may search.

    Numbers take ``low``/``high`` (inclusive; ``log`` marks a scale to search on);
    strings take ``choices``.
    """

    default: HParamValue
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    log: bool = False
    help: str = ""

    def __post_init__(self) -> None:  # a variant's declaration, checked when its module is imported
        if isinstance(self.default, str):
            if self.default not in self.choices:
                raise TypeError(f"HParam({self.default!r}): a string takes choices that include its default")
        elif isinstance(self.default, bool) or not isinstance(self.default, (int, float)):
            raise TypeError(f"HParam({self.default!r}): the default is a number (low/high) or a string (choices)")
        elif self.choices or self.low is None or self.high is None or not self.low <= self.default <= self.high:
            raise TypeError(f"HParam({self.default!r}): a number takes low <= default <= high, not choices")

    def parse(self, name: str, text: str) -> HParamValue:
        """Converts command-line text to this hyperparameter's type."""
        kind = type(self.default)
        try:
            value = kind(float(text)) if kind is int and float(text).is_integer() else kind(text)
        except ValueError:
            number = "an integer" if kind is int else "a number"
            raise ConfigError(f"{name}={text!r} is not {number}; valid: {self.describe()}") from None
        return value

    def check(self, name: str, value: HParamValue) -> HParamValue:
        """Returns ``value`` if it is valid for this hyperparameter, else raises ConfigError."""
        if isinstance(self.default, str):
            if value not in self.choices:
                raise ConfigError(f"{name}={value!r} is not valid; choose one of: {', '.join(self.choices)}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}={value!r} must be a number in {self.describe()}")
        if isinstance(self.default, int) and not float(value).is_integer():
            raise ConfigError(f"{name}={value!r} must be an integer in {self.describe()}")
        if not math.isfinite(value) or not self.low <= value <= self.high:
            raise ConfigError(f"{name}={value!r} is out of range; valid: {self.describe()}")
        return type(self.default)(value)

    def describe(self) -> str:
        if self.choices:
            return "{" + ", ".join(self.choices) + "}"
        return f"[{self.low:g}, {self.high:g}]" + (" (log)" if self.log else "")


@dataclass(frozen=True)
class Tip:
    """A folklore training tip as a hyperparameter; its default switches it off, so that a
    variant's defaults stay its paper's. ``needs`` says what a variant must have for it to apply."""

    hparam: HParam
    needs: str


TIPS = {
    "label_smoothing": Tip(HParam(0.0, 0.0, 0.5, help="one-sided label smoothing, D's real target is 1 - this "
                                                      "(Salimans et al. 2016)"),
                           "a discriminator trained with binary cross-entropy on real/fake targets"),
    "minibatch_std": Tip(HParam(0, 0, 1, help="1 gives D the batch's feature standard deviation as an extra "
                                              "channel (Karras et al. 2018)"),
                         "a convolutional discriminator with a final feature map"),
    "lr_d_ratio": Tip(HParam(1.0, 0.1, 10.0, log=True, help="D's learning rate as a multiple of lr "
                                                            "(two time-scale update rule, Heusel et al. 2017)"),
                      "a discriminator optimiser built with the variant's lr_d"),
    "g_width": Tip(HParam(1.0, 0.25, 4.0, log=True, help="G's width multiplier (channels or units)"),
                   "networks built from variants.blocks"),
    "d_width": Tip(HParam(1.0, 0.25, 4.0, log=True, help="D's width multiplier (channels or units)"),
                   "networks built from variants.blocks"),
    "activation": Tip(HParam("default", choices=("default", "selu"),
                             help="default (the paper's, with batch norm) or selu (SELU, no batch norm; "
                                  "Klambauer et al. 2017)"),
                      "networks built from variants.blocks"),
    "d_norm": Tip(HParam("default", choices=("default", "none", "batch", "layer", "spectral"),
                         help="D's normalisation: default (its paper's), none, batch, layer (over a sample's channels "
                              "and positions) or spectral (Miyato et al. 2018); Kurach et al. 2019's axis"),
                  "a discriminator built from variants.blocks"),
    "r1_gamma": Tip(HParam(0.0, 0.0, 1000.0, help="R1 penalty (gamma/2) E||grad D(x)||^2 on the real batch "
                                                  "(Mescheder et al. 2018); 0: off"),
                    "a discriminator trained on real and fake images (a real/fake loss or a critic's scores)"),
    "gp_weight": Tip(HParam(0.0, 0.0, 1000.0, help="gradient penalty weight: lambda E[(||grad D(x_hat)||_2 - 1)^2] "
                                                   "on interpolates of real and fake (Gulrajani et al. 2017) beside "
                                                   "any loss, Kurach et al. 2019's GP; 0: off"),
                     "a discriminator trained on real/fake targets without a gradient penalty of its own (wgan_gp "
                     "and dragan have theirs, wgan its clipping)"),
    "diffaugment": Tip(HParam("none", choices=CHOICES, help="differentiable augmentation of every image D sees, "
                                                            "real and fake (Zhao et al. 2020): none, or policies "
                                                            "of color, translation, cutout"),
                       "a discriminator that sees only images (not an auto-encoder's reconstruction)"),
    "g_ema": Tip(HParam(0.0, 0.0, 0.9999, help="decay of an exponential moving average of G's weights (Yazici et "
                                               "al. 2019), which is then what is sampled, scored and ranked, the "
                                               "raw G scored beside it as ..._raw; 0: off"),
                 "a generator G"),
    "g_ema_start": Tip(HParam(0, 0, 10_000_000, help="the generator step after which g_ema averages; until "
                                                     "then the average is a copy of G"),
                       "a generator G"),
}


def tips(*names: str) -> dict[str, HParam]:
    """The hyperparameters of the tips a variant supports (all of them by default)."""
    return {name: TIPS[name].hparam for name in names or TIPS}


def adam_hparams(lr: float, beta1: float, beta2: float = 0.999) -> dict[str, HParam]:
    """The Adam hyperparameters most variants share, with their paper defaults."""
    return {
        "lr": HParam(lr, 1e-6, 1e-1, log=True, help="learning rate of G (and of D, times lr_d_ratio)"),
        "beta1": HParam(beta1, 0.0, 0.999, help="Adam first-moment decay"),
        "beta2": HParam(beta2, 0.0, 0.9999, help="Adam second-moment decay"),
    }


class Variant(nn.Module, abc.ABC):
    """Base class of a GAN variant.

    A subclass sets ``name`` and ``hparams``, builds its networks and optimisers in
    :meth:`build`, and implements :meth:`train_step`. ``G`` maps a latent batch to images in
    [-1, 1]; ``D`` scores images. Example::

        variant = get_variant("dcgan")((1, 28, 28), num_classes=10, lr=1e-4)
        losses = variant.train_step(real, labels)     # real: (B, 1, 28, 28) in [-1, 1]
        images = variant.sample(16)                    # (16, 1, 28, 28) in [-1, 1]
    """

    name: ClassVar[str]
    hparams: ClassVar[dict[str, HParam]] = {}
    conditional: ClassVar[bool] = False
    """True when G and D see class labels."""
    loss_keys: ClassVar[tuple[str, str]] = ("loss_d", "loss_g")
    """The keys of D's and G's losses among the values train_step returns (the doctor's D-wins
    check reads them); a variant that names its losses otherwise declares them here."""
    critic: ClassVar[bool] = False
    """True when D is not a real/fake classifier but gives an unbounded score (a Wasserstein
    critic, an energy): the doctor's D-wins check then does not apply to its loss."""
    expected: ClassVar[dict[str, Expected]] = {}
    """Values train_step returns, by key, that the doctor watches for leaving their range."""
    z_dim: ClassVar[int] = 100
    z_prior: ClassVar[str] = "normal"
    """G's noise: 'normal', N(0, 1), or 'uniform', U(-1, 1) (compare_gan's); build() may set both for its networks."""

    G: nn.Module
    D: nn.Module

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, **hparams: HParamValue):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.num_classes = num_classes
        self.hp = SimpleNamespace(**self.resolve_hparams(hparams))
        self.build()
        if self.tip("g_ema"):
            self.G_ema = copy.deepcopy(self.G).requires_grad_(False)

    @classmethod
    def resolve_hparams(cls, overrides: dict[str, HParamValue]) -> dict[str, HParamValue]:
        """The defaults with ``overrides`` applied, every value checked against its range."""
        values = {key: spec.default for key, spec in cls.hparams.items()}
        values.update({key: cls.hparam(key).check(key, value) for key, value in overrides.items()})
        return values

    @classmethod
    def hparam(cls, key: str) -> HParam:
        """The declared hyperparameter ``key``; a tip the variant does not take, or an unknown
        key, is a ConfigError that says why."""
        if key in cls.hparams:
            return cls.hparams[key]
        if key in TIPS:
            raise ConfigError(f"tip '{key}' does not apply to variant '{cls.name}': it needs {TIPS[key].needs}, "
                              f"which '{cls.name}' does not have; its tips: "
                              f"{', '.join(k for k in cls.hparams if k in TIPS) or 'none'}")
        raise ConfigError(f"variant '{cls.name}' has no hyperparameter '{key}'; valid: "
                          f"{', '.join(cls.hparams) or 'none'}")

    def tip(self, name: str) -> HParamValue:
        """This run's value of tip ``name``, or its neutral default where the variant does not take it."""
        return getattr(self.hp, name, TIPS[name].hparam.default)

    @property
    def lr_d(self) -> float:
        """D's learning rate: lr, times lr_d_ratio where the variant takes that tip."""
        return self.hp.lr * self.tip("lr_d_ratio")

    @abc.abstractmethod
    def build(self) -> None:
        """Creates ``self.G``, ``self.D`` (and any other networks) and their optimisers."""

    @abc.abstractmethod
    def train_step(self, real: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """One generator update with its discriminator updates.

        ``real``: (real_batches_per_step * B, C, H, W) in [-1, 1]; ``labels``: matching (N,)
        class indices. Returns scalar tensors (losses and estimates, D's and G's losses under
        ``loss_keys``), never Python floats: reading them would synchronise the device every step.
        """

    def check_losses(self, losses: dict[str, torch.Tensor]) -> None:
        """Refuses what train_step returned when it lacks a key of ``loss_keys``, naming the fix."""
        missing = [key for key in self.loss_keys if key not in losses]
        if missing:
            raise ConfigError(f"variant '{self.name}': train_step returns {', '.join(losses) or 'nothing'} but not "
                              f"{' or '.join(missing)}, which loss_keys = {self.loss_keys} names as D's and G's losses; "
                              "set loss_keys in the class to the keys of its D and G losses, e.g. "
                              "loss_keys = ('d_loss', 'g_loss')")

    def weight_bound(self) -> float | None:
        """A bound every weight of D must stay within (WGAN's clipping constant), which the doctor
        checks; None when the variant promises none."""
        return None

    @property
    def real_batches_per_step(self) -> int:
        """How many real batches one train_step consumes (n_critic for WGANs)."""
        return 1

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """G's input for ``n`` samples: (n, z_dim) noise drawn from ``z_prior``."""
        draw = torch.rand if self.z_prior == "uniform" else torch.randn
        z = draw(n, self.z_dim, generator=generator, device=self.rng_device(generator))
        return (2 * z - 1 if self.z_prior == "uniform" else z).to(self.device)

    def rng_device(self, generator: torch.Generator | None) -> torch.device:
        """Where to draw random numbers: on the generator's device when one is given (fixed,
        reproducible noise), else directly on the training device."""
        return generator.device if generator is not None else self.device

    def generate(self, latent: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) in [-1, 1] from a latent batch; conditional variants use labels."""
        return self.G(latent)

    def categorical_code(self, latent: torch.Tensor) -> torch.Tensor | None:
        """The categorical code (N,) a latent batch carries, for variants that have one
        (InfoGAN); scoring matches it to the classes the samples are recognised as."""
        return None

    def discriminate(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """D's raw scores (N,) for a batch of images, augmented as the diffaugment tip says; conditional variants
        use labels. Every image D sees, in D's and G's updates, passes through here or :meth:`augmented`."""
        return self.D(self.augmented(images))

    def augmented(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` with the diffaugment tip's differentiable augmentation (as they are when it is 'none')."""
        return augment(images, self.tip("diffaugment"))

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images in [-1, 1], with G in eval mode (its average where g_ema is on); labels default to
        uniform classes."""
        if labels is None:
            labels = torch.randint(self.num_classes, (n,), generator=generator,
                                   device=self.rng_device(generator)).to(self.device)
        with self.evaluating():
            return self.generate(self.latent(n, generator), labels.to(self.device))

    @property
    def averaging(self) -> bool:
        """Whether this run keeps an average of G's weights (the g_ema tip), ``G_ema``."""
        return "G_ema" in self._modules

    @torch.no_grad()
    def average_generator(self, step: int) -> None:
        """After generator step ``step``: G_ema <- g_ema * G_ema + (1 - g_ema) * G, or G_ema <- G up to
        g_ema_start. Batch-norm statistics are averaged like the weights, as StudioGAN's Ema does (BigGAN's
        code); counters are copied. One fused lerp per step; nothing where g_ema is off."""
        if not self.averaging:
            return
        weight = 1.0 if step <= self.tip("g_ema_start") else 1.0 - self.tip("g_ema")
        pairs = zip(self.G_ema.state_dict(keep_vars=True).values(), self.G.state_dict(keep_vars=True).values())
        floats, counters = [], []
        for pair in pairs:
            (floats if pair[0].is_floating_point() else counters).append(pair)
        torch._foreach_lerp_([averaged for averaged, _ in floats], [current for _, current in floats], weight)
        for averaged, current in counters:
            averaged.copy_(current)

    @contextlib.contextmanager
    def evaluating(self, *, raw: bool = False) -> Iterator[None]:
        """Eval mode (batch norm on its running statistics) for the block, with G's average in G's place
        where g_ema is on (unless ``raw``); then the mode and G before."""
        was_training, swapped = self.training, False
        try:
            self.eval()
            if self.averaging and not raw and not self._swapped:  # an enclosing block may have swapped already
                self._swap_generators()
                swapped = True
            yield
        finally:
            if swapped:
                self._swap_generators()
            self.train(was_training)

    _swapped = False

    def _swap_generators(self) -> None:
        """G and G_ema exchanged (a signal between the two assignments cannot leave them half done: one statement)."""
        self._modules["G"], self._modules["G_ema"] = self._modules["G_ema"], self._modules["G"]
        self._swapped = not self._swapped

    def adam(self, *modules: nn.Module, lr: float | None = None) -> torch.optim.Adam:
        """An Adam optimiser over ``modules`` with this variant's betas and ``lr`` (default: hp.lr)."""
        params = [p for module in modules for p in module.parameters()]
        return torch.optim.Adam(params, lr=self.hp.lr if lr is None else lr, betas=(self.hp.beta1, self.hp.beta2))

    @staticmethod
    def update(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        """One optimiser step on ``loss``; gradients are cleared first so that none leak
        between the D and G updates of a step."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimisers build() created, by attribute name (for checkpoints)."""
        return {key: value for key, value in vars(self).items() if isinstance(value, torch.optim.Optimizer)}


_VARIANTS: dict[str, type[Variant]] = {}
_discovered = False


def _source(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def register(cls: type[Variant]) -> type[Variant]:
    """Class decorator that makes a variant available by its ``name``."""
    if not (isinstance(cls, type) and issubclass(cls, Variant)):
        raise TypeError(f"@register expects a Variant subclass, got {cls!r}")
    existing = _VARIANTS.get(cls.name)
    if existing is not None and _source(existing) != _source(cls):
        raise DuplicateVariantError(
            f"variant name '{cls.name}' is registered twice: by {_source(existing)} and by "
            f"{_source(cls)}; rename one of them (its `name` attribute) or uninstall one package")
    _VARIANTS[cls.name] = cls
    return cls


def discover() -> None:
    """Loads every ``bench.variants`` entry point once. A plugin that fails to import is
    reported in one warning and skipped, so that the others still load."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = entry.load()
        except DuplicateVariantError:
            raise
        except Exception as exc:  # a broken plugin must not take the others down
            warnings.warn(f"variant plugin '{entry.name}' ({entry.value}) failed to import and is "
                          f"skipped: {type(exc).__name__}: {exc}", stacklevel=2)
            continue
        if isinstance(loaded, type) and issubclass(loaded, Variant) and loaded.name not in _VARIANTS:
            register(loaded)


def variants() -> dict[str, type[Variant]]:
    """All registered variants by name, sorted."""
    discover()
    return dict(sorted(_VARIANTS.items()))


def get_variant(name: str) -> type[Variant]:
    """The variant class called ``name``; an unknown name lists the valid ones."""
    known = variants()
    if name not in known:
        raise ConfigError(f"unknown variant '{name}'; choose one of: {', '.join(known)}")
    return known[name]
