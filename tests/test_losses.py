"""Each variant's loss pinned to its formula on small hand-computable inputs."""

import math

import pytest
import torch
from torch import nn

from bench.errors import ConfigError
from bench.registry import get_variant
from variants.began import began_d_loss, convergence_measure, next_k, reconstruction_loss
from variants.dragan import dragan_penalty, perturbed
from variants.ebgan import ebgan_d_loss, pulling_away_term
from variants.gan import Batch, discriminator_bce, generator_minimax, generator_nonsaturating
from variants.infogan import info_loss
from variants.lsgan import lsgan_d_loss, lsgan_g_loss
from variants.ragan import ragan_d_loss, ragan_g_loss
from variants.wgan import wasserstein_estimate
from variants.penalties import gradient_penalty, r1_penalty, with_penalties
from variants.sngan import hinge_d_loss, hinge_g_loss


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_discriminator_bce_is_minus_log_d_real_minus_log_one_minus_d_fake():
    # D(x) = sigmoid(2), D(G(z)) = sigmoid(-1): -log s(2) - log(1 - s(-1)) = softplus(-2) + softplus(-1)
    loss = discriminator_bce(torch.tensor([2.0]), torch.tensor([-1.0]))
    assert loss.item() == pytest.approx(softplus(-2) + softplus(-1), rel=1e-6)


def test_generator_losses_nonsaturating_and_minimax():
    logits = torch.tensor([0.0, math.log(3.0)])  # D(G(z)) = 1/2 and 3/4
    assert generator_nonsaturating(logits).item() == pytest.approx(-(math.log(0.5) + math.log(0.75)) / 2)
    assert generator_minimax(logits).item() == pytest.approx((math.log(0.5) + math.log(0.25)) / 2)


def test_ragan_losses():
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([0.0, 2.0])  # means 2 and 1
    # D: reals relative to the mean fake are [0, 2] (target 1), fakes relative to the mean real [-2, 0] (target 0).
    expected_d = (softplus(0) + softplus(-2)) / 2 + (softplus(-2) + softplus(0)) / 2
    # G: the roles swap, fakes relative to the mean real [-2, 0] (target 1), reals [0, 2] (target 0).
    expected_g = (softplus(2) + softplus(0)) / 2 + (softplus(0) + softplus(2)) / 2
    assert ragan_d_loss(real, fake).item() == pytest.approx(expected_d, rel=1e-6)
    assert ragan_g_loss(real, fake).item() == pytest.approx(expected_g, rel=1e-6)


def test_hinge_losses_pay_only_inside_the_margin():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-3.0, -0.5, 1.0])
    # D: [1 - 2]+ = 0, [1 - 0.5]+ = 0.5, [1 + 1]+ = 2 (mean 2.5/3); [1 - 3]+ = 0, [1 - 0.5]+ = 0.5, [1 + 1]+ = 2.
    assert hinge_d_loss(real, fake).item() == pytest.approx(2.5 / 3 + 2.5 / 3)
    assert hinge_g_loss(fake).item() == pytest.approx(2.5 / 3)  # -E[D(G(z))]: no margin for G
    assert hinge_d_loss(torch.tensor([1.0, 7.0]), torch.tensor([-1.0, -9.0])).item() == 0.0  # beyond the margin


class Quadratic(nn.Module):
    """D(x) = a/2 ||x||^2: grad_x D = a x, so R1 = E||a x||^2 = a^2 E||x||^2 and d R1 / da = 2 a E||x||^2."""

    def __init__(self, a: float):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))

    def forward(self, x):
        return self.a / 2 * x.flatten(1).pow(2).sum(1)


def test_r1_is_the_mean_squared_input_gradient_norm_on_real_data_and_trains_d():
    torch.manual_seed(0)
    real = torch.randn(6, 1, 3, 3)
    squares = real.flatten(1).pow(2).sum(1).mean().item()
    critic = Quadratic(3.0)
    penalty = r1_penalty(critic, real)
    assert penalty.item() == pytest.approx(9.0 * squares, rel=1e-5)
    penalty.backward()
    assert critic.a.grad.item() == pytest.approx(2 * 3.0 * squares, rel=1e-5)
    assert not real.requires_grad  # the batch D trains on is left as it was


