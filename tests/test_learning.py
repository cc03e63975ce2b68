"""Every variant learns from its paper defaults on real Fashion-MNIST.

"Learns" is measured with fid_domain (FID on the features of the shipped Fashion-MNIST
classifier, against the 10,000 test images): after about a minute of training, a generator
must be far closer to the data than its own untrained self, and than Gaussian noise with the
data's per-pixel mean and standard deviation (which a pixel statistic would accept).
"""

import pytest
import torch

from tests.conftest import FID_SAMPLES, LEARNING_STEPS


@pytest.fixture(scope="module")
def noise_fid(score, fashion_train):
    """FID of Gaussian noise with each pixel's real mean and standard deviation."""
    real = fashion_train.images[:10000].float() / 127.5 - 1
    generator = torch.Generator().manual_seed(0)
    noise = real.mean(0) + real.std(0) * torch.randn(FID_SAMPLES, *real.shape[1:], generator=generator)
    return score(noise.clamp(-1, 1))


@pytest.mark.parametrize("name", sorted(LEARNING_STEPS))
def test_variant_learns_from_its_defaults(trained, noise_fid, name):
    run = trained(name)
    assert run.fid < 0.6 * run.untrained_fid, f"{name}: fid_domain {run.untrained_fid:.1f} -> {run.fid:.1f}"
    assert run.fid < 0.7 * noise_fid, f"{name}: fid_domain {run.fid:.1f} vs pixel-matched noise {noise_fid:.1f}"
