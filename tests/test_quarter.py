"""Every variant, at its paper defaults, reaches a quarter of its untrained fid_domain within one
CPU budget, the same for all: QUARTER_SECONDS of training on the reference machine, given as
generator steps from each variant's measured rate (conftest.STEPS_PER_SECOND), seed 0.

A variant stops at its first evaluation (one every EVAL_SECONDS of its steps) at or below the
quarter. Most get there in about a minute; the WGANs need about ten (RMSprop at 5e-5 and five
critic updates per generator step are slow by design), which is more than the per-commit suite
can hold. So these tests are marked ``quarter`` and run apart: ``make learning`` (CI runs it
after ``make test``).
"""

import pytest

from bench.engine import TrainConfig, Trainer
from tests.conftest import FID_SAMPLES, STEPS_PER_SECOND

QUARTER_SECONDS = 720
EVAL_SECONDS = 20

pytestmark = pytest.mark.quarter


@pytest.mark.parametrize("name", sorted(STEPS_PER_SECOND))
def test_variant_reaches_a_quarter_of_its_untrained_fid_within_the_shared_budget(scorer, name):
    budget = round(STEPS_PER_SECOND[name] * QUARTER_SECONDS)
    every = round(STEPS_PER_SECOND[name] * EVAL_SECONDS)
    trainer = Trainer(TrainConfig(name, steps=budget, seed=0), progress=False)
    untrained = scorer.score(trainer.variant, FID_SAMPLES, seed=1)
    target = 0.25 * untrained["fid_domain"]
    curve = []
    while trainer.step < budget:
        trainer.run(until=min(budget, trainer.step + every))
        scores = scorer.score(trainer.variant, FID_SAMPLES, seed=1)
        curve.append((trainer.step, round(scores["fid_domain"], 1)))
        if scores["fid_domain"] <= target:
            break
    print(f"\n{name}: untrained {untrained['fid_domain']:.1f}, quarter {target:.1f}, budget {budget} steps; "
          f"reached {curve[-1][1]} at step {trainer.step} ({trainer.step / STEPS_PER_SECOND[name]:.0f} s), "
          f"ratio {curve[-1][1] / untrained['fid_domain']:.3f}; {scores}")
    assert curve[-1][1] <= target, f"{name}: untrained {untrained['fid_domain']:.1f}; (step, fid_domain): {curve}"
    assert not trainer.findings(), trainer.findings()
