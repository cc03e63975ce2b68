"""Datasets a user brings, scored end to end: a torchvision root with no domain classifier is
scored with Inception; `bench features train` gives it one, and the class-aware metrics appear."""

import pandas as pd
import pytest
from click.testing import CliRunner

from bench.cli import main
from tests.helpers import mnist_root


@pytest.mark.e2e
def test_a_torchvision_root_is_scored_with_inception_until_it_has_a_classifier(tmp_path, monkeypatch):
    root = mnist_root(tmp_path / "data", train=256, test=24)  # 24 real images: Inception is slow on a CPU
    monkeypatch.chdir(tmp_path)
    train = ["train", "--variant", "dcgan", "--dataset", "mnist", "--data-root", str(root), "--device", "cpu",
             "--steps", "4", "--batch-size", "32", "--eval-every", "2", "--eval-samples", "16"]
    result = CliRunner().invoke(main, [*train, "--out", "run"])
    assert result.exit_code == 0, result.output
    scores = pd.read_csv(tmp_path / "run" / "scores.csv")
    assert scores["step"].tolist() == [2, 4]
    assert {"fid_inception", "kid_inception", "precision_inception", "coverage_inception"} <= set(scores.columns)
    assert "classes_covered" not in scores and not any(column.endswith("_domain") for column in scores)

    refused = CliRunner().invoke(main, [*train, "--features", "domain", "--out", "refused"])
    assert refused.exit_code == 2 and "Traceback" not in refused.output, refused.output
    assert "bench features train --dataset mnist --data-root DIR" in refused.output
    assert not (tmp_path / "refused").exists()

    trained = CliRunner().invoke(main, ["features", "train", "--dataset", "mnist", "--data-root", str(root),
                                        "--epochs", "1", "--device", "cpu"])
    assert trained.exit_code == 0, trained.output
    assert (tmp_path / "results" / "classifiers" / "domain-mnist.pt").exists()
    assert "--data-root" in (tmp_path / "results" / "classifiers" / "domain-mnist.json").read_text()
    evaluated = CliRunner().invoke(main, ["eval", "--checkpoint", "run", "--samples", "16", "--device", "cpu"])
    assert evaluated.exit_code == 0, evaluated.output
    assert "fid_domain" in evaluated.output and "classes_covered" in evaluated.output
