"""The variant registry: built-ins and third-party plugins through entry points."""

import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch

from bench import registry
from bench.engine import TrainConfig, Trainer
from bench.errors import ConfigError, DuplicateVariantError
from bench.registry import HParam, get_variant, register, variants
from tests.helpers import BUILT_INS

BENCH = Path(sys.executable).with_name("bench")


def test_every_variant_file_is_an_entry_point_and_registers_its_variant():
    """A variant file added to variants/ without its entry point in pyproject.toml would never load."""
    shared = {"__init__", "blocks", "penalties"}
    files = {path.stem for path in (Path(__file__).parent.parent / "variants").glob("*.py")} - shared
    declared = {entry.value for entry in entry_points(group="bench.variants") if entry.value.startswith("variants.")}
    assert declared == {f"variants.{stem}" for stem in files}
    assert len(BUILT_INS) == len(files) and set(BUILT_INS) <= set(variants())
    assert {get_variant(name).__module__ for name in BUILT_INS} == declared


def bench_list(site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([str(BENCH), "list"], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.e2e
def test_bench_list_shows_an_installed_plugin_beside_the_built_ins(plugin_site):
    result = bench_list(plugin_site)
    assert result.returncode == 0, result.stderr
    listed = {line.split()[0] for line in result.stdout.splitlines() if line and not line[0].isspace()}
    assert listed == set(BUILT_INS) | {"tiny_gan", "faulty_dcgan", "loose_critic"}
    assert "ganbench_test_plugin" in result.stdout
    # hyperparameters with default and valid range
    assert "gp_lambda       default 10.0" in result.stdout and "[0.01, 1000] (log)" in result.stdout


@pytest.mark.e2e
def test_a_plugin_that_fails_to_import_gives_one_warning_naming_it(plugin_site):
    result = bench_list(plugin_site)
    warnings = [line for line in result.stderr.splitlines() if "broken_gan" in line]
    assert len(warnings) == 1
    assert "ganbench_test_plugin.broken" in warnings[0] and "ganbench_missing_dependency" in warnings[0]


def test_two_variants_with_one_name_is_an_error_naming_both():
    dcgan = get_variant("dcgan")
    with pytest.raises(DuplicateVariantError) as error:
        @register
        class Impostor(dcgan):
            name = "dcgan"
    message = str(error.value)
    assert "variants.dcgan:DCGAN" in message and "test_registry" in message and "Impostor" in message
    assert registry.variants()["dcgan"] is dcgan


def test_unknown_variant_lists_the_valid_ones():
    with pytest.raises(ConfigError,
                       match="unknown variant 'stylegan'; choose one of: began, cgan, dcgan, dragan, ebgan, gan"):
        get_variant("stylegan")


def test_hyperparameters_are_checked_against_their_ranges():
    dcgan = get_variant("dcgan")
    assert dcgan.resolve_hparams({})["lr"] == 2e-4
    with pytest.raises(ConfigError, match=r"lr=0.5 is out of range; valid: \[1e-06, 0.1\]"):
        dcgan.resolve_hparams({"lr": 0.5})
    with pytest.raises(ConfigError, match="has no hyperparameter 'clip_c'; valid: lr, beta1, beta2, loss"):
        dcgan.resolve_hparams({"clip_c": 0.01})
    with pytest.raises(ConfigError, match="choose one of: nonsaturating, minimax"):
        dcgan.resolve_hparams({"loss": "hinge"})
    with pytest.raises(ConfigError, match="must be an integer"):
        get_variant("wgan").resolve_hparams({"n_critic": 2.5})


@pytest.mark.parametrize("declared", [lambda: HParam(2, choices=("2", "5")), lambda: HParam(0.5, 0.0),
                                      lambda: HParam(2.0, 0.0, 1.0), lambda: HParam("fast", choices=("slow",)),
                                      lambda: HParam(True, 0, 1)])
def test_a_hyperparameter_declared_against_its_contract_fails_when_its_variant_is_defined(declared):
    # Numbers take low <= default <= high, strings their choices: a study's checks rely on it.
    with pytest.raises(TypeError, match="HParam"):
        declared()


def test_hparam_parses_command_line_text_to_its_type():
    assert HParam(5, 1, 10).parse("n", "7") == 7 and isinstance(HParam(5, 1, 10).parse("n", "7"), int)
    assert HParam(0.1, 0, 1).parse("c", "1e-2") == 0.01
    with pytest.raises(ConfigError, match=r"c='fast' is not a number; valid: \[0, 1\]"):
        HParam(0.1, 0, 1).parse("c", "fast")


@pytest.mark.parametrize("name", sorted(variants()))  # every installed variant: a plugin's is held to the contract too
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8)])
def test_networks_follow_the_dataset_shape(name, shape):
    torch.manual_seed(0)
    variant = get_variant(name)(shape, num_classes=10)
    labels = torch.arange(4) % 10
    images = variant.sample(4, labels)
    assert images.shape == (4, *shape)
    assert images.min() >= -1 and images.max() <= 1
    real = torch.rand(4 * variant.real_batches_per_step, *shape) * 2 - 1
    losses = variant.train_step(real, torch.arange(len(real)) % 10)
    assert "loss_g" in losses and "loss_d" in losses
    assert all(value.dim() == 0 and torch.isfinite(value) for value in losses.values())


