"""An ablation arm's verdict: 'better' exactly when the confidence interval of its paired effect
lies on the good side of 0 (below it for a minimised score, above it for a maximised one), 'worse'
when it lies on the other side, 'no clear effect' when it straddles 0. Checked on trial runs
written by hand, as bench/tracking.py writes them, to a tiny SQLite MLflow store: no training."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.entities import Metric, Param

from bench.ranking import effects
from bench.scores import higher_is_better
from bench.study import BASELINE

SEEDS = (0, 1, 2)
DIFFERENCES = {
    # arm -> its score minus the baseline's, per seed (3 seeds: Student's t with 2 degrees of freedom)
    BASELINE: (0.0, 0.0, 0.0),
    "down": (-10.0, -12.0, -11.0),  # interval about [-13.5, -8.5]: below 0
    "up": (9.0, 12.0, 10.0),  # about [6.5, 14.1]: above 0
    "straddles": (-6.0, 5.0, 2.0),  # mean 0.3: across 0
    "noisy_down": (-9.0, -1.0, 3.0),  # mean -2.3, but the interval (about [-15, 10.4]) crosses 0
}
STUDIES = {
    # study -> (objective, the baseline's score per seed, a scale for the differences)
    "min_study": ("fid_domain", (100.0, 110.0, 125.0), 1.0),
    "max_study": ("classes_covered", (5.0, 6.0, 7.0), 0.1),
}
EXPECTED = {
    "min_study": {"down": "better", "up": "worse", "straddles": "no clear effect", "noisy_down": "no clear effect"},
    "max_study": {"down": "worse", "up": "better", "straddles": "no clear effect", "noisy_down": "no clear effect"},
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """An MLflow store holding both studies' complete trial runs, tagged as Tracking.start_trial and
    runner.run_trial tag them (an ablation's trials carry bench.arm and bench.objective)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('verdicts') / 'm.db'}"
    client = mlflow.MlflowClient(uri)
    for study, (objective, baseline, scale) in STUDIES.items():
        experiment = client.create_experiment(study, tags={"bench.study": study,
                                                           "mlflow.experimentKind": "custom_model_development"})
        trial = 0
        for arm, differences in DIFFERENCES.items():
            for seed, base, difference in zip(SEEDS, baseline, differences):
                run = client.create_run(experiment, run_name=f"trial-{trial:04d}", tags={
                    "bench.kind": "trial", "bench.study": study, "bench.trial": str(trial), "bench.variant": "dcgan",
                    "bench.dataset": "fashion-mnist", "bench.seed": str(seed), "bench.objective": objective,
                    "bench.arm": arm, "bench.state": "complete"})
                client.log_batch(run.info.run_id, params=[Param("seed", str(seed))],
                                 metrics=[Metric(objective, base + scale * difference, 0, 1)])
                client.set_terminated(run.info.run_id)
                trial += 1
    return uri


@pytest.mark.parametrize("study", STUDIES)
def test_an_arm_is_better_exactly_when_its_interval_lies_on_the_good_side_of_zero(store, study, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # effects sets MLflow's process-wide URI
    objective = STUDIES[study][0]
    table = effects(store, study).set_index("arm")  # positionally: the store's URI, then the study
    assert set(table.index) == set(DIFFERENCES) and (table["metric"] == objective).all()
    assert table.loc[BASELINE, "verdict"] == ""
    arms = table.drop(index=BASELINE)
    assert arms["verdict"].to_dict() == EXPECTED[study]
    maximised = higher_is_better(objective)
    for arm, row in arms.iterrows():
        assert row["effect"] == pytest.approx(STUDIES[study][2] * sum(DIFFERENCES[arm]) / len(SEEDS)), arm
        below, above = row["ci_high"] < 0, row["ci_low"] > 0
        better, worse = (above, below) if maximised else (below, above)
        assert row["verdict"] == ("better" if better else "worse" if worse else "no clear effect"), (arm, row)
