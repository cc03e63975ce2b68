"""G's exponential moving average (the g_ema tip): the update, the generator each use sees, and the
raw G scored beside the average. Resuming it bit for bit: test_engine.py."""

import pytest
import torch

from bench.engine import TrainConfig, Trainer
from bench.registry import get_variant


def weights(network: torch.nn.Module) -> list[torch.Tensor]:
    return [value.detach().clone() for value in network.state_dict().values()]


def test_the_average_copies_g_until_its_start_then_moves_by_one_minus_the_decay():
    torch.manual_seed(0)
    dcgan = get_variant("dcgan")((1, 8, 8), 10, g_ema=0.75, g_ema_start=1)
    real, labels = torch.rand(16, 1, 8, 8) * 2 - 1, torch.zeros(16, dtype=torch.long)
    dcgan.train_step(real, labels)
    dcgan.average_generator(1)  # up to g_ema_start: a copy, running statistics and counters included
    assert all(torch.equal(a, g) for a, g in zip(weights(dcgan.G_ema), weights(dcgan.G)))
    before = weights(dcgan.G_ema)
    dcgan.train_step(real, labels)
    dcgan.average_generator(2)
    for (key, averaged), old, new in zip(dcgan.G_ema.state_dict().items(), before, weights(dcgan.G)):
        expected = new if key.endswith("num_batches_tracked") else 0.75 * old + 0.25 * new
        assert torch.allclose(averaged, expected, atol=1e-6), key
    assert not any(p.requires_grad for p in dcgan.G_ema.parameters())
    assert all(p.requires_grad for p in dcgan.G.parameters())


def test_samples_come_from_the_average_the_raw_g_on_request_and_g_is_itself_again_after():
    torch.manual_seed(0)
    dcgan = get_variant("dcgan")((1, 8, 8), 10, g_ema=0.999)
    raw = dcgan.G
    with torch.no_grad():
        for param in dcgan.G_ema.parameters():
            param.mul_(0.5)  # an average unlike G
    seed = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    averaged, again = dcgan.sample(4, generator=seed()), dcgan.sample(4, generator=seed())
    with dcgan.evaluating(raw=True):
        direct = dcgan.generate(dcgan.latent(4, seed()), torch.zeros(4, dtype=torch.long))
    assert torch.equal(averaged, again) and not torch.allclose(averaged, direct)
    with dcgan.evaluating():  # nested blocks: the inner one keeps the average, and G is itself after both
        assert torch.equal(dcgan.sample(4, generator=seed()), averaged)
    assert dcgan.G is raw and dcgan.training
    assert not get_variant("dcgan")((1, 8, 8), 10).averaging  # off: no second generator at all


@pytest.mark.parametrize("decay", [0.0, 0.99])
def test_each_evaluation_scores_the_average_and_the_raw_g_beside_it(decay):
    trainer = Trainer(TrainConfig("gan", dataset="digits", steps=6, eval_every=3, eval_samples=200, device="cpu",
                                  hparams={"g_ema": decay}), progress=False)
    trainer.run()
    for scores in trainer.evaluations:
        assert ("fid_domain_raw" in scores) == (decay > 0)
    if decay:
        last = trainer.evaluations[-1]
        assert last["fid_domain"] != last["fid_domain_raw"]  # the average of 6 steps is not the last G