def test_r1_gamma_adds_half_gamma_times_r1_to_d_loss_and_nothing_at_zero():
    torch.manual_seed(0)
    real, labels = torch.randn(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    for gamma in (0.0, 10.0):
        gan = get_variant("gan")((1, 8, 8), 10, r1_gamma=gamma)
        gan.D = Quadratic(2.0)
        losses = with_penalties(gan, {"loss_d": torch.tensor(1.0)}, real, torch.randn_like(real), labels)
        expected = 1.0 + gamma / 2 * 4.0 * real.flatten(1).pow(2).sum(1).mean().item()
        assert losses["loss_d"].item() == pytest.approx(expected, rel=1e-5)
        assert ("r1_penalty" in losses) == (gamma > 0) and "gp_penalty" not in losses


@pytest.mark.parametrize("variant", ["dcgan", "lsgan"])
def test_gp_weight_adds_lambda_times_the_penalty_on_interpolates_and_nothing_at_zero(variant):
    """With a linear D (gradient w everywhere, ||w|| = 2) the penalty is (2 - 1)^2 = 1 whatever the
    interpolates, so D's loss grows by exactly gp_weight."""
    torch.manual_seed(0)
    real, fake, labels = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    weight = torch.zeros(1, 8, 8)
    weight.view(-1)[:2] = torch.tensor([1.2, 1.6])
    for lam in (0.0, 10.0):
        gan = get_variant(variant)((1, 8, 8), 10, gp_weight=lam)
        gan.D = LinearCritic(weight)
        losses = with_penalties(gan, {"loss_d": torch.tensor(1.0)}, real, fake, labels)
        assert losses["loss_d"].item() == pytest.approx(1.0 + lam, rel=1e-5)
        assert ("gp_penalty" in losses) == (lam > 0) and "r1_penalty" not in losses
    assert losses["gp_grad_norm"].item() == pytest.approx(2.0, rel=1e-5)


def test_the_critics_and_dragan_take_no_gp_weight_they_have_their_own_penalty_or_clipping():
    for name in ("wgan", "wgan_gp", "dragan"):
        with pytest.raises(ConfigError, match="tip 'gp_weight' does not apply"):
            get_variant(name).resolve_hparams({"gp_weight": 10.0})


def test_wasserstein_estimate_is_mean_real_minus_mean_fake():
    assert wasserstein_estimate(torch.tensor([1.0, 3.0]), torch.tensor([-1.0, 0.0])).item() == 2.5


class LinearCritic(nn.Module):
    """C(x) = <w, x>: its input gradient is w everywhere, so the penalty is (||w|| - 1)^2."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = weight

    def forward(self, x):
        return (x * self.weight).flatten(1).sum(1)


@pytest.mark.parametrize("shape", [(1, 4, 4), (3, 2, 2)])
def test_gradient_penalty_of_a_linear_critic(shape):
    weight = torch.zeros(shape)
    weight.view(-1)[:2] = torch.tensor([1.2, 1.6])  # ||w|| = 2, so the penalty is (2 - 1)^2 = 1
    real, fake = torch.randn(5, *shape), torch.randn(5, *shape)
    penalty, norm = gradient_penalty(LinearCritic(weight), real, fake)
    assert penalty.item() == pytest.approx(1.0, rel=1e-5)
    assert norm.item() == pytest.approx(2.0, rel=1e-5)


def test_gradient_penalty_is_differentiable_in_the_critic():
    weight = torch.full((1, 2, 2), 1.0, requires_grad=True)  # ||w|| = 2
    penalty, _ = gradient_penalty(LinearCritic(weight), torch.randn(3, 1, 2, 2), torch.randn(3, 1, 2, 2))
    penalty.backward()
    # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w|| = 2 * 1 * 1 / 2 = 1 per element
    assert torch.allclose(weight.grad, torch.ones_like(weight))


def test_info_loss_is_categorical_cross_entropy_plus_weighted_gaussian_nll():
    q_output = torch.zeros(2, 12)  # uniform over 10 categories, predicted means 0
    codes = torch.zeros(2, 12)
    codes[0, 3] = codes[1, 7] = 1.0
    codes[:, 10:] = torch.tensor([[0.5, -1.0], [1.0, 0.0]])
    # CE = log 10; NLL (unit variance, constant dropped) = mean over samples of 0.5 * sum (c - mu)^2
    gaussian = (0.5 * (0.25 + 1.0) + 0.5 * 1.0) / 2
    assert info_loss(q_output, codes, lambda_cont=0.1).item() == pytest.approx(math.log(10) + 0.1 * gaussian)


def test_info_loss_rewards_recovering_the_codes():
    codes = torch.zeros(1, 12)
    codes[0, 4], codes[0, 10:] = 1.0, torch.tensor([0.3, -0.2])
    good = torch.zeros(1, 12)
    good[0, 4], good[0, 10:] = 20.0, torch.tensor([0.3, -0.2])
    assert info_loss(good, codes, 1.0).item() < 1e-6


def test_wgan_critic_weights_stay_within_the_clip_bound_after_a_critic_step():
    torch.manual_seed(0)
    wgan = get_variant("wgan")((1, 28, 28), 10, lr=1e-2, clip_c=0.05, n_critic=2)
    wgan.train_step(torch.rand(2 * 8, 1, 28, 28) * 2 - 1, torch.zeros(16, dtype=torch.long))
    weights = torch.cat([p.flatten() for p in wgan.D.parameters()])
    assert weights.abs().max().item() <= 0.05 + 1e-7
    assert (weights.abs() == 0.05).any(), "a large learning rate must push some weights onto the bound"


def test_wgan_gp_critic_has_no_batch_norm_and_does_not_clip():
    torch.manual_seed(0)
    wgan_gp = get_variant("wgan_gp")((1, 28, 28), 10, lr=1e-2, n_critic=1)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in wgan_gp.D.modules())
    losses = wgan_gp.train_step(torch.rand(8, 1, 28, 28) * 2 - 1, torch.zeros(8, dtype=torch.long))
    assert {"wasserstein", "gradient_penalty", "grad_norm"} <= set(losses)
    assert max(p.abs().max().item() for p in wgan_gp.D.parameters()) > 0.01


def test_wgan_critic_has_no_sigmoid():
    wgan = get_variant("wgan")((1, 28, 28), 10)
    assert not any(isinstance(m, nn.Sigmoid) for m in wgan.D.modules())
    assert isinstance(wgan.opt_d, torch.optim.RMSprop)


def test_dcgan_architecture_rules():
    dcgan = get_variant("dcgan")((1, 28, 28), 10)
    g_layers, d_layers = list(dcgan.G.modules()), list(dcgan.D.modules())
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.Linear)) for m in g_layers + d_layers)
    assert isinstance(g_layers[-1], nn.Tanh) and not isinstance(g_layers[-2], nn.BatchNorm2d)
    d_trunk = list(dcgan.D.trunk)
    assert isinstance(d_trunk[0], nn.Conv2d) and isinstance(d_trunk[1], nn.LeakyReLU)  # no BN on D's input
    assert all(m.negative_slope == 0.2 for m in d_layers if isinstance(m, nn.LeakyReLU))
    assert any(isinstance(m, nn.BatchNorm2d) for m in d_trunk)


def test_ebgan_d_loss_is_real_energy_plus_the_margin_hinge_on_fakes():
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([4.0, 12.0])
    # mean real energy 2; hinge [10 - 4]+ = 6 and [10 - 12]+ = 0, mean 3: fakes beyond the margin cost nothing.
    assert ebgan_d_loss(real, fake, margin=10.0).item() == pytest.approx(5.0)
    assert ebgan_d_loss(real, fake, margin=1.0).item() == pytest.approx(2.0)


def test_pulling_away_term_is_the_mean_squared_cosine_between_distinct_codes():
    codes = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    # cosines: (1,2) 0, (1,3) and (2,3) 1/sqrt(2); squared and summed over i != j: 2 * (0 + 1/2 + 1/2) = 2; / (3 * 2)
    assert pulling_away_term(codes).item() == pytest.approx(1 / 3)
    assert pulling_away_term(torch.tensor([[1.0, 1.0], [2.0, 2.0]])).item() == pytest.approx(1.0)  # collapsed


def test_ebgan_energy_is_the_reconstruction_error_and_g_pays_the_pulling_away_term():
    torch.manual_seed(0)
    variant = get_variant("ebgan")((1, 28, 28), 10, pt_weight=0.5)
    images = torch.rand(6, 1, 28, 28) * 2 - 1
    energy, code = variant.D(images)
    expected = (variant.D.decoder(variant.D.encoder(images)) - images).flatten(1).norm(dim=1)
    assert torch.allclose(energy, expected) and code.shape == (6, 64)
    assert torch.allclose(variant.discriminate(images, None), -energy)
    losses = variant.train_step(images, torch.zeros(6, dtype=torch.long))
    assert (losses["loss_g"] - losses["energy_fake"]).item() == pytest.approx(0.5 * losses["pulling_away"].item(),
                                                                               rel=1e-5)
    assert "pulling_away" not in get_variant("ebgan")((1, 28, 28), 10).train_step(images, torch.zeros(6).long())


@pytest.mark.parametrize("name", ["dcgan", "cgan", "ragan", "wgan", "lsgan", "dragan"])
def test_init_dcgan_draws_convolutions_from_n_0_002_and_batch_norm_scales_from_n_1_002(name):
    torch.manual_seed(0)
    model = get_variant(name)((1, 28, 28), 10, init="dcgan")
    for network in (model.G, model.D):
        convs = [m for m in network.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        norms = [m for m in network.modules() if isinstance(m, nn.BatchNorm2d)]
        weights = torch.cat([m.weight.detach().flatten() for m in convs])
        assert abs(weights.mean().item()) < 2e-3 and weights.std().item() == pytest.approx(0.02, rel=0.05)
        assert all(m.bias is None or not m.bias.any() for m in convs + norms)
        if norms:
            scales = torch.cat([m.weight.detach() for m in norms])
            assert scales.mean().item() == pytest.approx(1.0, abs=0.01)
            assert scales.std().item() == pytest.approx(0.02, rel=0.3)
    default = get_variant(name)((1, 28, 28), 10)  # PyTorch's own: Kaiming uniform, unit batch norm scales
    first = next(m for m in default.G.modules() if isinstance(m, nn.ConvTranspose2d))
    assert default.hp.init == "pytorch" and first.weight.std().item() != pytest.approx(0.02, rel=0.05)


def test_lsgan_losses_are_half_mean_squared_distances_to_their_targets():
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([0.0, 2.0])
    # a = 0, b = c = 1: D: 1/2 mean((0, 2)^2) + 1/2 mean((0, 2)^2) = 2; G: 1/2 mean((-1, 1)^2) = 1/2.
    assert lsgan_d_loss(real, fake).item() == pytest.approx(2.0)
    assert lsgan_g_loss(fake).item() == pytest.approx(0.5)
    # The paper's other coding, a = -1, b = 1, c = 0: D 1/2 mean((0, 2)^2) + 1/2 mean((1, 3)^2) = 1 + 2.5.
    assert lsgan_d_loss(real, fake, a=-1.0, b=1.0).item() == pytest.approx(3.5)
    assert lsgan_g_loss(fake, c=0.0).item() == pytest.approx(1.0)


@pytest.mark.parametrize("d_output, squash", [("raw", lambda x: x), ("sigmoid", torch.sigmoid)])
def test_lsgan_squares_d_raw_output_or_as_compare_gan_its_sigmoid(d_output, squash):
    torch.manual_seed(0)
    lsgan = get_variant("lsgan")((1, 28, 28), 10, d_output=d_output)
    real, fake = torch.rand(6, 1, 28, 28) * 2 - 1, torch.rand(6, 1, 28, 28) * 2 - 1
    losses = lsgan.d_losses(Batch(real, fake, None, None))["loss_d"]
    expected = lsgan_d_loss(squash(lsgan.D(real)), squash(lsgan.D(fake)))
    assert losses.item() == pytest.approx(expected.item(), rel=1e-5)
    assert lsgan.g_losses(Batch(real, fake, None, None))["loss_g"].item() == pytest.approx(
        lsgan_g_loss(squash(lsgan.D(fake))).item(), rel=1e-5)


def test_dragan_perturbs_real_data_by_half_its_spread_times_uniform_noise():
    real = torch.ones(4, 1, 3, 3)
    real[::2] = -1  # population standard deviation 1
    torch.manual_seed(0)
    moved = perturbed(real)
    torch.manual_seed(0)
    assert torch.equal(moved, real + 0.5 * torch.rand_like(real))
    assert (moved - real).min() >= 0 and (moved - real).max() < 0.5


class RecordingCritic(LinearCritic):
    def forward(self, x):
        self.seen = x.detach().clone()
        return super().forward(x)


def test_dragan_penalty_is_taken_between_the_reals_and_their_perturbation():
    weight = torch.zeros(1, 2, 2)
    weight.view(-1)[:2] = torch.tensor([1.2, 1.6])  # ||w|| = 2 everywhere: the penalty is (2 - 1)^2 = 1
    real, critic = torch.randn(5, 1, 2, 2), RecordingCritic(weight)
    torch.manual_seed(0)
    penalty, norm = dragan_penalty(critic, real)
    assert penalty.item() == pytest.approx(1.0, rel=1e-5) and norm.item() == pytest.approx(2.0, rel=1e-5)
    torch.manual_seed(0)
    shifted = perturbed(real)
    alpha = torch.rand(5, 1, 1, 1)
    assert torch.allclose(critic.seen, real + alpha * (shifted - real))  # x_hat = x + alpha (x_p - x)


def test_dragan_d_loss_is_the_cross_entropy_plus_lambda_times_the_penalty():
    torch.manual_seed(0)
    dragan = get_variant("dragan")((1, 28, 28), 10, gp_lambda=3.0)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in dragan.D.modules())
    real, fake = torch.rand(6, 1, 28, 28) * 2 - 1, torch.rand(6, 1, 28, 28) * 2 - 1
    losses = dragan.d_losses(Batch(real, fake, None, None))
    cross_entropy = discriminator_bce(dragan.D(real), dragan.D(fake))
    assert losses["loss_d"].item() == pytest.approx(cross_entropy.item() + 3.0 * losses["gradient_penalty"].item(),
                                                    rel=1e-5)
    assert dragan.g_losses(Batch(real, fake, None, None))["loss_g"].item() == pytest.approx(
        generator_nonsaturating(dragan.D(fake)).item(), rel=1e-5)


def test_began_loss_controller_and_convergence_measure():
    images, reconstructions = torch.zeros(2, 1, 2, 2), torch.tensor([[1.0, -1.0, 0.5, 0.5], [0.0, 0.0, 0.0, 2.0]])
    assert reconstruction_loss(images, reconstructions.view(2, 1, 2, 2)).tolist() == [0.75, 0.5]
    real, fake = torch.tensor(0.4), torch.tensor(0.5)
    assert began_d_loss(real, fake, torch.tensor(0.25)).item() == pytest.approx(0.4 - 0.25 * 0.5)
    # k + lambda_k (gamma L(x) - L(G(z))) = 0.5 + 0.1 (0.3 - 0.5)
    assert next_k(torch.tensor(0.5), real, fake, gamma=0.75, lambda_k=0.1).item() == pytest.approx(0.48)
    assert convergence_measure(real, fake, gamma=0.75).item() == pytest.approx(0.4 + 0.2)


def test_began_k_is_clipped_to_zero_and_one():
    one, zero = torch.tensor(1.0), torch.tensor(0.0)
    assert next_k(torch.tensor(0.99), one, zero, gamma=0.75, lambda_k=0.1).item() == 1.0  # 0.99 + 0.075
    assert next_k(torch.tensor(0.01), zero, one, gamma=0.75, lambda_k=0.1).item() == 0.0  # 0.01 - 0.1
    assert next_k(torch.tensor(1.0), one, one, gamma=0.75, lambda_k=0.1).item() == pytest.approx(0.975)


def test_began_step_uses_k_then_updates_it_as_training_state():
    torch.manual_seed(0)
    began = get_variant("began")((1, 28, 28), 10, lambda_k=0.1)
    assert began.k.item() == 0.0 and "k" in began.state_dict()  # k_0 = 0, saved with the weights
    images = torch.rand(6, 1, 28, 28) * 2 - 1
    error, code = began.D(images)
    expected = (began.D.decoder(began.D.encoder(images)) - images).abs().flatten(1).mean(1)
    assert torch.allclose(error, expected) and code.shape == (6, 64)
    assert torch.allclose(began.discriminate(images, None), -error)
    began.k.fill_(0.5)
    losses = began.train_step(images, torch.zeros(6, dtype=torch.long))
    real, fake = losses["recon_real"], losses["recon_fake"]
    assert losses["loss_d"].item() == pytest.approx((real - 0.5 * fake).item(), rel=1e-5)
    expected_k = next_k(torch.tensor(0.5), real, fake, gamma=0.75, lambda_k=0.1).item()
    assert losses["k"].item() == began.k.item() == pytest.approx(expected_k)
    assert losses["convergence"].item() == pytest.approx(convergence_measure(real, fake, 0.75).item())
    restored = get_variant("began")((1, 28, 28), 10, lambda_k=0.1)
    restored.load_state_dict(began.state_dict())
    assert restored.k.item() == began.k.item()
