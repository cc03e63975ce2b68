"""Images a generator made elsewhere, scored by `bench eval --images` with the scorer a trained variant
gets: the same real statistics and extractor, so that the two rank side by side."""

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from bench.cli import main
from bench.config import TrainConfig
from bench.data import load_dataset, to_unit_range
from bench.engine import train
from bench.errors import ConfigError
from bench.evaluation import evaluate, evaluate_images
from bench.scoring import draw_samples, shared_scorer


def write_pngs(images: torch.Tensor, folder: Path) -> Path:
    """Images (N, C, H, W) in [-1, 1] as 8-bit PNG files, quantised as scoring quantises (rounded)."""
    folder.mkdir(parents=True)
    pixels = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    for number, image in enumerate(pixels):
        array = image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy()
        Image.fromarray(array).save(folder / f"{number:05d}.png")
    return folder


def test_the_test_splits_own_images_scored_as_generated_give_the_real_floor(tmp_path):
    real = load_dataset("digits", "test")
    folder = write_pngs(to_unit_range(real.images), tmp_path / "test-split")
    scored = evaluate_images(folder, "digits", device="cpu")
    expected = shared_scorer("digits", "domain", torch.device("cpu"), None).score_images(to_unit_range(real.images))
    assert scored.samples == len(real) and scored.scores == pytest.approx(expected, rel=1e-6, abs=1e-9)
    assert abs(scored.scores["fid_domain"]) < 1e-3  # the same images as the real statistics


def test_a_checkpoints_samples_written_as_images_score_as_the_checkpoint_does(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig("dcgan", dataset="digits", steps=30, seed=3, device="cpu"), run, progress=False)
    from bench.evaluation import load_trained
    variant, config, _ = load_trained(run, "cpu")
    images, _, _ = draw_samples(variant, 300, seed=config.seed)
    folder = write_pngs(images, tmp_path / "samples")
    direct = evaluate(run, samples=300, device="cpu").scores
    through_files = evaluate_images(folder, "digits", device="cpu").scores
    assert through_files["fid_domain"] == pytest.approx(direct["fid_domain"], rel=1e-3)
    result = CliRunner().invoke(main, ["eval", "--images", str(folder), "--dataset", "digits", "--device", "cpu"])
    assert result.exit_code == 0 and f"{through_files['fid_domain']:.6g}" in result.output
    assert "real statistics: test split, 360 images" in result.output  # 10,000 asked for: the whole split
    # Against fewer real images, as a run with that real_samples is scored; a checkpoint keeps its run's.
    fewer = CliRunner().invoke(main, ["eval", "--images", str(folder), "--dataset", "digits", "--real-samples", "64"])
    assert fewer.exit_code == 0 and "real statistics: test split, 64 images" in fewer.output, fewer.output
    assert evaluate_images(folder, "digits", device="cpu", real_samples=64).scores["fid_domain"] == pytest.approx(
        float(next(line for line in fewer.output.splitlines() if "fid_domain" in line).split()[1]), rel=1e-5)
    refused = CliRunner().invoke(main, ["eval", "--checkpoint", str(run), "--real-samples", "64"])
    assert refused.exit_code == 2 and "--real-samples goes with --images and --dataset" in refused.stderr


def test_images_that_cannot_be_compared_with_the_dataset_are_refused_in_one_line(tmp_path, fashion_test):
    rgb = write_pngs(to_unit_range(fashion_test.images[:4]).expand(-1, 3, -1, -1).contiguous(), tmp_path / "rgb")
    Image.fromarray(fashion_test.images[4, 0].numpy()).save(rgb / "colour-mixed.png")  # still RGB overall
    with pytest.raises(ConfigError, match="are RGB 28x28 and 'fashion-mnist' is grayscale 28x28"):
        evaluate_images(rgb, "fashion-mnist", device="cpu")
    small = write_pngs(to_unit_range(load_dataset("digits", "test").images[:4]), tmp_path / "small")
    with pytest.raises(ConfigError, match="are grayscale 8x8 and 'fashion-mnist' is grayscale 28x28"):
        evaluate_images(small, "fashion-mnist", device="cpu")
    Image.fromarray(fashion_test.images[0, 0].numpy()).save(small / "bigger.png")
    fine = write_pngs(to_unit_range(fashion_test.images[:8]), tmp_path / "fine")
    runner = CliRunner()
    for args, message in (
        (["--images", str(small), "--dataset", "digits"], "differ in size (8x8, 28x28)"),
        (["--images", str(small)], "--images needs --dataset"),
        ([], "give --checkpoint"),
        (["--images", str(fine), "--dataset", "fashion-mnist", "--samples", "5"], "--samples is 5: scoring needs"),
        (["--images", str(fine), "--dataset", "fashion-mnist", "--samples", "9"], "more than the 8 images in"),
    ):
        result = runner.invoke(main, ["eval", *args, "--device", "cpu"])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output
