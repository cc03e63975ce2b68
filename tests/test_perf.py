"""`bench perf` reports what it measured (the figures themselves are for the closing note,
never asserted: the machine is shared and noisy)."""

import json
import subprocess
import sys
from pathlib import Path

from bench.perf import scoring_time, training_throughput

BENCH = Path(sys.executable).with_name("bench")


def test_training_throughput_reports_medians_and_generator_steps():
    row = training_throughput("wgan", steps=3, repeats=3)
    assert row["images_per_second"] > 0 and len(row["repeats"]) == 3
    assert sorted(row["repeats"])[1] == row["images_per_second"]
    # a WGAN step consumes n_critic = 5 real batches
    assert abs(row["g_steps_per_second"] * 64 * 5 - row["images_per_second"]) < 0.05 * row["images_per_second"]


def test_scoring_time_reports_seconds_for_the_requested_samples():
    result = scoring_time(samples=300, repeats=1)
    assert result["samples"] == 300 and result["seconds"] > 0


def test_bench_perf_writes_json(tmp_path):
    out = tmp_path / "perf.json"
    shown = subprocess.run([str(BENCH), "perf", "--variants", "gan", "--steps", "3", "--repeats", "1",
                            "--scoring-samples", "300", "--overhead-steps", "10", "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    report = json.loads(out.read_text())
    assert [row["variant"] for row in report["training"]] == ["gan"]
    row = report["training"][0]
    assert 0 < row["plain_data_share"] < 1 and len(row["plain_repeats"]) == 1
    assert abs(row["speedup"] - row["images_per_second"] / row["plain_images_per_second"]) < 0.01
    assert report["scoring"]["samples"] == 300 and "torch" in report["meta"]
    assert set(report["overhead"]) == {"tracking", "doctor", "both"}
    for name, row in report["overhead"].items():
        assert (row["tracking"], row["doctor"]) == (name != "doctor", name != "tracking")
        assert len(row["repeats"]["on"]) == len(row["repeats"]["off"]) == 1
        assert abs(row["ratio"] - row["on_images_per_second"] / row["off_images_per_second"]) < 0.01
