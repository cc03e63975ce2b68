"""A study is known by its name: another file of that name that defines another study is refused
before any trial, and a variant that keeps failing is skipped while the others run, the command
ending non-zero and naming it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bench import trials as trial_loop
from bench.cli import main
from bench.errors import ConfigError
from bench.registry import HParam
from bench.schema import StudyAttr, Tag, tag_column
from bench.storage import open_storage
from tests.helpers import mlflow_runs
from variants.gan import GAN

STUDY = """
dataset = "digits"
objective = "fid_domain"
trials = {trials}
sampler = "random"
pruner = "none"
{variant}

[budget]
steps = {steps}
batch_size = 32
eval_every = 2
eval_samples = 100

[space]
{space}
"""
LR = 'lr = { low = 1e-4, high = 1e-3, log = true }'


def study_file(folder: Path, *, steps: int = 4, trials: int = 1, variant: str = "", space: str = LR) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "shared_name.toml"
    path.write_text(STUDY.format(steps=steps, trials=trials, variant=variant, space=space))
    return path


def invoke(folder: Path, monkeypatch, *args: str):
    monkeypatch.chdir(folder)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return CliRunner().invoke(main, ["run", *args])


@pytest.mark.e2e
def test_a_file_of_the_same_name_with_another_budget_is_refused_before_any_trial(tmp_path, monkeypatch):
    first = study_file(tmp_path / "mine", steps=4)
    result = invoke(tmp_path, monkeypatch, "--variant", "gan", "--study", str(first))
    assert result.exit_code == 0, result.output
    journal = tmp_path / "results" / "optuna" / "journal.log"
    recorded = journal.read_bytes()

    other = study_file(tmp_path / "teammate", steps=6)  # the same stem, another budget
    result = invoke(tmp_path, monkeypatch, "--variant", "gan", "--study", str(other))
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    error, = result.stderr.strip().splitlines()
    assert ("the study 'shared_name'" in error and "budget.steps 4" in error and "this file gives 6" in error
            and "give the file another name" in error), error
    assert journal.read_bytes() == recorded  # no trial asked, nothing written to the stored study

    # Another variant under the same name and other terms is refused too: its trials would be compared.
    result = invoke(tmp_path, monkeypatch, "--variant", "dcgan", "--study", str(other))
    assert result.exit_code == 2 and "budget.steps 4" in result.stderr, result.output

    # The same definition continues the stored study (more trials are not another definition).
    again = study_file(tmp_path / "copy", steps=4)
    result = invoke(tmp_path, monkeypatch, "--variant", "gan", "--study", str(again), "--trials", "2")
    assert result.exit_code == 0, result.output
    assert "2 trials in Optuna" in result.output

    # A definition recorded before a budget key existed (real_samples) continues at that key's default.
    storage = open_storage(str(journal))
    [stored] = storage.get_all_studies()
    definition = stored.user_attrs[StudyAttr.DEFINITION]
    del definition["budget"]["real_samples"]
    storage.set_study_user_attr(stored._study_id, StudyAttr.DEFINITION, definition)
    result = invoke(tmp_path, monkeypatch, "--variant", "gan", "--study", str(again), "--trials", "3")
    assert result.exit_code == 0, result.output
    assert "3 trials in Optuna" in result.output
    fewer = study_file(tmp_path / "fewer", steps=4)  # ...and only at it
    fewer.write_text(fewer.read_text().replace("[space]", "real_samples = 500\n\n[space]"))
    storage.set_study_user_attr(stored._study_id, StudyAttr.DEFINITION, definition)
    result = invoke(tmp_path, monkeypatch, "--variant", "gan", "--study", str(fewer))
    assert result.exit_code == 2 and "budget.real_samples 10000" in result.stderr, result.output


class AlwaysNaN(GAN):
    """A third-party GAN whose discriminator loss is NaN from the first step."""

    name = "always_nan"

    def d_losses(self, batch):
        losses = super().d_losses(batch)
        return {**losses, "loss_d": losses["loss_d"] * torch.tensor(float("nan"))}


@pytest.mark.e2e
def test_with_variant_all_a_variant_that_keeps_failing_is_skipped_and_the_others_run(tmp_path, monkeypatch,
                                                                                     registered):
    registered(AlwaysNaN)
    monkeypatch.setattr(trial_loop, "MAX_FAILURES_IN_A_ROW", 3)
    # Only gan and its subclasses have both keys: 'all' resolves to gan and always_nan.
    space = ('arch = { choices = ["mlp"] }\nloss = { choices = ["nonsaturating", "minimax"] }')
    path = study_file(tmp_path / "studies", trials=2, variant='variant = "all"', space=space)
    result = invoke(tmp_path, monkeypatch, "--study", str(path))
    assert result.exit_code == 1, result.output
    assert "always_nan skipped: 3 of its trials in a row failed" in result.stdout
    assert "became NaN" in result.stdout, result.stdout  # the reason of the last failure
    assert result.stderr.strip().splitlines()[-1].startswith("Error: variant always_nan was skipped")
    assert "study 'shared_name:gan:digits': 2 trials in Optuna" in result.stdout  # gan ran its trials
    summary = result.stdout[result.stdout.index("study shared_name"):]
    assert "always_nan" in summary and "gan" in summary  # the comparison shows both, the failures counted

    # A rerun tries the skipped variant again (its failures may have been fixed), and gan is already done.
    result = invoke(tmp_path, monkeypatch, "--study", str(path))
    assert result.exit_code == 1 and result.stdout.count("always_nan skipped") == 1, result.output


class DeepOnlyOnLargeImages(GAN):
    """A third-party GAN that refuses, when built, a depth its images are too small for."""

    name = "deep_only_on_large_images"
    hparams = {**GAN.hparams, "depth": HParam("shallow", choices=("shallow", "deep"), help="blocks per network")}

    def build(self) -> None:
        if self.hp.depth == "deep":
            raise ConfigError(f"depth 'deep' needs images of at least 32 pixels, not {self.image_shape[-1]}")
        super().build()


def test_a_trial_whose_settings_cannot_train_is_recorded_failed_in_mlflow_with_its_reason(tmp_path, monkeypatch,
                                                                                        registered):
    registered(DeepOnlyOnLargeImages)
    monkeypatch.setattr(trial_loop, "MAX_FAILURES_IN_A_ROW", 2)
    # A real-batch budget builds the variant to count its steps: the plan is refused before training.
    path = study_file(tmp_path / "studies", space='depth = { choices = ["deep"] }',
                      variant='variant = "deep_only_on_large_images"')
    path.write_text(path.read_text().replace("steps = 4", "real_batches = 4"))
    result = invoke(tmp_path, monkeypatch, "--study", str(path))
    assert result.exit_code == 1, result.output
    runs = mlflow_runs(tmp_path, "shared_name").query(f"`{tag_column(Tag.KIND)}` == 'trial'")
    assert len(runs) == 2 and (runs["status"] == "FAILED").all()
    assert runs[tag_column(Tag.END_REASON)].str.contains("needs images of at least 32 pixels, not 8").all()
    assert (runs["params.depth"] == "deep").all() and (runs[tag_column(Tag.STATE)] == "failed").all()
