"""Ablation studies ([arms] x seeds): the shipped tricks_ablation end to end on real Fashion-MNIST
with a real journal file and MLflow store, and its effect table built from what MLflow recorded."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from click.testing import CliRunner
from scipy import stats

from bench.cli import main
from bench.errors import ConfigError
from bench.ranking import effects
from bench.registry import get_variant
from bench.study import STUDIES_DIR, load_study
from tests.helpers import mlflow_runs, optuna_trials

ARMS = {"baseline", "label_smoothing", "minibatch_std", "ttur", "small_g", "selu"}


def test_the_shipped_ablation_has_a_baseline_and_one_arm_per_tip_for_dcgan():
    spec = load_study("tricks_ablation")
    assert spec.variant == "dcgan" and spec.seeds >= 3 and spec.pruner == "none"
    resolved = spec.for_variant(get_variant("dcgan"))
    assert {arm.name for arm in resolved.arms} == ARMS and not resolved.skipped_arms
    assert resolved.trials == len(ARMS) * spec.seeds == spec.trials


def test_arms_a_variant_cannot_take_are_skipped_with_the_reason():
    resolved = load_study("tricks_ablation").for_variant(get_variant("wgan"))
    assert set(resolved.skipped_arms) == {"label_smoothing"}
    assert "binary cross-entropy" in resolved.skipped_arms["label_smoothing"]
    assert {arm.name for arm in resolved.arms} == ARMS - {"label_smoothing"}


@pytest.mark.parametrize("body, fragment", [
    ('seeds = 3\n[arms]\nsmoothed = { label_smoothing = 0.1 }', "needs an arm named 'baseline'"),
    ('seeds = 3\n[arms]\nbaseline = {}\n[space]\nlr = { low = 1e-4, high = 1e-3 }', "compares fixed settings"),
    ('seeds = 3\npruner = "median"\n[arms]\nbaseline = {}', "'pruner' does not apply"),
    ('seeds = 1\n[arms]\nbaseline = {}', "seeds >= 2"),
    ('seeds = 2\n[arms]\nbaseline = 3', "map each arm's name to its settings"),
])
def test_malformed_ablations_name_the_problem(tmp_path, body, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(body + "\n")
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_study(path)


@pytest.mark.parametrize("arm, fragment", [
    ("heavy = { label_smoothing = 0.9 }", r"\[arms\] heavy: label_smoothing=0.9 is out of range"),
    ("typo = { lable_smoothing = 0.1 }", r"\[arms\] typo: variant 'dcgan' has no hyperparameter 'lable_smoothing'"),
])
def test_a_bad_arm_names_the_file_and_the_arm(tmp_path, arm, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(f"seeds = 2\n[arms]\nbaseline = {{}}\n{arm}\n")
    with pytest.raises(ConfigError, match="bad.toml: " + fragment):
        load_study(path).for_variant(get_variant("dcgan"))


@pytest.fixture(scope="module")
def ablation(project_folder):
    """`bench run --study tricks_ablation` (dcgan, the study's default) with the shipped arms on digits and
    a budget of seconds: 2 seeds x 6 arms."""
    folder = project_folder("ablation")
    text = (STUDIES_DIR / "tricks_ablation.toml").read_text()
    for key, value in (("seeds", 2), ("steps", 16), ("eval_every", 8), ("eval_samples", 300)):
        text = re.sub(rf"^{key} = \d+$", f"{key} = {value}", text, flags=re.M)
    text = re.sub(r'^dataset = ".*"$', 'dataset = "digits"', text, flags=re.M)  # its plumbing, at a digits step's cost
    study = folder / "tricks_ablation.toml"
    study.write_text(text)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        result = CliRunner().invoke(main, ["run", "--study", str(study)])
        csv = folder / "effects.csv"
        exported = CliRunner().invoke(main, ["leaderboard", "--study", "tricks_ablation", "--effects", "-o", str(csv)])
        table = effects(None, "tricks_ablation")
    return folder, result, exported, csv, table


@pytest.mark.e2e
def test_every_arm_runs_once_per_seed_with_the_same_seeds(ablation):
    folder, result, *_ = ablation
    assert result.exit_code == 0, result.output
    trials = optuna_trials(folder, "tricks_ablation:dcgan:digits")
    assert [trial.state.name for trial in trials] == ["COMPLETE"] * 12
    assert sorted((t.params["arm"], t.params["seed"]) for t in trials) == sorted(
        (arm, seed) for arm in ARMS for seed in (0, 1))
    assert {(t.params["arm"], t.params["seed"]): t.user_attrs["seed"] for t in trials} == {
        (arm, seed): seed for arm in ARMS for seed in (0, 1)}
    runs = mlflow_runs(folder, "tricks_ablation").query("`tags.bench.kind` == 'trial'")
    assert set(runs["tags.bench.arm"]) == ARMS
    ttur = runs[runs["tags.bench.arm"] == "ttur"]
    assert set(ttur["params.lr"]) == {"0.0001"} and set(ttur["params.lr_d_ratio"]) == {"4.0"}
    assert runs[runs["tags.bench.arm"] == "baseline"].filter(like="params.label_smoothing").isna().all().all()


@pytest.mark.e2e
def test_effects_are_paired_differences_from_mlflow_with_t_intervals(ablation):
    folder, result, exported, csv, table = ablation
    runs = mlflow_runs(folder, "tricks_ablation").query("`tags.bench.kind` == 'trial'")
    fid = runs.pivot(index="params.seed", columns="tags.bench.arm", values="metrics.fid_domain")
    coverage = runs.pivot(index="params.seed", columns="tags.bench.arm", values="metrics.classes_covered")
    rows = table.set_index("arm")
    assert set(rows.index) == ARMS and (rows["seeds"] == 2).all() and (rows["metric"] == "fid_domain").all()
    for arm in ARMS - {"baseline"}:
        differences = fid[arm] - fid["baseline"]
        half = stats.t.ppf(0.975, 1) * differences.std(ddof=1) / 2 ** 0.5
        assert rows.loc[arm, "mean"] == pytest.approx(fid[arm].mean())
        assert rows.loc[arm, "effect"] == pytest.approx(differences.mean())
        assert (rows.loc[arm, "ci_low"], rows.loc[arm, "ci_high"]) == pytest.approx(
            (differences.mean() - half, differences.mean() + half))
        assert rows.loc[arm, "coverage_effect"] == pytest.approx((coverage[arm] - coverage["baseline"]).mean())
        assert rows.loc[arm, "verdict"] in {"better", "worse", "no clear effect"}
    assert rows.loc["ttur", "settings"] == "lr=0.0001 lr_d_ratio=4.0" and rows.loc["baseline", "settings"] == "defaults"
    # what bench run printed and what --effects exported are that table
    assert "label_smoothing=0.1" in result.output and "export the table:" in result.output
    assert exported.exit_code == 0, exported.output
    pd.testing.assert_frame_equal(pd.read_csv(csv, keep_default_na=False, na_values=[""]).drop(columns="verdict"),
                                  table.drop(columns="verdict"), check_dtype=False)


@pytest.mark.e2e
def test_effects_of_an_unknown_study_is_a_clear_error(ablation):
    folder, *_ = ablation
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        missing = CliRunner().invoke(main, ["leaderboard", "--study", "no_such_study", "--effects"])
    assert missing.exit_code == 2 and "no study 'no_such_study'" in missing.output
