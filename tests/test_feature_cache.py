"""The real-feature cache and the domain classifier's weights, read as untrusted files: a damaged or
edited cache entry is rebuilt with one warning and the scores are the clean ones; a folder or a
special file where an entry belongs, a FIFO as the classifier, or a classifier with NaN weights is
one `Error:` line, in seconds, without blocking. On digits (360 test images: rebuilding an entry
takes milliseconds)."""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import signal
import tempfile
import time
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.cli import main
from bench.data import load_dataset, seeded_draw, to_unit_range
from bench.engine import TrainConfig, train
from bench.errors import ConfigError, TrainingDiverged
from bench.readers import UnreadableFile
from bench.classifier import WEIGHTS_DIR, DomainClassifier, load_domain_classifier, weights_name
from bench.feature_cache import FeatureCache, tensor_sha256
from bench.scoring import Scorer, _scorer

SAMPLES = 360  # digits' whole test split


@contextlib.contextmanager
def deadline(seconds: int):
    """Fails the test instead of hanging it: SIGALRM interrupts a blocking open() or read()."""
    def expired(signum, frame):
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def recorded():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def cache_warnings(caught) -> list[str]:
    return [str(warning.message) for warning in caught if "real-feature cache" in str(warning.message)]


@pytest.fixture(scope="module")
def digits_test():
    return load_dataset("digits", "test")


@pytest.fixture(scope="module")
def clean(tmp_path_factory, digits_test):
    """A digits scorer with a freshly built cache, the cache's folder, and the scores of fixed images."""
    folder = tmp_path_factory.mktemp("clean-cache")
    scorer = Scorer("digits", "domain", cache_dir=folder)
    assert scorer.real_features_source == "computed"
    return scorer, folder, scorer.score_images(noisy_digits(digits_test))


def noisy_digits(real):
    """Real digits with noise: scores that depend on every real statistic."""
    images = to_unit_range(real.images[:200])
    return (images + 0.3 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)


def cache_of(scorer: Scorer, folder: Path) -> FeatureCache:
    return FeatureCache(folder, "digits", scorer.extractor, scorer.features, scorer.device)


def entries(scorer: Scorer, folder: Path, real) -> tuple[Path, Path]:
    return cache_of(scorer, folder).paths(real, SAMPLES)


def copy_of(clean_folder: Path, folder: Path) -> Path:
    shutil.copytree(clean_folder, folder / "cache")
    return folder / "cache"


def rewrite(path: Path, change, *, reseal: bool) -> None:
    """Changes an entry's tensor with ``change``; with ``reseal``, its checksum is updated to match
    (so that the value checks, not the checksum, must catch the change)."""
    state = torch.load(path, weights_only=True)
    field = "radii" if "radii" in state else "features"
    state[field] = change(state[field])
    if reseal:
        state["sha256"] = tensor_sha256(state[field])
    torch.save(state, path)


def nan_at(tensor, index=(17, 3)):
    tensor = tensor.clone()
    tensor[index] = float("nan")
    return tensor


def shifted_row(tensor, row=5):  # a row the spot checks do not look at
    tensor = tensor.clone()
    tensor[row] += 1
    return tensor


