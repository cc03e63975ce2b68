"""A critic that promises a weight bound under a name of its own (``max_weight``, not WGAN's
``clip_c``) and breaks it: it clamps to twice the bound. The doctor knows the bound only
through the contract (``weight_bound``), so this is how a third-party variant gets the check."""

import torch

from bench.registry import HParam, register
from variants.wgan import WGAN


@register
class LooseCritic(WGAN):
    """A WGAN whose critic weights should stay within max_weight but reach twice that."""

    name = "loose_critic"
    hparams = {"lr": WGAN.hparams["lr"], "n_critic": WGAN.hparams["n_critic"],
               "max_weight": HParam(0.02, 1e-3, 1.0, log=True, help="bound on every critic weight")}

    def architecture(self) -> dict[str, str | bool]:
        return {"arch": "dcgan", "d_norm": "batch", "init": "pytorch"}  # its hparams name none of these

    def weight_bound(self) -> float:
        return self.hp.max_weight

    def after_critic_update(self) -> None:
        with torch.no_grad():
            for param in self.D.parameters():
                param.clamp_(-2 * self.hp.max_weight, 2 * self.hp.max_weight)
