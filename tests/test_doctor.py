"""The training doctor: each check fires on a planted failure, on real Fashion-MNIST, within a
stated number of steps. That the built-in variants at their defaults raise no finding at all is
tested on the learning runs (test_learning.py, `make learning`)."""

from __future__ import annotations

from dataclasses import replace

import subprocess

import pytest
import torch
from click.testing import CliRunner

from bench.cli import main
from bench.data import BatchSampler, load_dataset, to_unit_range
from bench.doctor import memorisation_sets, ranked_above
from bench.engine import TrainConfig, Trainer
from bench.errors import ConfigError, UnhealthyRun
from tests.helpers import BENCH, clean_env, doctor_of, registered_variants
from variants.blocks import MLPDiscriminator, MLPGenerator
from variants.dcgan import DCGAN
from variants.gan import GAN
from variants.wgan import WGAN
from variants.wgan_gp import WGANGP


class DetachedFake(DCGAN):
    """The classic bug: the generator step sees a detached fake batch."""

    name = "test_detached_fake"

    def g_losses(self, batch):
        return super().g_losses(replace(batch, fake=batch.fake.detach()))


class NaNGradient(DCGAN):
    """Finite losses, but a NaN gradient flows into G."""

    name = "test_nan_gradient"

    def g_losses(self, batch):
        if batch.fake.requires_grad:
            batch.fake.register_hook(lambda grad: grad * float("nan"))
        return super().g_losses(batch)


class OverpoweredD(DCGAN):
    """D at 5x its learning rate, G at 1e-6: D wins outright."""

    name = "test_overpowered_d"

    def build(self):
        super().build()
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=1e-6, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=1e-3, betas=(0.5, 0.999))


class IgnoresLatent(DCGAN):
    """G never sees its latent input: every sample is the same image."""

    name = "test_ignores_latent"

    def generate(self, latent, labels):
        return self.G(torch.zeros_like(latent))


class ForgetsToClip(WGAN):
    name = "test_forgets_to_clip"

    def after_critic_update(self):
        pass


class PenaltyLeftOut(WGANGP):
    """The penalty is computed but left out of the critic's loss, and the critic starts steep."""

    name = "test_penalty_left_out"

    def build(self):
        super().build()
        with torch.no_grad():
            for param in self.D.parameters():
                param.mul_(3)

    def critic_losses(self, real, fake):
        losses = super().critic_losses(real, fake)
        return {**losses, "loss_d": -losses["wasserstein"]}


@pytest.fixture(scope="module", autouse=True)
def planted_failures():
    """The variants above, each with one planted failure, registered for this module's tests only."""
    with registered_variants(DetachedFake, NaNGradient, OverpoweredD, IgnoresLatent, ForgetsToClip, PenaltyLeftOut):
        yield


class UnitRangeBatches(BatchSampler):
    """Real batches left in [0, 1], as a torchvision ToTensor() without Normalize gives them."""

    def next(self, batch_size):
        real, labels = super().next(batch_size)
        return (real + 1) / 2, labels


def train(variant: str, steps: int, dataset: str = "fashion-mnist", **hparams) -> Trainer:
    """On the CPU: the steps within which each warning must fire were stated for its float32 runs."""
    trainer = Trainer(TrainConfig(variant, dataset=dataset, steps=steps, hparams=hparams, device="cpu"),
                      progress=False)
    trainer.run()
    return trainer


@pytest.mark.parametrize("variant, check", [
    ("test_detached_fake", "no_generator_gradient"),
    ("test_nan_gradient", "nonfinite_weights"),
])
def test_fatal_findings_stop_the_run_at_the_first_step(variant, check):
    trainer = Trainer(TrainConfig(variant, steps=100), progress=False)
    with pytest.raises(UnhealthyRun, match="stopped at step 1: "):
        trainer.run()
    assert [(f.check, f.step, f.fatal) for f in trainer.findings()] == [(check, 1, True)]
    assert trainer.step == 1


def test_data_in_unit_range_is_stopped_before_the_first_update():
    trainer = Trainer(TrainConfig("dcgan", steps=100), progress=False)
    trainer.batches = UnitRangeBatches(trainer.data, trainer.device, 0)
    before = [param.clone() for param in trainer.variant.parameters()]
    with pytest.raises(UnhealthyRun, match=r"real images lie in \[0, 1\].*scale the data to \[-1, 1\]"):
        trainer.run()
    assert trainer.findings()[0].check == "data_range"
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.variant.parameters()))


class SoftClip(torch.nn.Module):
    """A user's own output layer, which no table of activations knows: outputs in [0, 0.5]."""

    def forward(self, x):
        return 0.5 * torch.sigmoid(x)


