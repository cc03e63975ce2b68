"""WGAN-GP (Gulrajani et al. 2017): WGAN with a gradient penalty instead of weight clipping.

The penalty lambda * (||grad C(x_hat)||_2 - 1)^2 on random interpolates x_hat between real and
fake samples enforces the Lipschitz constraint softly. The critic has no batch norm: the
penalty is defined per sample, and batch norm would couple the samples of a batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bench.registry import Expected, HParam, register
from variants.blocks import arch, per_sample_d_norm
from variants.penalties import gradient_penalty
from variants.wgan import CRITIC_TIPS, WGAN, wasserstein_estimate


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
        **CRITIC_TIPS, **per_sample_d_norm(),
    }
    expected = {"grad_norm": Expected("gradient_penalty_norm", 0.5, 2.0, "the critic's gradient norm on interpolates",
                                      "it should stay near the 1 the penalty enforces; raise gp_lambda or lower "
                                      "the learning rate")}

    def architecture(self) -> dict[str, str | bool]:
        return {"arch": self.hp.arch, "d_norm": "none", "init": "pytorch"}  # the penalty is per sample

    def optimizer(self, network: nn.Module, lr: float) -> torch.optim.Optimizer:
        return self.adam(network, lr=lr)

    def weight_bound(self) -> float | None:
        return None  # no clipping: the penalty replaces it

    def critic_losses(self, real: Tensor, fake: Tensor) -> dict[str, Tensor]:
        distance = wasserstein_estimate(self.discriminate(real), self.discriminate(fake))
        penalty, grad_norm = gradient_penalty(self.discriminate, real, fake)
        return {"loss_d": -distance + self.hp.gp_lambda * penalty, "wasserstein": distance,
                "gradient_penalty": penalty, "grad_norm": grad_norm}
