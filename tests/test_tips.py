"""The folklore tips are hyperparameters that reach the networks, losses and optimisers they claim to
change; a tip a variant cannot take is refused with the reason."""

import pytest
import torch
from torch import nn

from bench.errors import ConfigError
from bench.registry import TIPS, get_variant
from bench.study import load_study
from variants.blocks import MinibatchStd
from variants.gan import Batch

SHAPE = (1, 28, 28)


def build(name: str, **hparams):
    torch.manual_seed(0)
    return get_variant(name)(SHAPE, 10, **hparams)


def batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(n, *SHAPE, generator=generator) * 2 - 1, torch.randint(10, (n,), generator=generator)


@pytest.mark.parametrize("name", ["gan", "dcgan", "cgan", "infogan", "ragan"])
def test_label_smoothing_moves_the_real_target_in_d_loss(name):
    real, labels = batch()
    smoothed, plain = build(name, label_smoothing=0.2), build(name)
    fake = smoothed.generate(smoothed.latent(len(real)), labels).detach()
    latent = smoothed.latent(len(real))
    assert smoothed.real_target == pytest.approx(0.8) and plain.real_target == 1.0
    plain.load_state_dict(smoothed.state_dict())  # same networks: only the target differs
    step = Batch(real, fake, latent, labels)
    difference = smoothed.d_losses(step)["loss_d"] - plain.d_losses(step)["loss_d"]
    # BCE(l, t) - BCE(l, 1) = (1 - t) * l for logits l of the reals (relative ones for RaGAN): 0.2 * mean logit.
    if name == "ragan":
        logits = smoothed.D(real) - smoothed.D(fake).mean()
    elif name == "infogan":
        logits = smoothed.D(real)
    else:
        logits = smoothed.discriminate(real, labels)
    assert difference.item() == pytest.approx(0.2 * logits.mean().item(), rel=1e-4, abs=1e-6)


def test_minibatch_std_channel_reaches_the_discriminator_head():
    variant = build("dcgan", minibatch_std=1)
    std_layer, head = variant.D.head
    assert isinstance(std_layer, MinibatchStd) and head.in_channels == build("dcgan").D.head.in_channels + 1
    features = torch.randn(6, 4, 7, 7)
    out = std_layer(features)
    assert out.shape == (6, 5, 7, 7) and torch.allclose(out[:, :4], features)
    assert torch.allclose(out[:, 4], features.std(dim=0, unbiased=False).mean().expand(6, 7, 7))
    # In eval mode (no batch-norm coupling) a sample's score depends on the rest of its batch only through it.
    real, _ = batch()
    changed = real.clone()
    changed[1:] = -changed[1:]
    for tip, coupled in ((1, True), (0, False)):
        D = build("dcgan", minibatch_std=tip).D.eval()
        with torch.no_grad():
            moved = (D(real)[0] - D(changed)[0]).abs().item()
        assert (moved > 1e-6) == coupled, (tip, moved)


@pytest.mark.parametrize("name, optimizer", [("dcgan", torch.optim.Adam), ("wgan", torch.optim.RMSprop),
                                             ("wgan_gp", torch.optim.Adam), ("ebgan", torch.optim.Adam)])
def test_two_time_scales_give_g_and_d_their_own_learning_rates(name, optimizer):
    variant = build(name, lr=1e-4, lr_d_ratio=4.0)
    assert isinstance(variant.opt_d, optimizer)
    assert variant.opt_g.param_groups[0]["lr"] == pytest.approx(1e-4)
    assert variant.opt_d.param_groups[0]["lr"] == pytest.approx(4e-4)
    d_params = {id(p) for p in variant.D.parameters()}
    assert {id(p) for group in variant.opt_d.param_groups for p in group["params"]} >= d_params


def test_infogan_keeps_its_papers_two_learning_rates_and_trains_q_with_d():
    variant = build("infogan")
    assert variant.opt_g.param_groups[0]["lr"] == pytest.approx(1e-3)
    assert variant.opt_d.param_groups[0]["lr"] == pytest.approx(2e-4)
    assert {id(p) for p in variant.Q.parameters()} <= {id(p) for p in variant.opt_d.param_groups[0]["params"]}


def parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", ["gan", "dcgan", "wgan_gp"])
def test_width_multipliers_size_g_and_d_separately(name):
    plain, small_g, big_d = build(name), build(name, g_width=0.5), build(name, d_width=2.0)
    assert parameters(small_g.G) < 0.5 * parameters(plain.G) and parameters(small_g.D) == parameters(plain.D)
    assert parameters(big_d.D) > 2 * parameters(plain.D) and parameters(big_d.G) == parameters(plain.G)
    assert small_g.sample(4).shape == (4, *SHAPE)


@pytest.mark.parametrize("name", ["gan", "dcgan", "wgan"])
def test_selu_replaces_the_activations_and_drops_batch_norm(name):
    variant = build(name, activation="selu")
    kinds = {type(module) for module in variant.modules()}
    assert nn.SELU in kinds and not kinds & {nn.ReLU, nn.LeakyReLU, nn.BatchNorm2d}
    assert nn.SELU not in {type(module) for module in build(name).modules()}
    real, labels = batch(16)
    losses = variant.train_step(real.repeat(variant.real_batches_per_step, 1, 1, 1),
                                labels.repeat(variant.real_batches_per_step))
    assert all(torch.isfinite(value) for value in losses.values())


@pytest.mark.parametrize("name, tip, needs", [
    ("wgan", "label_smoothing", "binary cross-entropy"),
    ("wgan_gp", "label_smoothing", "binary cross-entropy"),
    ("gan", "minibatch_std", "convolutional discriminator"),
    ("ebgan", "minibatch_std", "convolutional discriminator"),
    ("ebgan", "activation", "variants.blocks"),
])
def test_a_tip_that_does_not_apply_is_refused_with_the_reason(name, tip, needs):
    with pytest.raises(ConfigError, match=f"tip '{tip}' does not apply to variant '{name}': it needs .*{needs}"):
        get_variant(name).resolve_hparams({tip: TIPS[tip].hparam.default})


def test_tips_are_off_by_default():
    for name in ("gan", "dcgan", "cgan", "ragan", "wgan", "wgan_gp", "ebgan", "lsgan", "dragan", "began"):
        variant = get_variant(name)
        for key in set(variant.hparams) & set(TIPS):
            assert variant.hparams[key].default == TIPS[key].hparam.default, (name, key)


def test_studies_search_tips_and_refuse_those_a_variant_cannot_take(tmp_path):
    path = tmp_path / "smoothing.toml"
    path.write_text("[space]\nlabel_smoothing = { low = 0.0, high = 0.2 }\n")
    [dimension] = load_study(path).for_variant(get_variant("dcgan")).dimensions
    assert (dimension.name, dimension.high) == ("label_smoothing", 0.2)
    with pytest.raises(ConfigError, match=r"smoothing.toml: \[space\] label_smoothing: tip 'label_smoothing' does "
                                          r"not apply to variant 'wgan': it needs .*binary cross-entropy"):
        load_study(path).for_variant(get_variant("wgan"))
