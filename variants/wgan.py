"""WGAN (Arjovsky et al. 2017): a critic estimates the Wasserstein-1 distance.

The critic has no sigmoid and no log; it is kept (roughly) 1-Lipschitz by clipping its weights
to [-c, c] after every update, and it is trained n_critic times per generator update, each
time on a fresh real batch. RMSprop, because momentum destabilised the paper's training.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bench.registry import HParam, Variant, register, tips
from variants.blocks import arch, discriminator_batchnorm, init, networks, paper_norm
from variants.penalties import with_penalties


CRITIC_TIPS = tips("minibatch_std", "lr_d_ratio", "g_width", "d_width", "activation", "d_norm", "r1_gamma",
                   "diffaugment", "g_ema", "g_ema_start")
"""Every tip but label smoothing: a critic has no real/fake targets to smooth."""


def wasserstein_estimate(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """E[C(x_r)] - E[C(x_f)]: the critic maximises it, so its loss is the negative. In float32:
    under bfloat16 autocast the difference of two close means would keep only ~3 digits."""
    return real_scores.float().mean() - fake_scores.float().mean()


@register
class WGAN(Variant):
    """Arjovsky et al. 2017, DCGAN networks; RMSprop 5e-5, c 0.01, n_critic 5."""

    name = "wgan"
    hparams = {
        "lr": HParam(5e-5, 1e-6, 1e-2, log=True, help="RMSprop learning rate of G and the critic"),
        "clip_c": HParam(0.01, 1e-3, 1.0, log=True, help="critic weights are clipped to [-c, c]"),
        "n_critic": HParam(5, 1, 10, help="critic updates per generator update"),
        **arch("dcgan"), **discriminator_batchnorm(),
        **init("pytorch"),  # the authors' code had DCGAN's, which learned slower here (docs: Variants)
        **CRITIC_TIPS,
    }
    critic = True

    def build(self) -> None:
        nets = networks(self, **self.architecture())
        self.G, self.D, self.z_dim, self.z_prior = nets.G, nets.D, nets.z_dim, nets.z_prior
        self.opt_g = self.optimizer(self.G, self.hp.lr)
        self.opt_d = self.optimizer(self.D, self.lr_d)

    def architecture(self) -> dict[str, str | bool]:
        """The networks' options (see :func:`variants.blocks.networks`)."""
        return {"arch": self.hp.arch, "d_norm": paper_norm(self.hp.discriminator_batchnorm), "init": self.hp.init}

    def optimizer(self, network: nn.Module, lr: float) -> torch.optim.Optimizer:
        """RMSprop: the paper found momentum (Adam) destabilised the critic's training."""
        return torch.optim.RMSprop(network.parameters(), lr=lr)

    @property
    def real_batches_per_step(self) -> int:
        return self.hp.n_critic

    def weight_bound(self) -> float | None:
        return self.hp.clip_c

    def critic_losses(self, real: Tensor, fake: Tensor) -> dict[str, Tensor]:
        """The critic's losses on one real batch and a detached fake batch."""
        distance = wasserstein_estimate(self.discriminate(real), self.discriminate(fake))
        return {"loss_d": -distance, "wasserstein": distance}

    def after_critic_update(self) -> None:
        """Clips every critic weight to [-c, c] (weight_bound), the paper's crude Lipschitz constraint."""
        bound = self.weight_bound()
        if bound is None:
            return
        with torch.no_grad():
            for param in self.D.parameters():
                param.clamp_(-bound, bound)

    def train_step(self, real: Tensor, labels: Tensor) -> dict[str, Tensor]:
        for real_batch, label_batch in zip(real.chunk(self.real_batches_per_step),
                                           labels.chunk(self.real_batches_per_step)):
            with torch.no_grad():
                fake = self.G(self.latent(len(real_batch)))
            critic_losses = with_penalties(self, self.critic_losses(real_batch, fake), real_batch, fake, label_batch)
            self.update(self.opt_d, critic_losses["loss_d"])
            self.after_critic_update()
        loss_g = -self.discriminate(self.G(self.latent(len(real_batch)))).float().mean()
        self.update(self.opt_g, loss_g)
        return {**critic_losses, "loss_g": loss_g}
