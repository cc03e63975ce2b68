"""Penalties on D's input gradient that several variants add to D's loss.

Each is a pure function of a critic (a callable from images to scores (N,)) and images of any
shape (N, C, H, W), returning the penalty averaged over the batch (and, for the doctor, the mean
gradient norm it saw). :func:`with_penalties` adds them to a variant's D loss where its r1_gamma and
gp_weight tips ask.
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


def with_penalties(variant: Variant, losses: dict[str, Tensor], real: Tensor, fake: Tensor,
                   labels: Tensor) -> dict[str, Tensor]:
    """``losses`` with the penalties the variant's tips ask for added to D's loss (``loss_keys[0]``), each
    reported under its own name; as they are when both tips are 0:

    - r1_gamma: (r1_gamma / 2) * R1 on ``real``, ``r1_penalty``;
    - gp_weight: gp_weight * the gradient penalty on interpolates of ``real`` and the detached ``fake``,
      ``gp_penalty`` (Kurach et al. 2019's GP beside any loss; ``gp_grad_norm``, the mean norm it saw).

    Each takes its own forward pass of D (with batch norm in D, one more update of its running statistics)."""
    gamma, weight = variant.tip("r1_gamma"), variant.tip("gp_weight")
    key, added = variant.loss_keys[0], {}

    def critic(images: Tensor) -> Tensor:  # a conditional D scores the images with their labels
        return variant.discriminate(images, labels)

    if gamma:
        added["r1_penalty"] = r1_penalty(critic, real)
        losses = {**losses, key: losses[key] + gamma / 2 * added["r1_penalty"]}
    if weight:
        added["gp_penalty"], added["gp_grad_norm"] = gradient_penalty(critic, real, fake)
        losses = {**losses, key: losses[key] + weight * added["gp_penalty"]}
    return {**losses, **added}
