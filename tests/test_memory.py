"""A run that cannot fit in memory is refused before it starts, with the figures; runs that fit are not."""

from __future__ import annotations

import resource
import subprocess

import pytest
import torch

from bench.data import load_dataset
from bench.errors import ConfigError
from bench.memory import BYTES_PER_PARAMETER, GIB, Need, available, check_fits, training_need
from bench.registry import get_variant, variants
from tests.helpers import BENCH, clean_env, image_folder


def test_the_need_grows_with_the_batch_and_the_image_and_counts_every_parameter():
    dcgan = get_variant("dcgan")
    small = training_need(dcgan, {}, (1, 28, 28), 10, 64)
    with torch.device("meta"):
        parameters = sum(p.numel() for p in dcgan((1, 28, 28), 10).parameters())
    assert small.weights == parameters * BYTES_PER_PARAMETER
    assert training_need(dcgan, {}, (1, 28, 28), 10, 128).activations == 2 * small.activations
    assert training_need(dcgan, {}, (1, 28, 28), 10, 64, value_bytes=2).activations * 2 == small.activations
    large = training_need(dcgan, {}, (1, 1024, 1024), 10, 64)
    assert large.total > 30 * GIB > 100 * small.total  # DCGAN's rules add a layer per doubling of the side


def test_every_built_in_variant_at_its_defaults_fits_on_this_machine():
    room, _ = available(torch.device("cpu"))
    for name, cls in variants().items():
        need = training_need(cls, {}, (1, 28, 28), 10, 64)
        assert need is not None and need.total < min(room, GIB), name


def test_a_need_over_what_is_free_is_one_line_with_the_figures():
    need = Need(weights=4 * GIB, activations=100_000 * GIB, data=GIB // 2)  # more than any machine has
    with pytest.raises(ConfigError) as refused:
        check_fits(need, torch.device("cpu"), "training dcgan")
    assert str(refused.value).startswith("training dcgan needs at least 100004.5 GiB (activations 100000.0, weights "
                                         "and optimiser state 4.0, data 0.5), and ")
    assert str(refused.value).endswith("GiB free; lower --batch-size or --image-size")
    check_fits(training_need(get_variant("dcgan"), {}, (1, 28, 28), 10, 64), torch.device("cpu"), "training dcgan")


def limit_memory() -> None:
    """A 12 GiB address space: were the check wrong, the run would fail here, not take the machine down."""
    resource.setrlimit(resource.RLIMIT_AS, (12 * GIB, 12 * GIB))


def test_an_image_folder_scaled_to_1024_with_dcgan_is_refused_before_training(tmp_path):
    folder = image_folder(tmp_path / "shirts", load_dataset("digits", "test"), 64, by_class=False)
    result = subprocess.run([BENCH, "train", "--variant", "dcgan", "--dataset", f"imagefolder:{folder}",
                             "--image-size", "1024", "--steps", "1", "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=120, env=clean_env(), preexec_fn=limit_memory)
    assert result.returncode == 2, result.stderr[-2000:]
    error, = result.stderr.strip().splitlines()
    assert error.startswith("Error: training dcgan on 1x1024x1024 images in batches of 64 needs at least 3"), error
    assert "address-space limit (ulimit -v) leaves" in error and "lower --batch-size or --image-size" in error
    assert not (tmp_path / "run").exists()