# (name, which entry, its change, resealed, a fragment of the one warning line)
DAMAGE = [
    ("wrong width", 0, lambda t: t[:, :64].contiguous(), True, "holds features of shape (360, 64), not (360, 128)"),
    ("wrong dtype", 0, lambda t: t.double(), True, "holds features of dtype float64, not float32"),
    ("half precision", 0, lambda t: t.half(), True, "holds features of dtype float16, not float32"),
    ("too few rows", 0, lambda t: t[:-1].clone(), True, "holds features of shape (359, 128), not (360, 128)"),
    ("features x1e30", 0, lambda t: t * 1e30, False, "do not match their checksum"),
    ("features x1e30 resealed", 0, lambda t: t * 1e30, True, "not the domain extractor's for their images"),
    ("features x2 resealed", 0, lambda t: t * 2, True, "not the domain extractor's for their images (row "),
    ("a NaN feature", 0, nan_at, True, "holds non-finite features (NaN/Inf)"),
    ("negative features", 0, lambda t: t - 1, True, "holds negative features"),
    ("one row edited", 0, shifted_row, False, "do not match their checksum"),
    ("radii of wrong shape", 1, lambda t: t[:, None].clone(), True, "holds radii of shape (360, 1), not (360,)"),
    ("radii too few", 1, lambda t: t[:100].clone(), True, "holds radii of shape (100,), not (360,)"),
    ("radii as float32", 1, lambda t: t.float(), True, "holds radii of dtype float32, not float64"),
    ("negative radii", 1, lambda t: -t, True, "holds negative radii"),
    ("negative radii, checksum as written", 1, lambda t: -t, False, "holds negative radii"),
    ("radii x1.5 resealed", 1, lambda t: t * 1.5, True, "not the cached features' 5-NN distances"),
    ("an infinite radius", 1, lambda t: torch.where(torch.arange(len(t)) == 9, torch.inf, t), True,
     "holds non-finite radii"),
]


SCORED = {"wrong width", "wrong dtype", "radii of wrong shape", "features x1e30", "features x1e30 resealed",
          "negative radii"}
"""The cases scored end to end (a Scorer each); the others compare the tensors the Scorer is built from."""


def test_fewer_real_samples_than_the_split_holds_are_a_seeded_draw_and_cached_as_one(tmp_path):
    """Not the first images: a folder read class by class would give its first classes only."""
    real = load_dataset("digits", "test")
    scorer = Scorer("digits", "domain", real_samples=20, cache_dir=tmp_path)
    chosen = seeded_draw(len(real), 20)
    assert torch.allclose(scorer.real_features, scorer.features(to_unit_range(real.images[chosen])), atol=1e-5)
    assert not torch.allclose(scorer.real_features, scorer.features(to_unit_range(real.images[:20])), atol=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the drawn entry passes the cache's checks as it is
        again = Scorer("digits", "domain", real_samples=20, cache_dir=tmp_path)
    assert again.real_features_source == "cache" and torch.equal(again.real_features, scorer.real_features)


@pytest.mark.parametrize("name, which, change, reseal, fragment", DAMAGE, ids=[case[0] for case in DAMAGE])
def test_a_damaged_entry_is_rebuilt_with_one_warning_and_the_scores_are_the_clean_ones(
        name, which, change, reseal, fragment, clean, digits_test, tmp_path):
    scorer, clean_folder, clean_scores = clean
    folder = copy_of(clean_folder, tmp_path)
    path = entries(scorer, folder, digits_test)[which]
    rewrite(path, change, reseal=reseal)
    with recorded() as caught:
        if name in SCORED:
            rebuilt = Scorer("digits", "domain", cache_dir=folder)
            features, radii, source = rebuilt.real_features, rebuilt.real_radii, rebuilt.real_features_source
        else:
            features, radii, source = cache_of(scorer, folder).load(digits_test, SAMPLES)
    (line,) = cache_warnings(caught)
    assert line.startswith(f"real-feature cache {path} ") and fragment in line and line.endswith("; rebuilding it")
    assert "\n" not in line
    # Damaged features are recomputed (their radii with them); damaged radii only.
    assert source == ("computed" if which == 0 else "cache")
    assert torch.equal(features, scorer.real_features) and torch.equal(radii, scorer.real_radii)
    if name in SCORED:
        assert rebuilt.score_images(noisy_digits(digits_test)) == pytest.approx(clean_scores, rel=1e-6)
    # The rebuilt entry is used as it is from then on.
    with recorded() as caught:
        assert cache_of(scorer, folder).load(digits_test, SAMPLES)[2] == "cache"
    assert not cache_warnings(caught)


def test_the_damaged_entry_gives_a_different_score_without_the_checks(clean, digits_test, monkeypatch, tmp_path):
    """What the checks prevent: negative radii, read without them, silently change the scores."""
    scorer, clean_folder, clean_scores = clean
    folder = copy_of(clean_folder, tmp_path)
    rewrite(entries(scorer, folder, digits_test)[1], lambda t: -t, reseal=True)
    monkeypatch.setattr(FeatureCache, "_checked",
                        lambda self, path, key, field, *rest: (torch.load(path, weights_only=True)[field], None))
    unchecked = Scorer("digits", "domain", cache_dir=folder)
    damaged = unchecked.score_images(noisy_digits(digits_test))
    assert damaged["precision_domain"] == 0 != clean_scores["precision_domain"]


@pytest.mark.parametrize("content, fragment", [
    (b"", "is empty"),
    (b"not a torch file", "real-feature cache"),
    ("truncated", "is a truncated or corrupt torch file"),
    (pickle.dumps(print), "holds Python objects other than tensors"),
    (b"\0" * (2 ** 20 + 200_000), "bytes, more than features of shape (360, 128) take"),
], ids=["empty", "junk", "truncated", "a pickled function", "oversized"])
def test_an_unreadable_entry_is_rebuilt_with_one_warning(content, fragment, clean, digits_test, tmp_path):
    scorer, clean_folder, _ = clean
    folder = copy_of(clean_folder, tmp_path)
    path = entries(scorer, folder, digits_test)[0]
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2] if content == "truncated" else content)
    with recorded() as caught:
        features, radii, source = cache_of(scorer, folder).load(digits_test, SAMPLES)
    (line,) = cache_warnings(caught)
    assert line.startswith(f"real-feature cache {path} ") and fragment in line, line
    assert source == "computed" and torch.equal(features, scorer.real_features)


