"""A DCGAN with a planted fault chosen by its hyperparameter ``fault``, so that a study can put a
failing trial in any worker process: ``nan`` makes D's loss NaN at step 10, ``detached_fake``
detaches the fake batch in the generator step (the doctor stops that at step 1)."""

from dataclasses import replace

from bench.registry import HParam, register
from variants.dcgan import DCGAN


@register
class FaultyDCGAN(DCGAN):
    """A DCGAN with a planted fault (nan, detached_fake or none)."""

    name = "faulty_dcgan"
    hparams = {**DCGAN.hparams, "fault": HParam("none", choices=("none", "nan", "detached_fake"))}
    steps_taken = 0

    def d_losses(self, batch):
        losses = super().d_losses(batch)
        self.steps_taken += 1
        if self.hp.fault == "nan" and self.steps_taken >= 10:
            losses["loss_d"] = losses["loss_d"] * float("nan")
        return losses

    def g_losses(self, batch):
        return super().g_losses(replace(batch, fake=batch.fake.detach()) if self.hp.fault == "detached_fake" else batch)
