"""DiffAugment (the diffaugment tip): each policy pinned to its definition, the gradient reaching the
images, and every image D sees passing through it, in D's updates and in G's."""

import pytest
import torch

import bench.registry
from bench.augment import CHOICES, augment, brightness, contrast, cut_out, random_cutout, saturation, translate
from bench.errors import ConfigError
from bench.registry import get_variant


def images(n: int = 3, channels: int = 3, side: int = 8) -> torch.Tensor:
    return torch.rand(n, channels, side, side, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_translation_by_a_known_shift_moves_every_pixel_that_far_and_pads_with_zeros():
    x = images()
    moved = translate(x, torch.tensor([2, -1, 0]), torch.tensor([-3, 0, 1]))
    assert torch.equal(moved[0, :, 2:, :5], x[0, :, :6, 3:])  # down 2, left 3
    assert (moved[0, :, :2] == 0).all() and (moved[0, :, :, 5:] == 0).all()
    assert torch.equal(moved[1, :, :7], x[1, :, 1:]) and (moved[1, :, 7] == 0).all()  # up 1
    assert torch.equal(moved[2, :, :, 1:], x[2, :, :, :7]) and (moved[2, :, :, 0] == 0).all()  # right 1


def test_cutout_zeroes_a_square_of_a_quarter_of_the_image_clipped_at_its_edges():
    ones = torch.ones(2, 1, 8, 8)
    cut = cut_out(ones, torch.tensor([2, -2]), torch.tensor([1, 6]), (4, 4))
    assert (cut[0, 0, 2:6, 1:5] == 0).all() and cut[0].sum() == 64 - 16
    assert (cut[1, 0, 0:2, 6:8] == 0).all() and cut[1].sum() == 64 - 4  # a corner of the square inside
    drawn = random_cutout(torch.ones(500, 1, 8, 8))
    zeros = (drawn == 0).flatten(1).sum(1)
    assert zeros.max() == 16 and zeros.min() >= 4  # the whole square, or the part of it inside
    # Centres are uniform over the image: every pixel is cut out by some draw.
    assert ((drawn == 0).any(dim=0)).all()


def test_color_transforms_are_brightness_saturation_and_contrast_about_their_means():
    x = images()
    assert torch.equal(brightness(x, torch.full((3, 1, 1, 1), 0.25)), x + 0.25)
    grey = saturation(x, torch.zeros(3, 1, 1, 1))
    assert torch.allclose(grey, x.mean(dim=1, keepdim=True).expand_as(x))
    assert torch.allclose(saturation(x, torch.ones(3, 1, 1, 1)), x, atol=1e-6)
    flat = contrast(x, torch.zeros(3, 1, 1, 1))
    assert torch.allclose(flat, x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x))
    doubled = contrast(x, torch.full((3, 1, 1, 1), 2.0))
    assert torch.allclose(doubled.std(dim=(1, 2, 3)), 2 * x.std(dim=(1, 2, 3)), rtol=1e-5)


@pytest.mark.parametrize("policy", CHOICES[1:])
def test_every_policy_is_differentiable_in_the_images_and_changes_them(policy):
    torch.manual_seed(0)
    x = images(n=16).requires_grad_(True)
    out = augment(x, policy)
    assert out.shape == x.shape and not torch.equal(out, x)
    (out * torch.randn_like(out)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_every_image_d_sees_passes_through_the_policy_in_d_and_g_updates(monkeypatch):
    seen = []

    def counting(x, policy):
        seen.append((len(x), policy))
        return augment(x, policy)

    monkeypatch.setattr(bench.registry, "augment", counting)
    real, labels = images(n=8, channels=1, side=8), torch.zeros(8, dtype=torch.long)
    for name, calls in (("dcgan", 3), ("ragan", 4), ("wgan_gp", 2 * 3 + 1), ("cgan", 3), ("infogan", 3)):
        seen.clear()
        variant = get_variant(name)((1, 8, 8), 10, diffaugment="translation",
                                    **({"n_critic": 2} if name == "wgan_gp" else {}))
        variant.train_step(real.repeat(variant.real_batches_per_step, 1, 1, 1),
                           labels.repeat(variant.real_batches_per_step))
        # D's update sees reals and fakes (wgan_gp also its interpolates), G's update the fakes (ragan: reals too).
        assert len(seen) == calls and all(policy == "translation" for _, policy in seen), (name, seen)
    with pytest.raises(ConfigError, match="diffaugment='translation,color' is not valid"):
        get_variant("dcgan")((1, 8, 8), 10, diffaugment="translation,color")
    with pytest.raises(ConfigError, match="tip 'diffaugment' does not apply to variant 'began'"):
        get_variant("began")((1, 8, 8), 10, diffaugment="color")