@pytest.mark.parametrize("make, fragment", [
    (lambda state: [1, 2, 3], "is not a cache entry"),
    (lambda state: {**state, "key": torch.zeros(3)}, "was computed for other images"),
    (lambda state: {**state, "key": {}}, "was computed for other images"),
    (lambda state: {**state, "key": {**state["key"], "samples": 360.0}}, "was computed for other images"),
    (lambda state: {"key": state["key"], "features": state["features"]}, "was written by an older ganbench"),
    (lambda state: {**state, "features": state["features"].tolist()}, "holds no features tensor"),
], ids=["a list", "a tensor as key", "an empty key", "a float sample count", "no checksum", "a list of rows"])
def test_an_entry_of_another_structure_is_rebuilt(make, fragment, clean, digits_test, tmp_path):
    scorer, clean_folder, _ = clean
    folder = copy_of(clean_folder, tmp_path)
    path = entries(scorer, folder, digits_test)[0]
    torch.save(make(torch.load(path, weights_only=True)), path)
    with recorded() as caught:
        features, _, source = cache_of(scorer, folder).load(digits_test, SAMPLES)
    (line,) = cache_warnings(caught)
    assert fragment in line and source == "computed" and torch.equal(features, scorer.real_features)


def test_an_entry_of_another_classifier_is_rebuilt(clean, digits_test, tmp_path):
    scorer, clean_folder, _ = clean
    folder = copy_of(clean_folder, tmp_path)
    path = entries(scorer, folder, digits_test)[0]
    state = torch.load(path, weights_only=True)
    state["key"]["checksum"] = "an older classifier"
    torch.save(state, path)
    with recorded() as caught:
        _, _, source = cache_of(scorer, folder).load(digits_test, SAMPLES)
    assert source == "computed" and "was computed for other images, another extractor" in cache_warnings(caught)[0]


