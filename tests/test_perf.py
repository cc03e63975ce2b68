"""`bench perf` reports what it measured (the figures themselves are for the closing note,
never asserted: the machine is shared and noisy)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.engine import TrainConfig, Trainer
from bench.perf import parallel_study, time_to_quality, training_throughput
from bench.registry import REFERENCE_VARIANT
from bench.scoring import Scorer
from bench.timing import scoring_seconds

BENCH = Path(sys.executable).with_name("bench")


@pytest.mark.e2e
def test_training_throughput_reports_medians_and_generator_steps():
    row = training_throughput("wgan", steps=3, repeats=3)
    assert row["images_per_second"] > 0 and len(row["repeats"]) == 3
    assert sorted(row["repeats"])[1] == row["images_per_second"]
    # a WGAN step consumes n_critic = 5 real batches
    assert abs(row["g_steps_per_second"] * 64 * 5 - row["images_per_second"]) < 0.05 * row["images_per_second"]


def test_scoring_seconds_times_the_scoring_of_an_untrained_generator_it_names(tmp_path):
    result = scoring_seconds(samples=300, repeats=2, cache=tmp_path)
    assert result["samples"] == 300 and len(result["repeats"]) == 2 and result["features"] == "domain"
    # What it timed is that scoring: the untrained reference generator, 300 samples against 300 real ones.
    generator = Trainer(TrainConfig(REFERENCE_VARIANT, doctor=False), progress=False).variant
    fid = Scorer("fashion-mnist", "domain", real_samples=300, cache_dir=tmp_path).score(generator, 300)["fid_domain"]
    assert result["untrained_fid_domain"] == round(fid, 1)
    assert list((tmp_path / "real-features").glob("*.pt"))  # the real statistics it built, cached


def test_time_to_quality_stops_at_the_first_evaluation_below_the_threshold():
    # An untrained generator scores far above 0 and far below 10^6: the first evaluation passes.
    reached = time_to_quality("gan", threshold=1e6, eval_every=5, samples=300)
    assert reached["steps"] == 5 and reached["seconds"] > 0 and len(reached["curve"]) == 1
    assert reached["untrained_fid_domain"] < 1e6
    never = time_to_quality("gan", threshold=1e-3, eval_every=5, samples=300, max_seconds=0.5)
    assert never["seconds"] is None and never["steps"] is None
    assert [point["step"] for point in never["curve"]] == [5 * (i + 1) for i in range(len(never["curve"]))]
    assert never["best_fid_domain"] == min(point["fid_domain"] for point in never["curve"])


@pytest.mark.e2e
def test_parallel_study_times_bench_run_with_its_workers():
    # One worker count only: each is a full `bench run` with its start-up, the slow part here.
    report = parallel_study("gan", workers=(1,), trials=1, steps=2)
    [row] = report["runs"]
    assert row["workers"] == 1 and row["speedup"] == 1.0 and row["threads_per_worker"] >= 1
    assert row["seconds"] > 0 and abs(row["trials_per_hour"] - 3600 / row["seconds"]) < 1


@pytest.mark.e2e
def test_bench_perf_writes_json(tmp_path):
    out = tmp_path / "perf.json"
    shown = subprocess.run([str(BENCH), "perf", "--variants", "gan", "--steps", "3", "--repeats", "1",
                            "--scoring-samples", "300", "--overhead-steps", "10", "--roofline", "gan", "--set",
                            "arch=lucic", "--dataset", "digits", "-o", str(out)], capture_output=True, text=True,
                           timeout=300)
    assert shown.returncode == 0, shown.stderr
    report = json.loads(out.read_text())
    assert [row["variant"] for row in report["training"]] == ["gan"]
    row = report["training"][0]
    assert 0 < row["plain_data_share"] < 1 and len(row["plain_repeats"]) == 1
    assert abs(row["speedup"] - row["images_per_second"] / row["plain_images_per_second"]) < 0.01
    assert report["scoring"]["samples"] == 300 and "torch" in report["meta"]
    assert set(report["overhead"]) == {"tracking", "doctor", "both"}
    hardware = report["hardware"]
    # compare_gan's network (1.65 GFLOP a step on 8x8 digits), not gan's default MLP (0.46)
    assert (hardware["variant"], hardware["hparams"]) == ("gan", {"arch": "lucic"}) and hardware["step_gflop"] > 1
    assert hardware["top_operators"] and "hardware limit (gan arch=lucic)" in shown.stdout
    assert abs(hardware["fraction_of_matmul"] - hardware["achieved_gflops"] / hardware["matmul_gflops"]) < 0.01
    for name, row in report["overhead"].items():
        assert (row["tracking"], row["doctor"]) == (name != "doctor", name != "tracking")
        assert len(row["repeats"]["on"]) == len(row["repeats"]["off"]) == 1
        assert abs(row["ratio"] - row["on_images_per_second"] / row["off_images_per_second"]) < 0.01
