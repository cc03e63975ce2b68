"""Scoring: FID/KID on real Fashion-MNIST (the real-feature cache on digits), class-aware metrics,
the Inception extractor, and `bench eval`."""

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bench.cli import main
from bench.data import load_dataset, to_unit_range
from bench.errors import ConfigError, TrainingDiverged
from bench.engine import TrainConfig, Trainer, train
from bench.scores import KernelDistance, code_accuracy
from bench.classifier import WEIGHTS_DIR, file_sha256, weights_name
from bench.feature_cache import FeatureCache
from bench.features import PrecomputedFeatures
from bench.inception import InceptionFeatures, ShippedInception
from bench.scoring import Scorer, _scorer
from tests.helpers import write_study

BENCH = Path(sys.executable).with_name("bench")


def test_domain_classifier_card_matches_its_weights():
    shipped = WEIGHTS_DIR / weights_name("fashion-mnist")
    card = json.loads(shipped.with_suffix(".json").read_text())
    assert card["test_accuracy"] >= 0.91
    assert card["sha256"] == file_sha256(shipped)
    assert card["command"].startswith("bench features train --dataset fashion-mnist")


def test_train_split_against_test_split_is_far_below_noise(scorer, fashion_train):
    real = to_unit_range(fashion_train.images[:2000])
    noise = torch.rand(2000, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    floor, noisy = scorer.score_images(real), scorer.score_images(noise)
    assert floor["fid_domain"] < 0.01 * noisy["fid_domain"], (floor, noisy)
    assert abs(floor["kid_domain"]) < 0.05 * noisy["kid_domain"]
    assert floor["classes_covered"] == 10 and floor["class_kl"] < 0.01


def test_fid_rises_monotonically_with_added_noise(scorer, fashion_train):
    real = to_unit_range(fashion_train.images[:1000])
    generator = torch.Generator().manual_seed(0)
    fids = [scorer.score_images((real + sigma * torch.randn(real.shape, generator=generator)).clamp(-1, 1))["fid_domain"]
            for sigma in (0.0, 0.05, 0.1, 0.2, 0.4, 0.8)]
    assert fids == sorted(fids) and len(set(fids)) == len(fids), fids


def test_class_metrics_see_a_collapse_to_one_class(scorer, fashion_test):
    trousers = to_unit_range(fashion_test.images[fashion_test.labels == 1][:500])  # the least confusable class
    scores = scorer.score_images(trousers, labels=torch.full((500,), 1), codes=torch.zeros(500, dtype=torch.long))
    assert scores["classes_covered"] == 1
    assert scores["class_kl"] > 1.5  # log(10) is the KL of a one-class histogram from a uniform one
    assert scores["label_accuracy"] > 0.9 and scores["code_accuracy"] > 0.9
    # Real images of one class: all fidelity, little diversity, which FID alone cannot say.
    assert scores["precision_domain"] > 0.95 and scores["density_domain"] > 0.9
    assert scores["recall_domain"] < 0.3 and scores["coverage_domain"] < 0.2


def test_precision_recall_density_coverage_match_the_prdc_package(scorer, fashion_train):
    from prdc import compute_prdc

    # 1,500 generated samples: the distances are computed in two chunks (1,000 + 500).
    real = to_unit_range(fashion_train.images[:1500])
    images = (real + 0.2 * torch.randn(real.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    scores = scorer.score_images(images)
    expected = compute_prdc(scorer.real_features.numpy(), scorer.features(images).numpy(), nearest_k=5)
    assert {name: scores[f"{name}_domain"] for name in expected} == pytest.approx(expected, abs=1e-6)


def test_a_new_score_is_one_row_in_the_scores_table(scorer, fashion_train, monkeypatch, tmp_path):
    import bench.scores
    from bench.study import load_study

    spread = bench.scores.Score("spread", True, True, lambda evidence: evidence.fake.std(0).mean().item())
    monkeypatch.setattr(bench.scores, "SCORES", bench.scores.SCORES + (spread,))
    images = to_unit_range(fashion_train.images[:300])
    assert scorer.score_images(images)["spread_domain"] == pytest.approx(scorer.features(images).std(0).mean().item())
    study = tmp_path / "spread.toml"
    study.write_text(write_study(tmp_path, "tiny").read_text().replace('objective = "fid_domain"',
                                                                       'objective = "spread_domain"'))
    assert load_study(study).direction == "maximize"


def test_without_a_classifier_labels_and_codes_give_no_class_metrics():
    from torchmetrics.image.fid import FrechetInceptionDistance

    from bench.scores import Evidence, nearest_neighbour_radii, score_all

    generator = torch.Generator().manual_seed(0)
    real, fake = torch.randn(64, 8, generator=generator), torch.randn(32, 8, generator=generator)
    fid = FrechetInceptionDistance(PrecomputedFeatures(8), reset_real_features=False)
    kid = KernelDistance(real, subset_size=16)
    fid.update(real, real=True)
    # A conditional InfoGAN-like generator scored on a dataset with no domain classifier.
    evidence = Evidence(real, nearest_neighbour_radii(real), fake, fid, kid, real_classes=None, predicted=None,
                        labels=torch.arange(32) % 10, codes=torch.zeros(32, dtype=torch.long))
    scores = score_all(evidence, "inception")
    assert set(scores) == {f"{name}_inception" for name in ("fid", "kid", "precision", "recall", "density", "coverage")}
    assert all(math.isfinite(value) for value in scores.values())


@pytest.mark.parametrize("generated", [40, 100])
def test_kid_is_torchmetrics_unbiased_mmd_averaged_over_the_same_subsets(generated):
    from torchmetrics.image.kid import poly_mmd

    generator = torch.Generator().manual_seed(1)
    real = torch.randn(300, 16, generator=generator)
    fake = torch.randn(generated, 16, generator=generator) * 1.3 + 0.2
    kid = KernelDistance(real, subset_size=40, subsets=7)
    real_subsets, _ = kid.real_subsets(40)
    fake_subsets = kid.fake_subsets(generated, 40)
    assert len(set(map(tuple, real_subsets.tolist()))) == 7  # distinct subsets, not one drawn seven times
    expected = torch.stack([poly_mmd(real[r], fake[f]) for r, f in zip(real_subsets, fake_subsets)]).mean()
    assert kid(fake) == pytest.approx(expected.item(), rel=1e-4)
    assert kid(fake) == kid(fake)  # the same samples, the same score: subsets are drawn from a seed
    assert kid(real[:generated]) < 0.1 * kid(fake)


def test_kid_equals_torchmetrics_kernel_inception_distance_where_its_subsets_are_the_whole_sets():
    from torchmetrics.image.kid import KernelInceptionDistance

    generator = torch.Generator().manual_seed(2)
    real, fake = torch.randn(50, 16, generator=generator), torch.randn(50, 16, generator=generator) + 0.3
    metric = KernelInceptionDistance(PrecomputedFeatures(16), subset_size=50, subsets=3)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    assert KernelDistance(real, subset_size=50, subsets=3)(fake) == pytest.approx(metric.compute()[0].item(), rel=1e-4)


def test_spot_radii_are_the_nearest_neighbour_radii_of_those_rows(scorer):
    from bench.scores import nearest_neighbour_radii, spot_radii

    rows = torch.randperm(10000, generator=torch.Generator().manual_seed(0))[:50]
    assert torch.allclose(spot_radii(scorer.real_features, rows), scorer.real_radii[rows], rtol=1e-9, atol=1e-9)
    # Duplicated rows (an image folder holding copies): radii of zero, found as such.
    copies = torch.cat([scorer.real_features[:300], scorer.real_features[:3].repeat(5, 1)])  # six of each
    rows = torch.tensor([0, 1, 2, 150, 299, 300, 313])
    expected = nearest_neighbour_radii(copies)[rows]
    assert torch.allclose(spot_radii(copies, rows), expected, rtol=1e-9, atol=1e-6)
    assert (expected[[0, 1, 2]] < 1e-6).all()


def test_inception_score_equals_torchmetrics_on_the_same_logits():
    from torchmetrics.image.inception import InceptionScore

    from bench.scores import inception_score

    logits = torch.randn(1000, 1008, generator=torch.Generator().manual_seed(0)) * 3
    metric = InceptionScore(feature=torch.nn.Identity(), splits=10)
    metric.update(logits)
    torch.manual_seed(1)
    expected = metric.compute()  # it shuffles the samples first: shuffle ours the same way
    torch.manual_seed(1)
    ours = inception_score(logits[torch.randperm(len(logits))])
    assert ours == pytest.approx((expected[0].item(), expected[1].item()), abs=1e-6)
    assert inception_score(torch.zeros(100, 1008))[0] == pytest.approx(1.0)  # one class distribution for all: 1


def shipped_stem() -> torch.Tensor:
    return next(ShippedInception().net.net.layers.children()).weight.detach()


def classification_file(path: Path, stem: torch.Tensor | None = None, **changes) -> Path:
    """A weights file laid out as torch-fidelity's: the network's first convolution and its 1008 classes."""
    state = {"Conv2d_1a_3x3.conv.weight": shipped_stem() if stem is None else stem,
             "fc.weight": torch.randn(1008, 2048, generator=torch.Generator().manual_seed(0)) / 50,
             "fc.bias": torch.zeros(1008), **changes}
    torch.save({key: value for key, value in state.items() if value is not None}, path)
    return path


def test_inception_classification_weights_are_checked_before_use(tmp_path, monkeypatch):
    from bench.inception import classifier_weight, classifier_weights_path, inception_classes

    stem = shipped_stem()
    good = classification_file(tmp_path / "good.pth", stem)
    assert torch.equal(classifier_weight(good, stem), torch.load(good, weights_only=True)["fc.weight"])
    monkeypatch.setenv("BENCH_INCEPTION_WEIGHTS", str(good))
    assert classifier_weights_path() == good
    monkeypatch.delenv("BENCH_INCEPTION_WEIGHTS")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))  # torch-fidelity's copy, where it keeps it
    assert classifier_weights_path() is None
    kept = tmp_path / "hub" / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(good.read_bytes())
    assert classifier_weights_path() == kept
    monkeypatch.setenv("BENCH_INCEPTION_WEIGHTS", "none")  # the way to score without it
    assert classifier_weights_path() is None
    monkeypatch.delenv("BENCH_INCEPTION_WEIGHTS")
    # A file found there that fails a check leaves the Inception Score out, with a warning; one named, stops.
    kept.write_bytes(classification_file(tmp_path / "other.pth", stem + 1).read_bytes())
    with pytest.warns(UserWarning, match="another Inception network.*scoring without inception_score"):
        assert inception_classes(stem) is None
    monkeypatch.setenv("BENCH_INCEPTION_WEIGHTS", str(kept))
    with pytest.raises(ConfigError, match="another Inception network"):
        inception_classes(stem)
    pickled = tmp_path / "pickled.pth"
    torch.save({"fc.weight": Path("x")}, pickled)  # an object other than tensors: never unpickled
    for path, problem in [(classification_file(tmp_path / "other.pth", stem + 1), "another Inception network"),
                          (classification_file(tmp_path / "no-fc.pth", stem, **{"fc.weight": None}), "no fc.weight"),
                          (classification_file(tmp_path / "nan.pth", stem, **{"fc.weight": torch.full((1008, 2048),
                                                                                             math.nan)}),
                           "not finite"),
                          (pickled, "refused unread"), (tmp_path / "missing.pth", "missing.pth")]:
        with pytest.raises(ConfigError, match=problem) as error:
            classifier_weight(path, stem)
        assert "BENCH_INCEPTION_WEIGHTS" in str(error.value) or "missing" in problem


def test_code_accuracy_uses_the_best_one_to_one_matching():
    codes = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    classes = torch.tensor([7, 7, 3, 3, 5, 5, 1])  # code 0 -> 7, 1 -> 3, 2 -> 5; one miss
    assert code_accuracy(codes, classes, 10) == pytest.approx(6 / 7)


CACHE_PROBE = """
import sys, warnings
from bench.scoring import Scorer
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    scorer = Scorer("digits", "domain", real_samples=300, cache_dir=sys.argv[1])
print(scorer.real_features_source, sum("real-feature cache" in str(w.message) for w in caught))
"""


def probe_cache(cache_dir: Path) -> list[str]:
    result = subprocess.run([sys.executable, "-c", CACHE_PROBE, str(cache_dir)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


@pytest.mark.e2e
def test_real_features_are_computed_once_and_shared_across_processes(tmp_path):
    assert probe_cache(tmp_path) == ["computed", "0"]
    assert probe_cache(tmp_path) == ["cache", "0"]
    (cache_file,) = (tmp_path / "real-features").glob("*-float32.pt")
    assert "digits-test-300-domain" in cache_file.name
    assert cache_file.with_name(f"{cache_file.stem}-radii-k5.pt").exists()  # the real k-NN radii, beside them
    # A damaged, foreign or mismatched entry is rebuilt with one warning: tests/test_feature_cache.py, in-process.


@pytest.mark.e2e  # the Inception network on a CPU: tens of seconds
def test_inception_features_from_28x28_grayscale_give_a_finite_fid(tmp_path, fashion_train, monkeypatch):
    # With classification weights for the shipped network (its own first convolution; random classes): the
    # Inception Score comes from the same pass, between 1 and the number of classes.
    monkeypatch.setenv("BENCH_INCEPTION_WEIGHTS", str(classification_file(tmp_path / "inception.pth")))
    # 16 images a side, two of the scorer's CPU batches of 8: Inception takes ~0.1 s an image on a CPU core.
    scorer = Scorer("fashion-mnist", "inception", real_samples=16, cache_dir=tmp_path)
    extractor = scorer.extractor
    assert isinstance(extractor, InceptionFeatures)
    with torch.no_grad():
        features = extractor(to_unit_range(fashion_train.images[:4]))
    assert features.shape == (4, 2048) and torch.isfinite(features).all()
    scores = scorer.score_images(to_unit_range(fashion_train.images[:16]))
    assert set(scores) >= {"fid_inception", "kid_inception", "inception_score", "inception_score_std"}
    assert torch.isfinite(torch.tensor(scores["fid_inception"])) and scores["fid_inception"] > 0
    # From the features of the same pass: the scorer's draws, times the classification weights.
    from bench.scores import inception_score
    logits = scorer.features(to_unit_range(fashion_train.images[:16])) @ extractor.classes.T
    assert (scores["inception_score"], scores["inception_score_std"]) == pytest.approx(inception_score(logits))
    # The cached entry passes its checks (non-negative features, rows recomputed, radii re-measured).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        features, radii, source = FeatureCache(tmp_path, "fashion-mnist", extractor, scorer.features,
                                               scorer.device).load(load_dataset("fashion-mnist", "test"), 16)
    assert source == "cache" and torch.equal(features, scorer.real_features) and features.min() >= 0


@pytest.mark.e2e  # the Inception network on a CPU: tens of seconds
def test_rebuilt_inception_gives_the_shipped_networks_features_and_fid(fashion_train):
    from torchmetrics.image.fid import FrechetInceptionDistance

    gray = to_unit_range(fashion_train.images[:32])
    rgb = gray[:24].reshape(8, 3, 28, 28)  # three different garments as the colour channels
    shipped_net, rebuilt_net = ShippedInception(), InceptionFeatures()  # each built once: seconds apiece on a CPU
    features = {}
    with torch.no_grad():
        for name, images in (("gray", gray), ("rgb", rgb)):
            shipped, rebuilt = features[name] = shipped_net(images), rebuilt_net(images)
            difference = (rebuilt - shipped).norm(dim=1) / shipped.norm(dim=1)
            assert difference.max() < 1e-4, images.shape
    fids = []
    for extracted in features["gray"]:  # the FID of 16 garments against 16 others, from each network's features
        fid = FrechetInceptionDistance(PrecomputedFeatures(2048))
        fid.update(extracted[:16], real=True)
        fid.update(extracted[16:], real=False)
        fids.append(float(fid.compute()))
    assert fids[0] > 1 and abs(fids[0] - fids[1]) < 0.01


def test_engine_scores_every_eval_every_steps_and_bench_eval_scores_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    _scorer.cache_clear()
    # Both on the CPU, whose `bench eval` defaults to the domain features (on a GPU: Inception).
    config = TrainConfig("dcgan", steps=20, eval_every=10, eval_samples=200, real_samples=500, device="cpu")
    result = train(config, out, progress=False)
    assert list(result.scores["step"]) == [10, 20]
    assert {"fid_domain", "kid_domain", "classes_covered", "class_kl"} <= set(result.scores.columns)
    assert (out / "scores.csv").exists()
    # In-process (a `bench` process would add seconds of start-up and check nothing more).
    shown = CliRunner().invoke(main, ["eval", "--checkpoint", str(out), "--samples", "200", "--device", "cpu"])
    assert shown.exit_code == 0, shown.output
    assert "dcgan on fashion-mnist, step 20, 200 samples, real statistics: test split, 500 images" in shown.stdout
    fid_line = next(line for line in shown.stdout.splitlines() if line.strip().startswith("fid_domain"))
    # same generator, same sampling seed, same real statistics (the run's 500 images): the same number as in training
    assert float(fid_line.split()[1]) == pytest.approx(result.scores["fid_domain"].iloc[-1], rel=1e-4)
    # One scorer per process (a study worker's trials share it): built at the first evaluation only.
    assert _scorer.cache_info().misses == 1


def test_scoring_during_training_leaves_the_training_unchanged():
    # On the CPU: two runs compared bit for bit, and the scores against a CPU Scorer's exactly.
    plain = Trainer(TrainConfig("dcgan", steps=20, seed=0, device="cpu"), progress=False)
    plain.run()
    scored = Trainer(TrainConfig("dcgan", steps=20, seed=0, eval_every=10, eval_samples=200, device="cpu"),
                     progress=False)
    scored.run()
    assert [scores["step"] for scores in scored.evaluations] == [10, 20]
    scored_weights = scored.variant.state_dict()
    for name, weight in plain.variant.state_dict().items():
        assert torch.equal(weight, scored_weights[name]), name
    # the scores themselves, KID's random subsets included, repeat exactly
    assert Scorer("fashion-mnist").score(scored.variant, 200, seed=0) == {
        key: value for key, value in scored.evaluations[-1].items() if key != "step"}


def test_bench_eval_errors_are_one_line(tmp_path):
    missing = subprocess.run([str(BENCH), "eval", "--checkpoint", str(tmp_path / "none")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and missing.stderr.startswith("Error: no checkpoint at")
    assert len(missing.stderr.strip().splitlines()) == 1


def test_non_finite_images_are_refused_before_the_matrix_square_root(scorer):
    images = torch.zeros(8, 1, 28, 28)
    images[3, 0, 5, 5] = float("nan")
    with pytest.raises(TrainingDiverged, match="not finite"):
        scorer.score_images(images)


def test_a_corrupt_user_classifier_is_one_error_naming_the_file_and_the_fix(tmp_path, monkeypatch):
    from bench.errors import ConfigError
    from bench.classifier import load_domain_classifier

    monkeypatch.chdir(tmp_path)
    (tmp_path / "results" / "classifiers").mkdir(parents=True)
    path = tmp_path / "results" / "classifiers" / "domain-digits.pt"  # before the shipped one
    path.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(ConfigError, match="domain classifier results/classifiers/domain-digits.pt is a truncated or "
                                          "corrupt torch file; delete it, or retrain it with 'bench features train "
                                          "--dataset digits'"):
        load_domain_classifier("digits")
    torch.save({"model": {}, "image_shape": (1, 8, 8)}, path)
    with pytest.raises(ConfigError, match="domain-digits.pt is not one `bench features train` wrote .*delete it"):
        load_domain_classifier("digits")
