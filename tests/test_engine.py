"""The engine: seeds, devices, checkpoints that resume exactly, outputs, divergence."""

import dataclasses

import pandas as pd
import pytest
import torch

from bench import devices, plan
from bench.devices import autocast_dtype, resolve_device
from bench.engine import CHECKPOINT, TrainConfig, Trainer, train
from bench.errors import ConfigError, TrainingDiverged
from bench.study import load_study
from variants.dcgan import DCGAN


def config(**overrides) -> TrainConfig:
    return TrainConfig(**{"variant": "dcgan", "steps": 12, "log_every": 5, "seed": 0, **overrides})


def losses(**overrides) -> pd.DataFrame:
    return train(config(**overrides), progress=False).history


def test_same_seed_same_losses_different_seed_different_losses():
    # On the CPU, where a run repeats bit for bit: on a GPU, cuDNN's kernel choice (benchmark mode)
    # and its atomic-add backward passes need not.
    first, again, other = losses(device="cpu"), losses(device="cpu"), losses(device="cpu", seed=1)
    assert list(first["step"]) == list(range(1, 13))
    pd.testing.assert_frame_equal(first, again)
    assert not first["loss_g"].equals(other["loss_g"])


@pytest.mark.parametrize("variant, hparams", [
    ("wgan_gp", {}), ("cgan", {}), ("began", {}),
    ("gan", {"arch": "lucic"}),  # its batch norm's debiasing resumes too
    ("dcgan", {"g_ema": 0.9, "g_ema_start": 2, "d_norm": "spectral", "r1_gamma": 1.0, "gp_weight": 1.0})])  # G's average, power iterations
def test_resume_in_the_middle_equals_an_uninterrupted_run(tmp_path, variant, hparams):
    # Bit for bit, so on the CPU (see above); resuming on and across GPUs: test_devices.py, test_cli.py.
    run = {"variant": variant, "hparams": hparams, "device": "cpu", "dataset": "digits"}
    straight = train(config(steps=8, **run), tmp_path / "straight", progress=False)
    train(config(steps=4, **run), tmp_path / "halves", progress=False)
    resumed = train(config(steps=8, **run), tmp_path / "halves", resume=True, progress=False)
    pd.testing.assert_frame_equal(straight.history, resumed.history)
    for key, value in straight.variant.state_dict().items():
        assert torch.equal(value, resumed.variant.state_dict()[key]), key


def test_outputs_are_sample_grids_losses_config_and_a_checkpoint(tmp_path):
    train(config(steps=10, sample_every=4), tmp_path, progress=False)
    grids = sorted(p.name for p in (tmp_path / "samples").glob("*.png"))
    assert grids == ["step_0000004.png", "step_0000008.png", "step_0000010.png"]
    assert len(pd.read_csv(tmp_path / "losses.csv")) == 10
    assert (tmp_path / CHECKPOINT).exists() and (tmp_path / "config.json").exists()


def test_sample_every_and_checkpoint_every_0_write_a_grid_and_a_checkpoint_at_the_end_only(tmp_path, monkeypatch):
    saved_at = []
    save = Trainer.save
    monkeypatch.setattr(Trainer, "save", lambda trainer: saved_at.append(trainer.step) or save(trainer))
    train(config(variant="gan", dataset="digits", steps=6, sample_every=0, checkpoint_every=0), tmp_path,
          progress=False)
    assert [path.name for path in (tmp_path / "samples").glob("*.png")] == ["step_0000006.png"]
    assert saved_at == [6]
    for key in ("sample_every", "checkpoint_every"):
        with pytest.raises(ConfigError, match=fr"{key} must be 0 \(only at the end\) or positive, got -1"):
            config(**{key: -1}).validate()


def test_existing_run_is_not_overwritten_without_resume(tmp_path):
    train(config(steps=2), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        Trainer(config(steps=4), tmp_path, progress=False)


def test_resume_refuses_changed_hyperparameters(tmp_path):
    train(config(steps=2), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="hparams differ from the saved run"):
        Trainer(config(steps=4, hparams={"lr": 1e-3}), tmp_path, resume=True, progress=False)
    # Scores against other real images would not compare with the saved ones.
    with pytest.raises(ConfigError, match="real_samples differ from the saved run"):
        Trainer(config(steps=4, real_samples=500), tmp_path, resume=True, progress=False)
    # A checkpoint saved before real_samples existed was scored against the default: it resumes at it.
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    del state["config"]["real_samples"]
    torch.save(state, tmp_path / CHECKPOINT)
    assert Trainer(config(steps=4), tmp_path, resume=True, progress=False).run().history["step"].max() == 4


def test_fixed_noise_grid_is_the_same_across_runs_of_one_seed():
    a, b = Trainer(config(), progress=False), Trainer(config(), progress=False)
    assert torch.equal(a.fixed_latent, b.fixed_latent)
    assert a.fixed_labels.device.type == a.device.type  # on the training device (a GPU where there is one)
    assert torch.equal(a.fixed_labels[:12].cpu(), torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]))


