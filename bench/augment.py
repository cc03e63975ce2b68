"""Differentiable augmentation of every image D sees (Zhao et al. 2020, DiffAugment), the
``diffaugment`` tip: the transforms and parameter ranges of the authors' reference code
(mit-han-lab/data-efficient-gans, ``DiffAugment_pytorch.py``), on images in [-1, 1].

- ``color``: brightness + U[-0.5, 0.5), then saturation x U[0, 2) about each pixel's channel mean,
  then contrast x U[0.5, 1.5) about the image's mean;
- ``translation``: a whole-pixel shift of up to 1/8 of the side in each direction, zeros shifted in;
- ``cutout``: a square of half the side (a quarter of the area) set to zero, centred anywhere in the
  image (clipped at its edges).

Each draw is per sample, from the training device's generator (so a checkpoint resumes it), and
every transform is differentiable in the images, so that G learns through it.
"""

from __future__ import annotations

from itertools import combinations

import torch
from torch import Tensor

POLICIES = ("color", "translation", "cutout")
CHOICES = ("none", *(",".join(chosen) for size in range(1, 4) for chosen in combinations(POLICIES, size)))
"""The diffaugment tip's values: none, or policies in the reference's order, comma-separated."""


def _uniform(x: Tensor, low: float, high: float) -> Tensor:
    """One draw per sample, U[low, high), shaped to broadcast over (C, H, W)."""
    return low + (high - low) * torch.rand(len(x), 1, 1, 1, dtype=x.dtype, device=x.device)


def brightness(x: Tensor, shift: Tensor) -> Tensor:
    return x + shift


def saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Each pixel's channels moved from (factor > 1) or towards (< 1) their mean."""
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * factor + mean


def contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Each image's pixels moved from or towards the image's mean."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * factor + mean


def translate(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Image i moved down by rows[i] and right by cols[i] pixels (negative: up, left), zeros shifted in."""
    n, _, height, width = x.shape
    source_rows = torch.arange(height, device=x.device) - rows.view(-1, 1)  # (N, H): where each row comes from
    source_cols = torch.arange(width, device=x.device) - cols.view(-1, 1)
    inside = (((source_rows >= 0) & (source_rows < height))[:, :, None]
              & ((source_cols >= 0) & (source_cols < width))[:, None, :])
    moved = x[torch.arange(n, device=x.device)[:, None, None], :, source_rows.clamp(0, height - 1)[:, :, None],
              source_cols.clamp(0, width - 1)[:, None, :]]  # (N, H, W, C)
    return moved.permute(0, 3, 1, 2) * inside[:, None].to(x.dtype)


def cut_out(x: Tensor, top: Tensor, left: Tensor, size: tuple[int, int]) -> Tensor:
    """Image i with the rows top[i] .. top[i] + size[0] - 1 of the columns left[i] .. left[i] + size[1] - 1
    set to zero (the part of that square inside the image)."""
    _, _, height, width = x.shape
    rows = torch.arange(height, device=x.device) - top.view(-1, 1)
    cols = torch.arange(width, device=x.device) - left.view(-1, 1)
    square = ((rows >= 0) & (rows < size[0]))[:, :, None] & ((cols >= 0) & (cols < size[1]))[:, None, :]
    return x * (~square)[:, None].to(x.dtype)


def random_color(x: Tensor) -> Tensor:
    x = brightness(x, _uniform(x, -0.5, 0.5))
    x = saturation(x, _uniform(x, 0.0, 2.0))
    return contrast(x, _uniform(x, 0.5, 1.5))


def random_translation(x: Tensor) -> Tensor:
    reach_rows, reach_cols = x.shape[2] // 8, x.shape[3] // 8
    rows = torch.randint(-reach_rows, reach_rows + 1, (len(x),), device=x.device)
    cols = torch.randint(-reach_cols, reach_cols + 1, (len(x),), device=x.device)
    return translate(x, rows, cols)


def random_cutout(x: Tensor) -> Tensor:
    size = (x.shape[2] // 2, x.shape[3] // 2)
    # The square's centre is uniform over the image (one more position where a side is even, as the reference).
    centre_rows = torch.randint(0, x.shape[2] + 1 - size[0] % 2, (len(x),), device=x.device)
    centre_cols = torch.randint(0, x.shape[3] + 1 - size[1] % 2, (len(x),), device=x.device)
    return cut_out(x, centre_rows - size[0] // 2, centre_cols - size[1] // 2, size)


RANDOM = {"color": random_color, "translation": random_translation, "cutout": random_cutout}


def augment(x: Tensor, policy: str) -> Tensor:
    """``x`` (N, C, H, W) with each policy of ``policy`` (one of CHOICES) applied in turn; ``x`` for 'none'."""
    if policy == "none":
        return x
    for name in policy.split(","):
        x = RANDOM[name](x)
    return x