@pytest.mark.parametrize("which", [0, 1], ids=["features", "radii"])
@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_a_folder_or_fifo_at_an_entry_is_refused_in_one_line_before_any_work(kind, which, clean, digits_test,
                                                                             tmp_path):
    scorer, _, _ = clean
    folder = tmp_path / "cache"
    path = entries(scorer, folder, digits_test)[which]
    path.parent.mkdir(parents=True)
    if kind == "folder":
        (path / "inside").mkdir(parents=True)
    else:
        os.mkfifo(path)
    started = time.perf_counter()
    with deadline(30), pytest.raises(UnreadableFile) as refused:
        cache_of(scorer, folder).load(digits_test, SAMPLES)
    message = str(refused.value)
    assert message.startswith(f"the real-feature cache entry {path} is {'a folder' if kind == 'folder' else 'a FIFO'}")
    assert f"remove it (rm -r '{path}')" in message and "\n" not in message
    assert sorted(path.parent.iterdir()) == [path], "features were computed before the refusal"
    assert time.perf_counter() - started < 5


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A one-step GAN on digits: a checkpoint for `bench eval`."""
    out = tmp_path_factory.mktemp("digits-run") / "run"
    train(TrainConfig("gan", dataset="digits", steps=1, device="cpu", doctor=False), out, progress=False)
    return out


def write_nan_classifier(path: Path) -> None:
    state = torch.load(WEIGHTS_DIR / weights_name("digits"), weights_only=True)
    state["model"]["trunk.0.weight"][0, 0, 1, 1] = float("nan")
    torch.save(state, path)


# `bench eval` with a cache or classifier that cannot be used: (name, what to put where, fragment)
CLI_CASES = [
    ("a folder at the cache entry", "cache", lambda path: (path / "x").mkdir(parents=True),
     "is a folder, not a file; remove it (rm -r"),
    ("a FIFO at the cache entry", "cache", os.mkfifo, "is a FIFO, refused unopened; remove it (rm -r"),
    ("a FIFO as the classifier", "classifier", os.mkfifo,
     "the domain classifier results/classifiers/domain-digits.pt is a FIFO, refused unopened; delete it, or "
     "retrain it with 'bench features train --dataset digits'"),
    ("a classifier with NaN weights", "classifier", write_nan_classifier,
     "the domain classifier results/classifiers/domain-digits.pt holds NaN weights (trunk.0.weight); retrain it "
     "with 'bench features train --dataset digits'"),
]


@pytest.mark.parametrize("name, where, make, fragment", CLI_CASES, ids=[case[0] for case in CLI_CASES])
def test_bench_eval_refuses_an_unusable_cache_or_classifier_in_one_line(name, where, make, fragment, clean,
                                                                        digits_test, digits_run, tmp_path,
                                                                        monkeypatch):
    scorer, _, _ = clean
    monkeypatch.chdir(tmp_path)
    if where == "cache":
        path = entries(scorer, Path("results/cache"), digits_test)[0]
    else:
        path = Path("results/classifiers") / weights_name("digits")
    path.parent.mkdir(parents=True, exist_ok=True)
    make(path)
    _scorer.cache_clear()
    started = time.perf_counter()
    with deadline(60):
        result = CliRunner().invoke(main, ["eval", "--checkpoint", str(digits_run), "--samples", "50",
                                           "--features", "domain", "--device", "cpu"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and fragment in errors[0], result.stderr
    assert time.perf_counter() - started < 10


def test_bench_eval_scores_through_a_rebuilt_cache(clean, digits_test, digits_run, tmp_path, monkeypatch):
    """Negative radii in the cache `bench eval` reads: rebuilt, and the score is the clean cache's."""
    scorer, clean_folder, _ = clean
    monkeypatch.chdir(tmp_path)
    args = ["eval", "--checkpoint", str(digits_run), "--samples", "100", "--features", "domain", "--device", "cpu"]
    shutil.copytree(clean_folder, "results/cache")
    _scorer.cache_clear()
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0 and "(cache)" in first.stdout, first.output
    rewrite(entries(scorer, Path("results/cache"), digits_test)[1], lambda t: -t, reseal=True)
    _scorer.cache_clear()
    second = CliRunner().invoke(main, args)
    assert second.exit_code == 0, second.output
    (line,) = [line for line in second.stderr.splitlines() if "real-feature cache" in line]
    assert line.startswith("warning: real-feature cache results/cache/real-features/digits-test-360-domain-")
    assert line.endswith("holds negative radii; rebuilding it")
    assert second.stdout == first.stdout