class ExplodingDCGAN(DCGAN):
    """A DCGAN whose generator loss turns NaN at its seventh step."""

    name = "test_exploding_dcgan"
    calls = 0

    def train_step(self, real, labels):
        losses = super().train_step(real, labels)
        ExplodingDCGAN.calls += 1
        return {**losses, "loss_g": losses["loss_g"] * (float("nan") if ExplodingDCGAN.calls >= 7 else 1.0)}


def test_a_non_finite_loss_stops_the_run_naming_the_step_and_the_loss(registered):
    registered(ExplodingDCGAN)
    ExplodingDCGAN.calls = 0
    with pytest.raises(TrainingDiverged, match="loss_g became nan at step 7"):
        train(config(variant="test_exploding_dcgan", steps=20), progress=False)
    assert ExplodingDCGAN.calls == 10, "found at the first read after the NaN, log_every=5 steps later at most"


def test_device_selection():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")
    else:
        assert resolve_device("cuda:0") == torch.device("cuda:0")
        with pytest.raises(ConfigError, match="does not exist; this machine has"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    with pytest.raises(ConfigError, match="unknown device 'tpu7'"):
        resolve_device("tpu7")


def test_the_loop_reads_losses_from_the_device_only_every_log_every_steps(monkeypatch):
    trainer = Trainer(config(steps=10, log_every=5), progress=False)
    reads = []
    flush = trainer._flush
    monkeypatch.setattr(trainer, "_flush", lambda: reads.append(trainer.step) or flush())
    trainer.run()
    assert reads == [5, 10, 10]  # the final call finds nothing pending


def test_amp_modes_pick_the_training_precision(monkeypatch):
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "auto") is None and autocast_dtype(cpu, "off") is None  # the CPU trains in float32
    monkeypatch.setattr(devices, "native_bf16", lambda device: True)  # a CPU with AVX512-BF16 or AMX
    assert autocast_dtype(cpu, "on") == torch.bfloat16 and autocast_dtype(cpu, "auto") is None
    trainer = Trainer(TrainConfig("dcgan", steps=3, device="cpu", amp="on"), progress=False)
    assert trainer.precision == "bfloat16 autocast"
    with trainer.autocast():
        assert trainer.variant.G(trainer.variant.latent(2)).dtype == torch.bfloat16
    assert trainer.run().history[["loss_d", "loss_g"]].notna().all().all()
    assert trainer.variant.G(trainer.variant.latent(2)).dtype == torch.float32  # weights and scoring stay float32
    monkeypatch.setattr(devices, "native_bf16", lambda device: False)
    with pytest.raises(ConfigError, match="does not compute bfloat16 natively"):
        autocast_dtype(cpu, "on")
    with pytest.raises(ConfigError, match="amp must be one of auto, on, off"):
        TrainConfig("dcgan", amp="yes").validate()


@pytest.mark.parametrize("n_critic", [1, 5])
def test_real_batches_counts_discriminator_updates_and_updates_g_every_n_critic_of_them(n_critic):
    """Lucic et al.'s budget (compare_gan's training_steps): so many real batches through D, G every n_critic."""
    trainer = Trainer(config(variant="wgan_gp", dataset="digits", steps=1, real_batches=15, batch_size=16,
                             hparams={"n_critic": n_critic}, device="cpu"), progress=False)
    trainer.run()

    def updates(optimizer: torch.optim.Optimizer) -> set[int]:
        return {int(state["step"]) for state in optimizer.state.values()}

    assert updates(trainer.variant.opt_d) == {15} and updates(trainer.variant.opt_g) == {15 // n_critic}
    assert trainer.step == 15 // n_critic


def test_the_lucic_study_trains_15625_discriminator_batches_of_64_for_every_loss():
    spec = load_study("lucic")
    assert (spec.budget.real_batches, spec.budget.batch_size) == (15625, 64)  # compare_gan: 20 * 50000 // 64
    for variant, hparams, steps in (("gan", {}, 15625), ("wgan", {"n_critic": 5}, 3125), ("began", {}, 15625)):
        resolved = plan.resolve_steps(TrainConfig(variant, hparams=hparams, **dataclasses.asdict(spec.budget)))
        assert resolved.steps == steps
    with pytest.raises(ConfigError, match="epochs .* and real_batches .* both set the length of the run"):
        config(epochs=1, real_batches=10).validate()
