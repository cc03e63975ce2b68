"""Every variant learns from its paper defaults on real Fashion-MNIST.

"Learns" is measured with fid_domain (FID on the features of the shipped Fashion-MNIST
classifier, against the 10,000 test images): after the same training budget for every variant
(conftest.LEARNING_SECONDS), a generator must be far closer to the data than its own untrained
self, and than Gaussian noise with the data's per-pixel mean and standard deviation (which a
pixel statistic would accept). How far each gets with more time: test_quarter.py.
"""

import pytest
import torch

from tests.helpers import FID_SAMPLES, LEARNING_STEPS

pytestmark = pytest.mark.e2e  # every test here reads the session's real trainings


@pytest.fixture(scope="module")
def noise_fid(scorer, fashion_train):
    """FID of Gaussian noise with each pixel's real mean and standard deviation."""
    real = fashion_train.images[:10000].float() / 127.5 - 1
    generator = torch.Generator().manual_seed(0)
    noise = real.mean(0) + real.std(0) * torch.randn(FID_SAMPLES, *real.shape[1:], generator=generator)
    return scorer.score_images(noise.clamp(-1, 1))["fid_domain"]


@pytest.mark.parametrize("name", sorted(LEARNING_STEPS))
def test_variant_learns_from_its_defaults(trained, noise_fid, name):
    run = trained(name)
    before, after = run.untrained["fid_domain"], run.scores["fid_domain"]
    assert after < 0.6 * before, f"{name}: fid_domain {before:.1f} -> {after:.1f}"
    assert after < 0.7 * noise_fid, f"{name}: fid_domain {after:.1f} vs pixel-matched noise {noise_fid:.1f}"


@pytest.mark.parametrize("name", sorted(LEARNING_STEPS))
def test_the_doctor_raises_no_false_alarm_on_the_built_in_variants_at_their_defaults(trained, name):
    assert trained(name).trainer.findings() == []


def test_cgan_generates_the_class_it_is_asked_for(trained):
    run = trained("cgan")
    assert run.scores["label_accuracy"] > 0.5, run.scores  # chance is 0.1
    assert run.untrained["label_accuracy"] < 0.3


def test_infogan_q_head_recovers_the_codes_it_was_given(trained):
    run = trained("infogan")
    info = run.trainer.history()["loss_info"]
    # log(10) + the Gaussian term at the start; the mutual-information bound must tighten.
    assert info.tail(100).mean() < 0.25 * info.head(50).mean(), (info.head(50).mean(), info.tail(100).mean())


def test_infogan_categorical_code_follows_the_classes(trained):
    run = trained("infogan")
    # Chance is 0.1 (the untrained generator's code scores 0.11 under the best one-to-one matching);
    # the trained code picks the class more than twice as often.
    assert run.scores["code_accuracy"] > 0.2, run.scores
    assert run.untrained["code_accuracy"] < 0.15, run.untrained