# -- the classifier's weights -----------------------------------------------------------------------

def shipped_digits() -> dict:
    return torch.load(WEIGHTS_DIR / weights_name("digits"), weights_only=True)


def with_weight(name, value):
    def change(state):
        state["model"][name] = value(state["model"][name])
        return state
    return change


def with_entry(key, value):
    def change(state):
        state[key] = value
        return state
    return change


def without_weight(name):
    def change(state):
        del state["model"][name]
        return state
    return change


def infinite_at(tensor):
    tensor = tensor.clone()
    tensor.view(-1)[7] = float("inf")
    return tensor


CLASSIFIER_DAMAGE = [
    ("NaN weights", with_weight("classify.1.weight", lambda t: nan_at(t, (3, 17))), "holds NaN weights (classify.1.weight); retrain it"),
    ("an infinite weight", with_weight("trunk.9.weight", infinite_at), "holds infinite weights (trunk.9.weight)"),
    ("a NaN running mean", with_weight("trunk.1.running_mean", lambda t: t * float("nan")),
     "holds NaN weights (trunk.1.running_mean)"),
    ("negative variances", with_weight("trunk.5.running_var", lambda t: -t),
     "holds negative batch-norm variances (trunk.5.running_var)"),
    ("a weight of another shape", with_weight("trunk.0.weight", lambda t: t[:16].clone()),
     "(trunk.0.weight is torch.float32 (16, 1, 3, 3), not torch.float32 (32, 1, 3, 3))"),
    ("a weight in float64", with_weight("trunk.0.weight", lambda t: t.double()), "is torch.float64"),
    ("a missing weight", without_weight("trunk.9.bias"), "lacks trunk.9.bias"),
    ("an extra weight", lambda state: state["model"].update(extra=torch.zeros(3)) or state, "holds 'extra'"),
    ("a number as a weight", with_weight("trunk.9.bias", lambda t: 3.0), "(trunk.9.bias is not a tensor)"),
    ("an image shape of two sides", with_entry("image_shape", (8, 8)), "image_shape (8, 8) is not channels"),
    ("a huge image shape", with_entry("image_shape", (1, 2 ** 40, 8)), "is not channels, height, width"),
    ("a class count of True", with_entry("num_classes", True), "num_classes True is not a class count"),
    ("another class count", with_entry("num_classes", 12), "classify.1.weight is torch.float32 (10, 128), not"),
    ("a list", lambda state: [state], "not a dictionary of model, image_shape and num_classes"),
    ("no model", lambda state: {**state, "model": [1, 2]}, "its model is not a dictionary of named tensors"),
]


