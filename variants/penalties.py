"""Penalties on D's input gradient that several variants add to D's loss.

Each is a pure function of a critic (a callable from images to scores (N,)) and images of any
shape (N, C, H, W), returning the penalty averaged over the batch and, for the doctor, the mean
gradient norm it saw.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

Critic = Callable[[Tensor], Tensor]


def gradient_penalty(critic: Critic, real: Tensor, fake: Tensor) -> tuple[Tensor, Tensor]:
    """(mean of (||grad C(x_hat)||_2 - 1)^2, mean gradient norm) over interpolates
    x_hat = eps * real + (1 - eps) * fake, eps ~ U[0, 1] per sample (Gulrajani et al. 2017)."""
    eps = torch.rand(len(real), *([1] * (real.dim() - 1)), device=real.device, dtype=real.dtype)
    mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    norms = grad.flatten(1).float().norm(2, dim=1)  # bfloat16 would resolve |norm - 1| only to 0.004
    return ((norms - 1) ** 2).mean(), norms.mean().detach()
