"""Datasets a user brings, scored end to end: image folders and a torchvision root with no domain
classifier are scored with Inception; `bench features train` gives them one, and the domain
features and class-aware metrics appear."""

import pandas as pd
import pytest
from click.testing import CliRunner

from bench.cli import main
from tests.helpers import image_folder, mnist_root


@pytest.mark.e2e
def test_a_torchvision_root_is_scored_with_inception_until_it_has_a_classifier(tmp_path, monkeypatch):
    root = mnist_root(tmp_path / "data", train=256, test=24)  # 24 real images: Inception is slow on a CPU
    monkeypatch.chdir(tmp_path)
    train = ["train", "--variant", "dcgan", "--dataset", "mnist", "--data-root", str(root), "--device", "cpu",
             "--steps", "4", "--batch-size", "32", "--eval-every", "4", "--eval-samples", "16"]
    result = CliRunner().invoke(main, [*train, "--out", "run"])
    assert result.exit_code == 0, result.output
    scores = pd.read_csv(tmp_path / "run" / "scores.csv")
    assert scores["step"].tolist() == [4]
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
    # The Inception scorer this process built before the classifier existed is not reused without it.
    inception = CliRunner().invoke(main, ["eval", "--checkpoint", "run", "--samples", "16", "--device", "cpu",
                                          "--features", "inception"])
    assert inception.exit_code == 0 and "classes_covered" in inception.output, inception.output


@pytest.mark.e2e
def test_an_image_folder_gets_a_classifier_trains_sweeps_and_compares(tmp_path, monkeypatch, fashion_test):
    # 64 real images each: by class (labelled), and flat (one class) in RGB at 32x32.
    clothes = f"imagefolder:{image_folder(tmp_path / 'clothes', fashion_test, 64)}"
    in_rgb = f"imagefolder:{image_folder(tmp_path / 'rgb', fashion_test, 64, by_class=False, rgb_side=32)}"
    monkeypatch.chdir(tmp_path)
    classifier = CliRunner().invoke(main, ["features", "train", "--dataset", clothes, "--epochs", "2", "--device", "cpu"])
    assert classifier.exit_code == 0, classifier.output
    (weights,) = (tmp_path / "results" / "classifiers").glob("domain-imagefolder-clothes-*.pt")
    trained = CliRunner().invoke(main, ["train", "--variant", "dcgan", "--dataset", clothes, "--device", "cpu",
                                        "--steps", "4", "--batch-size", "32", "--eval-every", "4",
                                        "--eval-samples", "16", "--out", "dcgan-clothes"])
    assert trained.exit_code == 0, trained.output
    scores = pd.read_csv(tmp_path / "dcgan-clothes" / "scores.csv").iloc[-1]  # the domain extractor, now there is one
    assert {"fid_domain", "precision_domain", "coverage_domain", "classes_covered", "class_kl"} <= set(scores.index)

    # No classifier for the RGB folder: Inception, whose FID takes seconds on a CPU (an eigenvalue
    # problem in 2048 dimensions), once per trial.
    (tmp_path / "in_rgb.toml").write_text(SMALL_STUDY.format(dataset=in_rgb))
    swept = CliRunner().invoke(main, ["run", "--study", str(tmp_path / "in_rgb.toml"), "--variant", "dcgan,gan",
                                      "--device", "cpu"])
    assert swept.exit_code == 0, swept.output
    compared = CliRunner().invoke(main, ["compare", "--study", "in_rgb"])
    assert compared.exit_code == 0, compared.output
    assert "fid_inception" in compared.output and "dcgan" in compared.output and "gan " in compared.output
    board = CliRunner().invoke(main, ["leaderboard", "--study", "in_rgb"])
    assert board.exit_code == 0, board.output
    for name in ("fid", "kid", "precision", "recall", "density", "coverage"):
        assert f"{name}_inception" in board.output
    assert "classes_covered" not in board.output


SMALL_STUDY = """
dataset = "{dataset}"
objective = "fid_inception"
trials = 1
sampler = "random"
pruner = "none"

[budget]
steps = 4
batch_size = 32
eval_every = 4
eval_samples = 16

[space]
lr = {{ low = 1e-4, high = 1e-3, log = true }}
"""