@pytest.mark.parametrize("activation", [torch.nn.Sigmoid(), torch.nn.ReLU(), SoftClip()])
def test_a_generator_that_cannot_reach_the_data_range_is_named_as_the_cause(activation):
    trainer = Trainer(TrainConfig("dcgan", steps=100), progress=False)
    trainer.variant.G.net[-1] = activation  # a wrong output activation: G cannot draw the dark pixels
    with pytest.raises(UnhealthyRun, match=rf"stopped at step 1: .*ends in {type(activation).__name__}, whose outputs "
                                           r"lie in \[0, (0.5|1|inf)\].*real images span \[-1, 1\].*end G in Tanh"):
        trainer.run()
    assert [(f.check, f.step) for f in trainer.findings()] == [("output_range", 1)]


@pytest.mark.e2e
@pytest.mark.parametrize("variant, dataset, steps, hparams, checks, within", [
    # Where a failure shows on any data, the 8x8 digits train it in a tenth of the time.
    ("test_overpowered_d", "digits", 250, {}, ["discriminator_wins"], 200),
    ("test_ignores_latent", "digits", 650, {}, ["mode_collapse", "few_classes"], 600),
    ("test_forgets_to_clip", "fashion-mnist", 5, {"n_critic": 1}, ["clipping"], 1),
    ("test_penalty_left_out", "fashion-mnist", 200, {"n_critic": 1}, ["gradient_penalty_norm"], 200),
])
def test_warnings_fire_within_the_stated_steps_and_the_run_goes_on(capsys, variant, dataset, steps, hparams, checks,
                                                                   within):
    trainer = train(variant, steps, dataset, **hparams)
    found = {f.check: f for f in trainer.findings()}
    printed = capsys.readouterr().out
    assert trainer.step == steps
    for check in checks:
        assert check in found and found[check].step <= within and not found[check].fatal, found
        assert printed.count(found[check].message) == 1  # said once, not at every later check


