"""Variants compared at equal budget: the best-of-k arithmetic against brute force, then one real
three-variant study with two workers (real digits, journal file, SQLite MLflow store) that
`bench compare`, the progress lines and `bench report` (rendered in headless Chromium) are checked on."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from optuna.trial import TrialState
from PIL import Image

from bench.compare import best_by_seconds, best_of_k, compare_study, probability_better, report_lines
from bench.data import load_dataset
from bench.errors import ConfigError
from bench.evaluation import record_images
from bench.ranking import leaderboard
from bench.report import write_report
from tests.helpers import BENCH, TINY_STUDY, bench, bench_here, clean_env, mlflow_runs, optuna_trials

VARIANTS = ("cgan", "dcgan", "ragan")
TRIALS = 3  # as in TINY_STUDY


def brute_best_of_k(values: list[float], k: int, maximise: bool, replace: bool = False) -> list[float]:
    """The best of every k-subset (without replacement) or every k-tuple (with), equally likely."""
    pick = max if maximise else min
    draws = itertools.product(values, repeat=k) if replace else itertools.combinations(values, k)
    return [pick(draw) for draw in draws]


@pytest.mark.parametrize("maximise", [False, True])
def test_best_of_k_is_the_exact_distribution_of_the_best_of_k_trials(maximise):
    values = [312.0, 250.5, 250.5, 401.2, 198.7, 275.0]  # a tie included
    curve = best_of_k(np.array(values), maximise)
    assert curve["k"].tolist() == list(range(1, 7))
    for k in range(1, 7):
        row = curve.iloc[k - 1]
        assert row["expected"] == pytest.approx(np.mean(brute_best_of_k(values, k, maximise)))
        bootstrap = brute_best_of_k(values, k, maximise, replace=True)
        assert [row["low"], row["high"]] == pytest.approx(list(np.quantile(bootstrap, [0.025, 0.975],
                                                                           method="inverted_cdf")), abs=1e-9)
    assert curve["expected"].iloc[0] == pytest.approx(np.mean(values))
    assert curve["expected"].iloc[-1] == (max(values) if maximise else min(values))


def test_probability_better_and_best_by_seconds_match_a_direct_count():
    a, b = np.array([200.0, 260.0, 300.0, 410.0]), np.array([230.0, 250.0, 500.0])
    pairs = [(x, y) for x in brute_best_of_k(list(a), 2, False, replace=True)
             for y in brute_best_of_k(list(b), 2, False, replace=True)]
    assert probability_better(a, b, 2, False) == pytest.approx(np.mean([(x < y) + 0.5 * (x == y) for x, y in pairs]))
    assert probability_better(a, a, 3, False) == pytest.approx(0.5)

    seconds = np.array([10.0, 20.0, 30.0, 40.0])
    curve = best_by_seconds(a, seconds, np.array([40.0, 100.0]), maximise=False)
    assert curve["expected"].iloc[-1] == a.min()  # every order has run every trial by then
    assert a.min() <= curve["expected"].iloc[0] <= a.mean()


# -- a real comparison ------------------------------------------------------------------------------

COMPARE_STUDY = f'variant = "{",".join(VARIANTS)}"\n' + TINY_STUDY.format(steps=40, eval_every=20)  # 3 trials each


@pytest.fixture(scope="module")
def comparison(project_folder):
    """`bench run` of three variants with 2 workers, its output sent to a file; then `bench compare`."""
    cwd = project_folder("compare")
    (cwd / "versus.toml").write_text(COMPARE_STUDY)
    log = cwd / "run.log"
    with log.open("w") as output:
        run = subprocess.run([BENCH, "run", "--study", "versus.toml", "--workers", "2", "--progress-every", "2"],
                             cwd=cwd, stdout=output, stderr=subprocess.PIPE, text=True, timeout=900, env=clean_env())
    assert run.returncode == 0, run.stderr[-3000:]
    compared = bench_here("compare", "--study", "versus", "-o", "results/compare", cwd=cwd)
    assert compared.returncode == 0, compared.stderr[-3000:]
    return cwd, log.read_text(), compared.stdout


@pytest.mark.e2e
def test_the_variants_advance_together_and_each_finishes_its_trials(comparison):
    cwd, _, _ = comparison
    started = sorted((trial.datetime_start, variant) for variant in VARIANTS
                     for trial in optuna_trials(cwd, f"versus:{variant}:digits"))
    assert len(started) == TRIALS * len(VARIANTS)
    counts = dict.fromkeys(VARIANTS, 0)
    for _, variant in started:  # at every moment, no variant is more than one trial ahead of another
        counts[variant] += 1
        assert max(counts.values()) - min(counts.values()) <= 1, started
    for variant in VARIANTS:
        assert all(t.state == TrialState.COMPLETE for t in optuna_trials(cwd, f"versus:{variant}:digits"))


@pytest.mark.e2e
def test_compare_gives_best_of_k_as_computed_from_the_recorded_trials(comparison):
    cwd, _, printed = comparison
    curves = pd.read_csv(cwd / "results" / "compare" / "best_of_k.csv")
    for variant in VARIANTS:
        values = [t.value for t in optuna_trials(cwd, f"versus:{variant}:digits")]
        curve = curves[curves["variant"] == variant].set_index("k")["expected"]
        assert curve[1] == pytest.approx(np.mean(values))  # k = 1: the mean trial
        assert curve[TRIALS] == pytest.approx(min(values))  # k = n: the best one
        assert curve[2] == pytest.approx(np.mean(brute_best_of_k(values, 2, False)))
        assert re.search(rf"^\s*{variant}\s+{TRIALS}\s+0\s+0\s", printed, re.MULTILINE), printed
    assert "P(cgan beats dcgan, best of 3, bootstrap) = " in printed and "pruned" not in printed.split("\n")[0]
    for name in ("best_of_k.png", "best_by_seconds.png", "trial_scores.png", "precision_recall.png",
                 "best_trial_curves.png", "best_samples.png"):
        assert (cwd / "results" / "compare" / name).stat().st_size > 5000


@pytest.mark.e2e
def test_compare_places_every_trial_by_its_precision_and_recall(comparison):
    cwd, _, _ = comparison
    trials = pd.read_csv(cwd / "results" / "compare" / "trials.csv").set_index("run_id")
    logged = mlflow_runs(cwd, "versus").query("`tags.bench.kind` == 'trial'").set_index("run_id")
    assert len(trials) == TRIALS * len(VARIANTS)
    for score in ("precision", "recall"):
        assert trials[score].between(0, 1).all()
        assert trials[score].to_dict() == pytest.approx(logged.loc[trials.index, f"metrics.{score}_domain"].to_dict())


@pytest.mark.e2e
def test_the_parent_run_holds_the_comparison_plots(comparison):
    cwd, _, _ = comparison
    runs = mlflow_runs(cwd, "versus")
    parent = runs[runs["tags.bench.kind"] == "study"].sort_values("start_time")["run_id"].iloc[0]
    client = mlflow.MlflowClient(f"sqlite:///{cwd / 'results' / 'mlflow.db'}")
    logged = {Path(item.path).name for item in client.list_artifacts(parent, "comparison")}
    assert {"best_of_k.png", "best_by_seconds.png", "trial_scores.png", "precision_recall.png",
            "best_trial_curves.png", "best_samples.png", "comparison.csv", "trials.csv"} <= logged


@pytest.mark.e2e
def test_reading_a_study_leaves_mlflows_tracking_uri_as_it_was(comparison, tmp_path, monkeypatch):
    """A notebook that reads a study keeps its own MLflow tracking URI."""
    cwd, _, _ = comparison
    notebooks = f"sqlite:///{tmp_path / 'notebook.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", notebooks)
    mlflow.set_tracking_uri(notebooks)
    uri = f"sqlite:///{cwd / 'results' / 'mlflow.db'}"
    assert len(leaderboard(uri, "versus")) and compare_study("versus", uri).common_k == TRIALS
    write_report("versus", tmp_path / "report.html", uri)
    assert mlflow.get_tracking_uri() == notebooks


@pytest.mark.e2e
def test_output_to_a_file_gets_periodic_progress_lines(comparison):
    _, log, _ = comparison
    lines = [line for line in log.splitlines() if re.search(rf"\d+/{TRIALS * len(VARIANTS)} trials done", line)]
    assert len(lines) >= 3, log[-3000:]
    assert any(re.search(r"best \d", line) for line in lines)  # the best so far, once a trial is complete
    assert all(all(f"{variant} " in line for variant in VARIANTS) for line in lines)
    assert f"{TRIALS * len(VARIANTS)}/{TRIALS * len(VARIANTS)} trials done" in lines[-1]


@pytest.mark.browser
@pytest.mark.e2e
def test_report_renders_every_variant_its_best_score_and_samples_in_chromium(comparison, tmp_path):
    cwd, _, _ = comparison
    result = bench_here("report", "--study", "versus", "-o", "results/report.html", cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    page = cwd / "results" / "report.html"
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed (.ci/run installs it: apt-get install chromium)"
    flags = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--window-size=1400,2400"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    board = mlflow_runs(cwd, "versus").query("`tags.bench.kind` == 'trial'")
    for variant in VARIANTS:
        best = board.loc[board["tags.bench.variant"] == variant, "metrics.fid_domain"].min()
        card = re.search(rf"<div class=\"variant\" data-variant=\"{variant}\">(.*?)</div>", dom, re.DOTALL)
        assert card, f"no card for {variant}"
        assert f"{best:.4g}" in card.group(1)
        assert re.search(rf'<img alt="samples of {variant}" src="data:image/png;base64,', card.group(1))
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("L"))
    assert pixels.shape[0] >= 1000 and pixels.std() > 20  # a rendered page with pictures, not a blank one


@pytest.mark.e2e
def test_images_made_elsewhere_rank_beside_the_variants_marked_external_and_outside_best_of_k(comparison, tmp_path):
    """Real training images stand in for an outside model's samples (images the scores' test split does not
    hold), recorded in a copy of the study's store."""
    cwd = tmp_path / "project"
    shutil.copytree(comparison[0], cwd)
    folder = cwd / "outside"
    folder.mkdir()
    for number, image in enumerate(load_dataset("digits", "train").images[:300]):
        Image.fromarray(image[0].numpy()).save(folder / f"{number:04d}.png")
    recorded = bench("eval", "--images", "outside", "--name", "test-split", "--study", "versus.toml",
                     "--provenance", "the digits' own training images", cwd=cwd)
    assert recorded.returncode == 0, recorded.stderr[-3000:]
    assert "test-split recorded in study versus as an external entry" in recorded.stdout
    board = leaderboard(f"sqlite:///{cwd / 'results' / 'mlflow.db'}", "versus")
    fid = board[board["metric"] == "fid_domain"].set_index("variant")
    assert fid.loc["test-split", "external"] == "the digits' own training images"
    external = mlflow_runs(cwd, "versus").query("`tags.bench.variant` == 'test-split'")
    assert external["params.real_samples"].tolist() == ["10000"]  # as the trials record it (all 360 used)
    assert fid.loc["test-split", "best"] < fid.loc[list(VARIANTS), "best"].min()  # real images beat 40-step GANs
    assert set(board.loc[board["variant"].isin(VARIANTS), "external"]) == {""}
    compared = compare_study("versus", f"sqlite:///{cwd / 'results' / 'mlflow.db'}")
    assert "test-split" not in set(compared.summary["variant"]) and compared.common_k == TRIALS
    assert list(compared.external["name"]) == ["test-split"]
    printed = "\n".join(report_lines(compared))  # what `bench compare` prints
    assert "external entries" in printed and "the digits' own training images" in printed
    page = write_report("versus", cwd / "report.html", f"sqlite:///{cwd / 'results' / 'mlflow.db'}").read_text()
    card = re.search(r"<div class='variant' data-variant='test-split'>(.*?)</div>", page, re.DOTALL)
    assert card and "external: the digits&#x27; own training images" in card.group(1)
    with pytest.raises(ConfigError, match="'dcgan' is the name of a variant ganbench trains"):
        record_images(None, "dcgan", "versus", "fid_domain", tracking=f"sqlite:///{cwd / 'results' / 'mlflow.db'}")