@pytest.mark.parametrize("name, change, fragment", CLASSIFIER_DAMAGE, ids=[case[0] for case in CLASSIFIER_DAMAGE])
def test_a_damaged_classifier_is_one_error_naming_the_file_and_the_problem(name, change, fragment, tmp_path,
                                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = Path("results/classifiers") / weights_name("digits")  # before the shipped one
    path.parent.mkdir(parents=True)
    torch.save(change(shipped_digits()), path)
    with pytest.raises(ConfigError) as refused:
        load_domain_classifier("digits")
    message = str(refused.value)
    assert message.startswith(f"the domain classifier {path} ") and fragment in message, message
    assert "'bench features train --dataset digits'" in message and "\n" not in message


def test_a_classifier_for_other_images_is_refused_before_scoring(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = Path("results/classifiers") / weights_name("digits")
    path.parent.mkdir(parents=True)
    model = DomainClassifier((1, 12, 12), 10)
    torch.save({"model": model.state_dict(), "image_shape": (1, 12, 12), "num_classes": 10}, path)
    with pytest.raises(ConfigError, match=r"was trained on 1x12x12 images and 'digits' has 1x8x8; retrain it"):
        Scorer("digits", "domain", cache_dir=tmp_path / "cache")


def test_non_finite_features_blame_the_side_that_is_not_finite(clean, digits_test):
    scorer, clean_folder, _ = clean
    images = to_unit_range(digits_test.images[:50])
    nan_images = images.clone()
    nan_images[4, 0, 2, 2] = float("nan")
    with pytest.raises(TrainingDiverged, match="generated images are not finite .*the generator diverged"):
        scorer.score_images(nan_images)
    with pytest.raises(TrainingDiverged, match="reach 3e.38, far outside .*the generator diverged"):
        scorer.score_images(torch.full_like(images, 3e38))
    # A classifier that went bad after it was loaded (its file is checked on loading): not the generator's fault.
    broken = Scorer("digits", "domain", cache_dir=clean_folder)
    broken.extractor.classifier.trunk[0].weight[0, 0, 1, 1] = float("nan")
    with pytest.raises(ConfigError, match="the domain extractor gives non-finite features .* for finite images in "
                                          r"\[-1, 1\]: its weights .*domain-digits.pt are damaged; retrain it"):
        broken.score_images(images)


# -- property-based: any tensor written as a cache entry --------------------------------------------

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.uint8, torch.bool]
SHAPES = st.one_of(st.sampled_from([(360, 128), (360,), (359, 128), (361, 128), (360, 127), (360, 129), (128, 360),
                                     (360, 128, 1), (1, 360), (360, 1), (0, 128), (0,), (46080,)]),
                   st.lists(st.integers(0, 3), max_size=3).map(tuple))
VALUES = st.floats(allow_nan=True, allow_infinity=True, width=32)
RANDOM_TENSORS = st.builds(
    lambda shape, dtype, value, seed: (torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * value
                                       ).to(dtype) if dtype != torch.bool else torch.zeros(shape, dtype=dtype),
    SHAPES, st.sampled_from(DTYPES), VALUES, st.integers(0, 2 ** 16))
# Changes of a valid entry: every value at once (a scale, an offset, noise), or one value anywhere.
WHOLE = st.one_of(
    st.builds(lambda factor: lambda t: t * factor, VALUES),
    st.builds(lambda offset: lambda t: t + offset, VALUES),
    st.builds(lambda scale, seed: lambda t: t + scale * torch.randn(t.shape, generator=torch.Generator().manual_seed(
        seed), dtype=t.dtype), st.floats(1e-9, 1e3), st.integers(0, 2 ** 16)),
    st.builds(lambda dtype: lambda t: t.to(dtype), st.sampled_from(DTYPES)),
    st.builds(lambda rows: lambda t: t[:rows].clone(), st.integers(0, SAMPLES - 1)),
    st.just(lambda t: t.reshape(-1)),
    st.just(lambda t: t.unsqueeze(0)),
)
ONE_VALUE = st.builds(lambda position, value: lambda t: t.reshape(-1).clone().index_fill_(0, torch.tensor(
    [position % t.numel()]), value).reshape(t.shape), st.integers(0, 2 ** 20), VALUES)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from([0, 1]), content=st.one_of(
    st.tuples(st.just("random"), RANDOM_TENSORS, st.booleans()),
    st.tuples(st.just("whole"), WHOLE, st.booleans()),
    st.tuples(st.just("one value"), ONE_VALUE, st.just(False))))  # resealed: see the note below