def test_findings_reach_health_json_and_bench_doctor(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["train", "--variant", "test_detached_fake", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "receives no gradient" in result.stderr
    report = runner.invoke(main, ["doctor", str(tmp_path / "run")])
    assert report.exit_code == 0, report.output
    assert "step      1  no_generator_gradient" in report.output and "run was stopped" in report.output
    assert runner.invoke(main, ["doctor", "no-such-run"]).exit_code == 2


@pytest.mark.e2e
def test_a_third_party_variant_gets_the_clipping_check_for_the_bound_it_declares(plugin_site, tmp_path):
    """The doctor reads no variant's private names: a plugin's critic bound under its own name
    (max_weight) is checked through the contract's weight_bound()."""
    env = {**clean_env(), "PYTHONPATH": str(plugin_site)}
    trained = subprocess.run([BENCH, "train", "--variant", "loose_critic", "--dataset", "digits", "--steps", "3",
                              "--set", "n_critic=1", "--out", str(tmp_path / "run")], capture_output=True, text=True,
                             env=env, timeout=300)
    assert trained.returncode == 0, trained.stderr
    report = subprocess.run([BENCH, "doctor", str(tmp_path / "run")], capture_output=True, text=True, env=env,
                            timeout=300)
    assert "clipping" in report.stdout and "beyond the bound 0.02 that 'loose_critic' declares" in report.stdout


class RenamedLosses(GAN):
    """A plugin's GAN that returns its losses as d_loss and g_loss. Small MLPs, D at 1e-2 and G at
    1e-6: D wins outright within the doctor's first loss window."""

    name = "test_renamed_losses"
    z_dim = 16

    def build(self):
        self.G = MLPGenerator(self.z_dim, self.image_shape, hidden=(64,))
        self.D = MLPDiscriminator(self.image_shape, hidden=(64,))
        self.opt_g = self.adam(self.G, lr=1e-6)
        self.opt_d = self.adam(self.D, lr=1e-2)

    def train_step(self, real, labels):
        losses = super().train_step(real, labels)
        return {"d_loss": losses["loss_d"], "g_loss": losses["loss_g"]}


class DeclaresItsLosses(RenamedLosses):
    name = "test_declares_its_losses"
    loss_keys = ("d_loss", "g_loss")


def test_a_variant_that_declares_its_own_loss_keys_gets_the_discriminator_wins_check(registered):
    registered(DeclaresItsLosses)
    trainer = Trainer(TrainConfig("test_declares_its_losses", dataset="digits", steps=250, device="cpu"), progress=False)
    trainer.run()
    assert {f.check: f.step for f in trainer.findings()}.get("discriminator_wins") == 200, trainer.findings()


@pytest.mark.parametrize("doctor", [True, False])
def test_a_variant_returning_other_loss_keys_without_declaring_them_is_told_at_its_first_step(registered, doctor):
    registered(RenamedLosses)
    trainer = Trainer(TrainConfig("test_renamed_losses", dataset="digits", steps=250, doctor=doctor), progress=False)
    with pytest.raises(ConfigError, match=r"^variant 'test_renamed_losses': train_step returns d_loss, g_loss but not "
                                          r"loss_d or loss_g, .* set loss_keys in the class to the keys of its D and "
                                          r"G losses, e.g. loss_keys = \('d_loss', 'g_loss'\)$"):
        trainer.run()
    assert trainer.step == 0


def test_ranked_above_is_the_share_of_pairs_with_ties_counting_half():
    assert ranked_above(torch.tensor([3.0, 2.0]), torch.tensor([1.0, 2.0])) == (3 + 0.5) / 4
    assert ranked_above(torch.tensor([1.0, 1.0]), torch.tensor([1.0])) == 0.5
    assert ranked_above(torch.tensor([0.0]), torch.tensor([5.0, 6.0])) == 0.0


def test_the_held_out_images_are_none_of_the_training_images():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    images, labels = memorisation_sets(train, test, 256)
    assert images.shape == (512, *train.image_shape) and labels.shape == (512,)
    ours, theirs = {image.numpy().tobytes() for image in train.images}, images[256:]
    assert not any(image.numpy().tobytes() in ours for image in theirs)
    assert all(image.numpy().tobytes() in ours for image in images[:256])
    assert torch.equal(memorisation_sets(train, test, 256)[0], images)  # the same draw for every run
    # An image folder without a test folder is its own test split: nothing is held out, the check is skipped.
    assert memorisation_sets(train, train, 256) is None


class MemorisingD(DCGAN):
    """D whose score jumps by 10 on the exact images of its training split, as a D that has learnt
    them by heart (its own scores still train it)."""

    name = "test_memorising_d"

    def build(self):
        super().build()
        self.register_buffer("seen", to_unit_range(load_dataset("digits", "train").images).flatten(1))

    def discriminate(self, images, labels=None):
        known = torch.cdist(images.flatten(1).float(), self.seen).amin(1) < 1e-4
        return super().discriminate(images, labels) + 10 * known


@pytest.mark.e2e
def test_a_discriminator_that_knows_its_training_images_is_reported_at_the_second_check(registered):
    registered(MemorisingD)
    trainer = Trainer(TrainConfig("test_memorising_d", dataset="digits", steps=400, device="cpu"), progress=False)
    trainer.run()
    found = {f.check: f for f in trainer.findings()}
    assert found["memorising"].step == 400 and not found["memorising"].fatal, found
    assert "D is memorising the 1,437 training images" in found["memorising"].message
    assert "if FID against held-out images turns upward, try fewer steps" in found["memorising"].message
    doctor = doctor_of(trainer)
    assert [step for step, _ in doctor.memorising] == [200, 400] and min(s for _, s in doctor.memorising) > 0.8


@pytest.mark.parametrize("variant, hparams", [("dcgan", {"d_norm": "spectral", "diffaugment": "color,translation,cutout"}),
                                              ("lsgan", {"arch": "lucic"})])  # batch norm that counts its forwards
def test_the_memorisation_check_leaves_no_trace_in_d_or_the_random_streams(variant, hparams):
    """Batch-norm statistics (and the count of forwards that Lucic's debiased batch norm keeps beside
    them), spectral norm's power-iteration vectors and the random stream that DiffAugment and the next
    step draw from are as they were: the doctor does not change the run."""
    trainer = Trainer(TrainConfig(variant, dataset="digits", steps=3, hparams=hparams, device="cpu"), progress=False)
    trainer.run()
    doctor = doctor_of(trainer)
    before = {key: value.clone() for key, value in trainer.variant.state_dict().items()}
    counts = [getattr(module, "forwards", None) for module in trainer.variant.D.modules()]
    assert variant == "dcgan" or any(counts)  # Lucic's D counts them
    rng = torch.get_rng_state()
    doctor._check_memorising(200)
    assert torch.equal(torch.get_rng_state(), rng)
    after = trainer.variant.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)
    assert [getattr(module, "forwards", None) for module in trainer.variant.D.modules()] == counts
    assert len(doctor.memorising) == 1 and 0 <= doctor.memorising[0][1] <= 1