def test_cgan_samples_depend_on_the_label():
    torch.manual_seed(0)
    cgan = get_variant("cgan")((1, 28, 28), 10)
    def sample(label: int) -> torch.Tensor:  # the same noise each time
        return cgan.sample(4, torch.full((4,), label), generator=torch.Generator().manual_seed(0))

    zeros, fives = sample(0), sample(5)
    assert torch.equal(zeros, sample(0))  # the noise and the label decide the sample
    # Untrained, the label moves every image a little, but far beyond float rounding (1e-7).
    assert ((zeros - fives).abs().flatten(1).mean(1) > 1e-3).all()


@pytest.mark.parametrize("name, default", [("gan", "mlp"), ("wgan", "dcgan"), ("wgan_gp", "dcgan"), ("ragan", "dcgan"),
                                           ("lsgan", "dcgan"), ("dragan", "dcgan")])
def test_arch_picks_mlp_or_dcgan_networks_and_defaults_to_the_papers(name, default):
    """Lucic et al. held one architecture fixed across variants: `arch` lets a study do that."""
    cls = get_variant(name)
    assert cls.hparams["arch"].default == default and "arch" not in get_variant("dcgan").hparams
    real = torch.rand(2 * 8, 1, 8, 8) * 2 - 1
    for arch, layer in (("mlp", torch.nn.Linear), ("dcgan", torch.nn.ConvTranspose2d)):
        variant = cls((1, 8, 8), 10, arch=arch, **({"n_critic": 2} if "n_critic" in cls.hparams else {}))
        convolutional = any(isinstance(module, torch.nn.Conv2d) for module in variant.D.modules())
        assert convolutional == (arch == "dcgan") and any(isinstance(module, layer) for module in variant.G.modules())
        losses = variant.train_step(real[: 8 * variant.real_batches_per_step], torch.zeros(16, dtype=torch.long))
        assert all(torch.isfinite(value) for value in losses.values())
        assert variant.sample(3).shape == (3, 1, 8, 8)
    with pytest.raises(ConfigError, match="minibatch_std=1 needs a convolutional discriminator"):
        get_variant("wgan")((1, 8, 8), 10, arch="mlp", minibatch_std=1)


def dense(inputs: int, outputs: int) -> int:
    return inputs * outputs + outputs


def conv4(inputs: int, outputs: int) -> int:
    """A 4x4 convolution's (or transposed convolution's) weights and biases."""
    return 16 * inputs * outputs + outputs


def norm(features: int) -> int:
    return 2 * features


def lucic_sizes(channels: int, quarter: int) -> tuple[int, int]:
    """compare_gan v1's G and D (abstract_gan.py), layer by layer, with batch norm in D."""
    projected = 128 * quarter ** 2
    g = (dense(64, 1024) + norm(1024) + dense(1024, projected) + norm(projected) + conv4(128, 64) + norm(64)
         + conv4(64, channels))
    d = conv4(channels, 64) + conv4(64, 128) + norm(128) + dense(projected, 1024) + norm(1024) + dense(1024, 1)
    return g, d


@pytest.mark.parametrize("shape, quarter", [((1, 28, 28), 7), ((3, 32, 32), 8)])
def test_arch_lucic_is_compare_gans_network_with_its_noise_and_batch_norm(shape, quarter):
    gan = get_variant("gan")(shape, 10, arch="lucic")
    g_size, d_size = lucic_sizes(shape[0], quarter)
    assert (parameters(gan.G), parameters(gan.D)) == (g_size, d_size)  # 6,642,241 and 6,559,169 for 28x28x1
    assert all((m.eps, m.momentum) == (1e-3, 1e-3) for m in gan.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    z = gan.latent(4096)
    assert z.shape == (4096, 64) and -1 <= z.min() < -0.99 and 0.99 < z.max() <= 1
    # The penalised critics have no batch norm in D; the others may drop it (compare_gan's discriminator_batchnorm).
    for name, hparams in (("wgan_gp", {}), ("dragan", {}), ("wgan", {"discriminator_batchnorm": 0})):
        assert parameters(get_variant(name)(shape, 10, arch="lucic", **hparams).D) == d_size - norm(128) - norm(1024)
    began = get_variant("began")(shape, 10, arch="lucic")  # compare_gan's BEGAN.py auto-encoder, code of 64
    encoder = conv4(shape[0], 64) + conv4(64, 128) + dense(128 * quarter ** 2, 64) + norm(64)
    decoder = dense(64, 128 * quarter ** 2) + norm(128 * quarter ** 2) + conv4(128, 64) + norm(64) + conv4(64, shape[0])
    assert parameters(began.D) == encoder + decoder and parameters(began.G) == g_size
    with pytest.raises(ConfigError, match="arch=lucic is compare_gan's fixed network; d_width"):
        get_variant("ragan")(shape, 10, arch="lucic", d_width=2.0)


def parameters(network: torch.nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["gan", "wgan", "wgan_gp", "ragan", "lsgan", "dragan", "began"])
def test_every_unconditional_loss_trains_on_lucics_network_without_a_doctor_finding(name):
    hparams = {"arch": "lucic", **({"n_critic": 1} if "n_critic" in get_variant(name).hparams else {})}
    trainer = Trainer(TrainConfig(name, steps=10, batch_size=32, hparams=hparams, device="cpu"), progress=False)
    result = trainer.run()
    assert result.history["loss_g"].notna().all() and trainer.findings() == []