def test_any_tensor_written_as_an_entry_is_used_only_when_valid(which, content, clean, digits_test):
    """A tensor written as an entry is used only when it passes as the entry it replaces: else it is
    rebuilt with one warning; no exception escapes, and what is used is the clean features and radii
    (within the float32 tolerance of the spot checks). One changed value in a resealed entry is what
    the spot checks cannot see outside their rows: the checksum catches it where it was not resealed."""
    scorer, clean_folder, _ = clean
    kind, tensor_or_change, reseal = content
    with tempfile.TemporaryDirectory() as folder:
        folder = copy_of(clean_folder, Path(folder))
        path = entries(scorer, folder, digits_test)[which]
        state = torch.load(path, weights_only=True)
        field = "radii" if which else "features"
        try:
            state[field] = tensor_or_change if kind == "random" else tensor_or_change(state[field])
        except (RuntimeError, OverflowError):  # a change that cannot be made to this tensor: nothing to test
            return
        if reseal and state[field].dtype in (torch.float32, torch.float64):
            state["sha256"] = tensor_sha256(state[field])
        torch.save(state, path)
        with recorded() as caught:
            features, radii, source = cache_of(scorer, folder).load(digits_test, SAMPLES)
        lines = cache_warnings(caught)
        assert len(lines) <= 1 and all(line.startswith(f"real-feature cache {path} ") for line in lines), lines
        assert all("\n" not in line for line in lines)
        relative = (features - scorer.real_features).norm(dim=1) / scorer.real_features.norm(dim=1)
        assert relative.max() <= 1e-3, (lines, relative.max())
        assert torch.allclose(radii, scorer.real_radii, rtol=1e-3), lines
        if lines:  # rebuilt: exactly the clean entry, used as it is from then on
            assert torch.equal(features, scorer.real_features) and torch.equal(radii, scorer.real_radii)
            with recorded() as again:
                assert cache_of(scorer, folder).load(digits_test, SAMPLES)[2] == "cache"
            assert not cache_warnings(again)


def test_an_unwritable_cache_folder_scores_with_a_warning(clean, digits_test, tmp_path):
    """The cache is an optimisation: a folder that cannot be written costs the recomputation, not the score."""
    scorer, _, _ = clean
    (tmp_path / "cache").write_text("a file where the cache folder belongs")
    with recorded() as caught:
        features, radii, source = cache_of(scorer, tmp_path / "cache").load(digits_test, SAMPLES)
    lines = cache_warnings(caught)
    assert source == "computed" and torch.equal(features, scorer.real_features)
    assert len(lines) == 2 and all("cannot be written" in line and "scoring goes on" in line for line in lines)


SHIPPED_NAMES = sorted(shipped_digits()["model"])
PLAIN = st.one_of(st.integers(-(2 ** 70), 2 ** 70), st.booleans(), st.floats(), st.text(max_size=6), st.none(),
                  st.lists(st.integers(-3, 40), max_size=4), st.tuples(st.integers(-3, 40), st.integers(-3, 40),
                                                                        st.integers(-3, 40)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=st.lists(st.one_of(
    st.tuples(st.just("model"), st.sampled_from(SHIPPED_NAMES), st.one_of(RANDOM_TENSORS, PLAIN)),
    st.tuples(st.just("entry"), st.sampled_from(["image_shape", "num_classes", "model"]), PLAIN)), max_size=3))
def test_any_classifier_state_is_loaded_only_when_valid_or_refused_in_one_line(changes):
    with tempfile.TemporaryDirectory() as folder, contextlib.chdir(folder):
        state = shipped_digits()
        for where, name, value in sorted(changes, key=lambda change: change[0] == "entry"):  # weights first
            (state["model"] if where == "model" else state)[name] = value
        path = Path("results/classifiers") / weights_name("digits")
        path.parent.mkdir(parents=True)
        torch.save(state, path)
        try:
            model = load_domain_classifier("digits")
        except ConfigError as exc:
            assert str(exc).startswith(f"the domain classifier {path} ") and "\n" not in str(exc), str(exc)
            return
        # Loaded: every weight has its shape and dtype and is finite, and the classifier runs.
        for name, tensor in model.state_dict().items():
            assert not tensor.is_floating_point() or torch.isfinite(tensor).all(), name
        assert torch.isfinite(model(torch.zeros(2, *model.image_shape))).all()
