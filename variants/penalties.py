"""Penalties on D's input gradient that several variants add to D's loss.

Each is a pure function of a critic (a callable from images to scores (N,)) and images of any
shape (N, C, H, W), returning the penalty averaged over the batch (and, for the doctor, the mean
gradient norm it saw). :func:`with_r1` adds R1 to a variant's D loss where its r1_gamma tip asks.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from bench.registry import Variant

Critic = Callable[[Tensor], Tensor]


def gradient_penalty(critic: Critic, real: Tensor, fake: Tensor) -> tuple[Tensor, Tensor]:
    """(mean of (||grad C(x_hat)||_2 - 1)^2, mean gradient norm) over interpolates
    x_hat = eps * real + (1 - eps) * fake, eps ~ U[0, 1] per sample (Gulrajani et al. 2017)."""
    eps = torch.rand(len(real), *([1] * (real.dim() - 1)), device=real.device, dtype=real.dtype)
    mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    norms = grad.flatten(1).float().norm(2, dim=1)  # bfloat16 would resolve |norm - 1| only to 0.004
    return ((norms - 1) ** 2).mean(), norms.mean().detach()


def r1_penalty(critic: Critic, real: Tensor) -> Tensor:
    """E ||grad C(x)||_2^2 over the real images x: Mescheder et al. 2018's R1 before its factor gamma / 2."""
    real = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(real).sum(), real, create_graph=True)
    return grad.flatten(1).float().pow(2).sum(dim=1).mean()


def with_r1(variant: Variant, losses: dict[str, Tensor], real: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """``losses`` with (r1_gamma / 2) * R1 on ``real`` added to D's loss (``loss_keys[0]``) and reported as
    ``r1_penalty``, when the variant's r1_gamma tip is on; as they are when it is 0. R1 takes its own
    forward pass of D on the real batch (with batch norm in D, one more update of its running statistics)."""
    gamma = variant.tip("r1_gamma")
    if not gamma:
        return losses
    penalty = r1_penalty(lambda images: variant.discriminate(images, labels), real)
    key = variant.loss_keys[0]
    return {**losses, key: losses[key] + gamma / 2 * penalty, "r1_penalty": penalty}
