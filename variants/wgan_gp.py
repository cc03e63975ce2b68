"""WGAN-GP (Gulrajani et al. 2017): WGAN with a gradient penalty instead of weight clipping.

The penalty lambda * (||grad C(x_hat)||_2 - 1)^2 on random interpolates x_hat between real and
fake samples enforces the Lipschitz constraint softly. The critic has no batch norm: the
penalty is defined per sample, and batch norm would couple the samples of a batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bench.registry import Expected, HParam, register
from variants.blocks import arch, networks
from variants.wgan import CRITIC_TIPS, WGAN, wasserstein_estimate


def gradient_penalty(critic: nn.Module, real: Tensor, fake: Tensor) -> tuple[Tensor, Tensor]:
    """(mean of (||grad C(x_hat)||_2 - 1)^2, mean gradient norm) over interpolates
    x_hat = eps * real + (1 - eps) * fake, eps ~ U[0, 1] per sample, any image shape."""
    eps = torch.rand(len(real), *([1] * (real.dim() - 1)), device=real.device, dtype=real.dtype)
    mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    norms = grad.flatten(1).float().norm(2, dim=1)  # bfloat16 would resolve |norm - 1| only to 0.004
    return ((norms - 1) ** 2).mean(), norms.mean().detach()


@register
class WGANGP(WGAN):
    """Gulrajani et al. 2017, critic without batch norm; Adam 1e-4, betas (0, 0.9), lambda 10, n_critic 5."""

    name = "wgan_gp"
    hparams = {
        "lr": HParam(1e-4, 1e-6, 1e-2, log=True, help="Adam learning rate of G and the critic"),
        "beta1": HParam(0.0, 0.0, 0.999, help="Adam first-moment decay"),
        "beta2": HParam(0.9, 0.0, 0.9999, help="Adam second-moment decay"),
        "gp_lambda": HParam(10.0, 0.01, 1000.0, log=True, help="gradient-penalty weight"),
        "n_critic": HParam(5, 1, 10, help="critic updates per generator update"),
        **arch("dcgan"),
        **CRITIC_TIPS,
    }
    expected = {"grad_norm": Expected("gradient_penalty_norm", 0.5, 2.0, "the critic's gradient norm on interpolates",
                                      "it should stay near the 1 the penalty enforces; raise gp_lambda or lower "
                                      "the learning rate")}

    def build(self) -> None:
        self.G, self.D = networks(self, batch_norm=False)  # the penalty is per sample: no batch norm
        self.opt_g = self.adam(self.G)
        self.opt_d = self.adam(self.D, lr=self.lr_d)

    def critic_losses(self, real: Tensor, fake: Tensor) -> dict[str, Tensor]:
        distance = wasserstein_estimate(self.D(real), self.D(fake))
        penalty, grad_norm = gradient_penalty(self.D, real, fake)
        return {"loss_d": -distance + self.hp.gp_lambda * penalty, "wasserstein": distance,
                "gradient_penalty": penalty, "grad_norm": grad_norm}

    def weight_bound(self) -> float | None:
        return None  # no clipping: the penalty replaces it

    def after_critic_update(self) -> None:
        """No clipping: the penalty replaces it."""
