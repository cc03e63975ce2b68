"""`bench train` and its errors: one line, the valid choices, exit status 2, no traceback."""

import dataclasses

import pytest
from click.testing import CliRunner

from bench import cli, engine
from bench.cli import main
from bench.engine import TrainConfig
from tests.helpers import bench


@pytest.mark.parametrize("args, message", [
    (["--variant", "stylegan"], "unknown variant 'stylegan'; choose one of: began, cgan, dcgan, dragan, ebgan, gan, infogan, lsgan, ragan"),
    (["--variant", "wgan", "--set", "beta1=0.5"], "variant 'wgan' has no hyperparameter 'beta1'; valid: lr, clip_c, n_critic"),
    (["--variant", "wgan", "--set", "label_smoothing=0.1"], "tip 'label_smoothing' does not apply to variant "
     "'wgan': it needs a discriminator trained with binary cross-entropy on real/fake targets"),
    (["--variant", "gan", "--set", "minibatch_std=1"], "it needs a convolutional discriminator"),
    (["--variant", "wgan_gp", "--set", "gp_lambda=5000"], "gp_lambda=5000.0 is out of range; valid: [0.01, 1000] (log)"),
    (["--variant", "gan", "--set", "loss=hinge"], "loss='hinge' is not valid; choose one of: nonsaturating, minimax"),
    (["--variant", "gan", "--set", "lr"], "--set expects key=value, got 'lr'"),
    (["--variant", "gan", "--dataset", "celeba"], "unknown dataset 'celeba'; choose one of:"),
    (["--variant", "gan", "--dataset", "Fashion-MNIST"], "unknown dataset 'Fashion-MNIST'; choose one of:"),
    (["--variant", "gan", "--dataset", "imagefolder@032:x"], "unknown dataset 'imagefolder@032:x'"),
    (["--variant", "gan", "--device", "cuda:99"], "device 'cuda:99'"),  # no such GPU, on any machine the suite runs on
    (["--variant", "gan", "--image-size", "32"], "--image-size resizes image folders; 'fashion-mnist' is not one"),
])
def test_bad_input_is_one_line_with_the_fix_and_exit_status_2(tmp_path, args, message):
    result = CliRunner().invoke(main, ["train", *args, "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output  # no traceback
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.stderr


def test_ctrl_c_before_training_begins_is_one_line_and_the_shells_status(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # what Ctrl-C raises while the data load, before the engine's handler is in place

    monkeypatch.setattr(engine, "train", interrupted)
    result = CliRunner().invoke(main, ["train", "--variant", "gan", "--out", str(tmp_path / "run")])
    assert result.exit_code == 130 and result.stderr == "stopped by SIGINT; run the same command again\n"


def test_image_size_trains_on_an_image_folder_resized_on_load(tmp_path, fashion_test):
    from PIL import Image

    from bench.evaluation import load_trained
    from tests.helpers import image_folder

    folder = image_folder(tmp_path / "oblong", fashion_test, 64, by_class=False)
    for path in folder.iterdir():  # 28x20: not square, refused without --image-size
        Image.open(path).crop((0, 4, 28, 24)).save(path)
    train = ["train", "--variant", "dcgan", "--dataset", f"imagefolder:{folder}", "--steps", "2", "--batch-size", "16",
             "--device", "cpu"]
    refused = CliRunner().invoke(main, [*train, "--out", str(tmp_path / "refused")])
    assert refused.exit_code == 2 and "not square; pass --image-size N" in refused.stderr, refused.output
    result = CliRunner().invoke(main, [*train, "--image-size", "32", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    variant, config, _ = load_trained(tmp_path / "run", "cpu")
    assert config.dataset == f"imagefolder@32:{folder}" and variant.image_shape == (1, 32, 32)
    with Image.open(sorted((tmp_path / "run" / "samples").glob("*.png"))[-1]) as grid:
        assert grid.width > 64


@pytest.mark.e2e
def test_train_writes_its_outputs_and_resumes(tmp_path):
    out = tmp_path / "run"
    first = bench("train", "--variant", "gan", "--dataset", "digits", "--steps", "30", "--out", str(out))
    assert first.returncode == 0, first.stderr
    assert "gan: 30 steps" in first.stdout and "images/s" in first.stdout
    assert (out / "checkpoint.pt").exists() and list((out / "samples").glob("*.png"))
    again = bench("train", "--variant", "gan", "--dataset", "digits", "--steps", "30", "--out", str(out))
    assert again.returncode == 2 and "pass --resume" in again.stderr
    resumed = bench("train", "--variant", "gan", "--dataset", "digits", "--steps", "50", "--out", str(out),
                    "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "gan: 50 steps" in resumed.stdout


SET_OTHERWISE = {"hparams": "--set KEY=VALUE", "checkpoint_seconds": "--checkpoint-every DURATION"}
"""The TrainConfig fields `bench train` sets through an option of another name; every other field is an option of
its own name (--batch-size for batch_size) with the field's default."""


def test_every_config_field_is_a_train_option_with_the_configs_default():
    options = {param.name: param for param in cli.train.params}
    for field in dataclasses.fields(TrainConfig):
        if field.name in SET_OTHERWISE:
            continue
        assert field.name in options, f"bench train has no option for TrainConfig.{field.name}"
        if field.default is dataclasses.MISSING:
            assert options[field.name].required, field.name
        else:
            assert options[field.name].default == field.default, field.name


class Captured(Exception):
    """Raised in place of the training, with the config `bench train` built."""


def test_train_options_reach_the_config(monkeypatch):
    def capture(config, *args, **kwargs):
        raise Captured(config)

    monkeypatch.setattr(engine, "train", capture)  # the options are what is tested, not a training run
    result = CliRunner().invoke(main, ["train", "--variant", "gan", "--epochs", "3", "--final-samples", "500",
                                       "--sample-every", "0", "--log-every", "7", "--no-doctor",
                                       "--checkpoint-every", "10m"])
    assert isinstance(result.exception, Captured), result.output
    assert result.exception.args[0] == TrainConfig(variant="gan", epochs=3, final_samples=500, sample_every=0,
                                                   log_every=7, doctor=False, checkpoint_every=0,
                                                   checkpoint_seconds=600.0)
