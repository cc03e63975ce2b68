"""D's normalisation (the d_norm tip) and the SN-GAN variant built on it: each choice puts the layers
it names into every network a variant can build, and spectral normalisation holds D's layers at a
largest singular value of 1."""

import pytest
import torch
from torch import nn

from bench.errors import ConfigError
from bench.registry import get_variant
from variants.blocks import D_NORMS

KINDS = {"batch": nn.modules.batchnorm._BatchNorm, "layer": (nn.GroupNorm, nn.LayerNorm)}


def norms_of(network: nn.Module) -> set[str]:
    """The d_norm choices whose layers ``network`` holds."""
    found = {name for name, kind in KINDS.items() if any(isinstance(m, kind) for m in network.modules())}
    if any(nn.utils.parametrize.is_parametrized(m, "weight") for m in network.modules()):
        found.add("spectral")
    return found


@pytest.mark.parametrize("name, arch", [("dcgan", None), ("gan", "mlp"), ("gan", "lucic"), ("cgan", None),
                                        ("wgan", "dcgan"), ("infogan", None)])
@pytest.mark.parametrize("norm", D_NORMS)
def test_every_d_norm_choice_builds_its_layers_into_d_and_none_into_g(name, arch, norm):
    variant = get_variant(name)((1, 28, 28), 10, d_norm=norm, **({"arch": arch} if arch else {}))
    assert norms_of(variant.D) == ({norm} - {"none"})
    assert "spectral" not in norms_of(variant.G)


@pytest.mark.parametrize("name, paper", [("dcgan", {"batch"}), ("gan", set()), ("wgan_gp", set()), ("dragan", set()),
                                         ("sngan", {"spectral"}), ("lsgan", {"batch"})])
def test_d_norm_default_keeps_each_papers_normalisation(name, paper):
    assert get_variant(name).hparams["d_norm"].default == "default"
    assert norms_of(get_variant(name)((1, 28, 28), 10).D) == paper


def test_penalised_critics_refuse_batch_norm_and_discriminator_batchnorm_is_what_default_means():
    for name in ("wgan_gp", "dragan"):
        with pytest.raises(ConfigError, match="d_norm='batch' is not valid; choose one of: default, none, layer"):
            get_variant(name)((1, 28, 28), 10, d_norm="batch")
    assert norms_of(get_variant("dcgan")((1, 28, 28), 10, discriminator_batchnorm=0).D) == set()
    assert norms_of(get_variant("dcgan")((1, 28, 28), 10, discriminator_batchnorm=0, d_norm="layer").D) == {"layer"}
    with pytest.raises(ConfigError, match="tip 'd_norm' does not apply to variant 'ebgan'"):
        get_variant("ebgan")((1, 28, 28), 10, d_norm="spectral")


def test_layer_norm_normalises_each_sample_over_its_channels_and_positions():
    torch.manual_seed(0)
    dcgan = get_variant("dcgan")((1, 28, 28), 10, d_norm="layer")
    norm = next(m for m in dcgan.D.modules() if isinstance(m, nn.GroupNorm))
    x = torch.randn(3, norm.num_channels, 7, 7) * torch.tensor([1.0, 5.0, 50.0])[:, None, None, None] + 4
    out = norm(x).detach()  # scale 1, shift 0 as built
    assert torch.allclose(out.mean(dim=(1, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(out.var(dim=(1, 2, 3), unbiased=False), torch.ones(3), atol=1e-3)


@pytest.mark.parametrize("arch", ["dcgan", "mlp"])
def test_spectral_norm_holds_every_layer_of_d_at_largest_singular_value_one(arch):
    """sigma(W) of the weight each layer uses (reshaped to (out, in * k * k) for a convolution, as Miyato et
    al. normalise it) is within 5% of 1 after 50 training forwards, one power iteration each."""
    torch.manual_seed(0)
    sngan = get_variant("sngan")((1, 28, 28), 10, arch=arch)
    layers = [m for m in sngan.D.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    raw = [torch.linalg.matrix_norm(m.parametrizations.weight.original.flatten(1), ord=2).item() for m in layers]
    assert max(abs(sigma - 1) for sigma in raw) > 0.05  # the raw weights are not normalised already
    images = torch.randn(8, 1, 28, 28)
    for _ in range(50):
        sngan.D(images)
    for layer in layers:
        assert torch.linalg.matrix_norm(layer.weight.flatten(1), ord=2).item() == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("loss", ["nonsaturating", "hinge"])
def test_sngan_trains_with_either_loss_and_refuses_label_smoothing_with_hinge(loss):
    torch.manual_seed(0)
    sngan = get_variant("sngan")((1, 8, 8), 10, loss=loss)
    losses = sngan.train_step(torch.rand(16, 1, 8, 8) * 2 - 1, torch.zeros(16, dtype=torch.long))
    assert set(losses) == {"loss_d", "loss_g"} and all(torch.isfinite(v) for v in losses.values())
    assert sngan.hparams["lr"].default == 2e-4 and (sngan.hp.beta1, sngan.hp.beta2) == (0.5, 0.999)
    if loss == "hinge":
        with pytest.raises(ConfigError, match="the hinge loss has none"):
            get_variant("sngan")((1, 8, 8), 10, loss="hinge", label_smoothing=0.1)
