"""Every command, fed what a tired user at 2 am or a hostile file would feed it: exit status 2,
one `Error:` line that names the problem and the fix, no traceback, and nothing created."""

from __future__ import annotations

import json
import os
import socket

import pytest
from click.testing import CliRunner

from bench.cli import main

NOT_UTF8 = "objective = \"fid_domain\"\ndescription = \"caf\xe9\"\n".encode("latin-1")
FILES = {
    "latin1.toml": NOT_UTF8,
    "broken.toml": b"trials = [1, 2\n",
    "unknown_dataset.toml": b'dataset = "celeba"\n[space]\nlr = { low = 1e-4, high = 1e-3, log = true }\n',
    "huge_batch.toml": b'[budget]\nbatch_size = 100000\n[space]\nlr = { low = 1e-4, high = 1e-3, log = true }\n',
    "no_classifier.toml": b'dataset = "cifar10"\nobjective = "class_kl"\n[space]\nlr = { low = 1e-4, high = 1e-3 }\n',
    "no_extractor.toml": b'objective = "recall_vgg"\n[space]\nlr = { low = 1e-4, high = 1e-3 }\n',
    "a_file": b"not a folder",
    "grid_is_a_file/samples": b"not a folder",
    "run/health.json": b"{not json",
    "run_list/health.json": json.dumps([{"check": "mode_collapse"}]).encode(),
    "run_step/health.json": json.dumps([{"check": "x", "step": {"a": 1}, "message": "m", "fatal": False}]).encode(),
    "run_message/health.json": json.dumps([{"check": "x", "step": 3, "message": 7, "fatal": False}]).encode(),
    "run_folder/health.json/inside": b"",
    "run_deep/health.json": b"[" * 100_000,
    "checkpoint.pt": b"\x80\x04K\x01.",
    "deep.toml": b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n",
    "space_scalar.toml": b"space = 3\n",
    "huge_eval.toml": b'[budget]\neval_samples = 1000000000000\n[space]\nlr = { low = 1e-4, high = 1e-3 }\n',
    "no_images/shirts/README": b"the images are elsewhere",
    "label_accuracy.toml": b'objective = "label_accuracy"\n[space]\nlr = { low = 1e-4, high = 1e-3 }\n',
    "inception_score.toml": b'objective = "inception_score"\n[space]\nlr = { low = 1e-4, high = 1e-3 }\n',
    "spread.toml": b'objective = "inception_score_std"\n[space]\nlr = { low = 1e-4, high = 1e-3 }\n',
    "s" * 120 + ".toml": b'[space]\nlr = { low = 1e-4, high = 1e-3 }\n',
    "corrupt.db": b"SQLite format 2\x00" + bytes(range(256)) * 16,
    "subset.toml": b'subset = 0\n[space]\nlr = { low = 1e-4, high = 1e-3 }\n',
    "big_subset.toml": b'dataset = "digits"\nsubset = 5000\n[space]\nlr = { low = 1e-4, high = 1e-3 }\n',
    "a:b.toml": b'[space]\nlr = { low = 1e-4, high = 1e-3 }\n',
    "twice.toml": b'variant = "gan,gan"\n[space]\nlr = { low = 1e-4, high = 1e-3 }\n',
    "search_seeds.toml": b'seeds = 3\n[space]\nlr = { low = 1e-4, high = 1e-3 }\n',
    "baseline_elsewhere.toml": b'variant = "gan"\nseeds = 2\n[arms]\nbaseline = { n_critic = 5 }\nsmooth = { label_smoothing = 0.1 }\n',
    "few_final.toml": b'[budget]\nfinal_samples = 3\n[space]\nlr = { low = 1e-4, high = 1e-3 }\n',
    "few_real.toml": b'[budget]\nreal_samples = 0\n[space]\nlr = { low = 1e-4, high = 1e-3 }\n',
    "many_real.toml": b'[budget]\nreal_samples = "many"\n[space]\nlr = { low = 1e-4, high = 1e-3 }\n',
}

# (command line, a fragment the one error line must hold); paths are relative to a fresh folder.
CASES = [
    (["list", "extra"], "Got unexpected extra argument (extra)"),
    (["train", "--variant", "stylegan"], "unknown variant 'stylegan'; choose one of:"),
    (["train", "--variant", "gan", "--set", "lr=abc"], "lr='abc' is not a number; valid: [1e-06, 0.1] (log)"),
    (["train", "--variant", "gan", "--steps", "many"], "'many' is not a valid integer"),
    (["train", "--variant", "gan", "--steps", "0"], "steps must be at least 1, got 0"),
    (["train", "--variant", "gan", "--batch-size", "1"], "batch_size must be at least 2, got 1: batch norm"),
    (["train", "--variant", "gan", "--eval-samples", "5"], "eval_samples is 5: scoring needs at least 6 (precision, recall"),
    (["train", "--variant", "wgan", "--set", "n_critic=2.5"], "n_critic='2.5' is not an integer; valid: [1, 10]"),
    (["train", "--variant", "gan", "--set", "lr=1e-3", "--set", "lr=2e-3"], "--set lr is given twice"),
    (["train", "--variant", "gan", "--features", "vgg"], "unknown feature extractor 'vgg'; choose one of"),
    (["train", "--variant", "gan", "--checkpoint-every", "often"], "--checkpoint-every expects a positive step count"),
    (["train", "--variant", "gan", "--resume"], "--resume needs --out"),
    (["train", "--variant", "gan", "--out", "a_file"], "a_file is a file; choose a folder path for --out"),
    (["train", "--variant", "gan", "--out", "a_file/run"], "cannot write the output folder a_file/run"),
    (["train", "--variant", "gan", "--out", "/proc/bench"], "cannot write the output folder /proc/bench"),
    (["train", "--variant", "gan", "--out", "grid_is_a_file", "--resume"], "cannot write the output folder grid_is_a_file"),
    (["train", "--variant", "gan", "--dataset", "imagefolder:nowhere"], "image folder nowhere does not exist"),
    (["train", "--variant", "gan", "--dataset", "digits", "--subset", "5000"],
     "subset 5000 is larger than the 1,437 training images of 'digits'; choose at most 1,437"),
    (["train", "--variant", "gan", "--subset", "-3"], "subset must be a positive number of training images, got -3"),
    (["run", "--variant", "gan", "--study", "subset.toml"], "subset.toml: subset must be a positive number"),
    (["train", "--variant", "dcgan", "--set", "diffaugment=flip"], "diffaugment='flip' is not valid; choose one of"),
    (["train", "--variant", "gan", "--dataset", "digits", "--batch-size", "5000"], "batch of 5000 is larger than"),
    (["run", "--variant", "gan", "--study", "nosuch"], "no study 'nosuch'"),
    (["run", "--variant", "gan", "--study", "latin1.toml"], "not UTF-8 text"),
    (["run", "--variant", "gan", "--study", "broken.toml"], "not valid TOML"),
    (["run", "--variant", "gan", "--study", "unknown_dataset.toml"], "unknown dataset 'celeba'"),
    (["run", "--study", "quick", "--variant", "pix2pix"], "unknown variant 'pix2pix'"),
    (["run", "--variant", "gan", "--study", "quick", "--trials", "0"], "trials must be from 1 to 100,000, got 0"),
    (["run", "--variant", "gan", "--study", "quick", "--trials", str(2**65)], "trials must be from 1 to 100,000"),
    (["run", "--variant", "gan", "--study", "quick", "--workers", "100000"], "--workers must be at least 1 and at most"),
    (["run", "--variant", "gan", "--study", "s" * 300], "a study's name is its file's name, at most 100"),
    (["run", "--variant", "gan", "--study", "s" * 120 + ".toml"], "has 120 characters, over 100"),
    (["run", "--variant", "dcgan", "--study", "label_accuracy.toml"],
     "objective 'label_accuracy' needs a conditional generator (labels), and variant 'dcgan' has none"),
    (["run", "--variant", "gan", "--study", "quick", "--storage", "/dev/null"], "/dev/null is not a file"),
    (["run", "--variant", "gan", "--study", "quick", "--storage", "run"], "the Optuna storage run is not a file"),
    (["run", "--variant", "gan", "--study", "a_file"], "no study 'a_file'"),
    (["run", "--variant", "gan,gan", "--study", "quick"], "distinct variant names separated by commas"),
    (["run", "--variant", "gan,,dcgan", "--study", "quick"], "distinct variant names separated by commas"),
    (["run", "--variant", "gan,wgan", "--study", "beta1_sweep"], "beta1_sweep.toml: [space] beta1"),
    (["run", "--variant", "gan", "--study", "quick", "--progress-every", "0"], "--progress-every must be positive"),
    (["run", "--variant", "gan", "--study", "quick", "--device", "tpu"], "unknown device 'tpu'"),
    (["run", "--variant", "gan", "--study", "quick", "--device", "cuda:7"], "device 'cuda:7'"),
    (["run", "--variant", "gan", "--study", "huge_batch.toml"], "budget.batch_size 100000 is larger than"),
    (["run", "--variant", "gan", "--study", "no_classifier.toml"],
     "class_kl needs a domain classifier for 'cifar10', and there is none; train one with 'bench features train"),
    (["run", "--variant", "gan", "--study", "no_extractor.toml"], "'recall_vgg' names no extractor; use recall_domain"),
    (["run", "--variant", "gan", "--study", "inception_score.toml"],
     "objective inception_score comes from the final Inception scoring, with Inception's classification weights"),
    (["run", "--variant", "gan", "--study", "spread.toml"], "objective 'inception_score_std' is not a score"),
    (["train", "--variant", "gan", "--dataset", "cifar10", "--features", "domain"],
     "--features domain needs a domain classifier for 'cifar10'"),
    (["run", "--variant", "gan", "--study", "fifo.toml"], "fifo.toml is a FIFO, refused unopened"),
    (["run", "--variant", "gan", "--study", "deep.toml"], "nested too deep to read"),
    (["run", "--variant", "gan", "--study", "space_scalar.toml"], "'space' must be a table"),
    (["run", "--variant", "gan", "--study", "huge_eval.toml"], "budget.eval_samples 1000000000000 is more than"),
    (["run", "--variant", "gan", "--study", "few_final.toml"], "final_samples is 3: scoring needs at least 6"),
    (["run", "--variant", "gan", "--study", "few_real.toml"], "few_real.toml: budget.real_samples is 0: scoring needs at least 6"),
    (["train", "--variant", "gan", "--real-samples", "500000"], "real_samples 500000 is more than anyone scores"),
    (["run", "--variant", "gan", "--study", "many_real.toml"],
     "many_real.toml: 'budget.real_samples' must be an integer, got 'many'"),
    (["run", "--variant", "gan", "--study", "a:b.toml"], "a:b.toml: a study's name (its file's name) may not hold ':'"),
    (["run", "--variant", "gan", "--study", "big_subset.toml"],
     "big_subset.toml: subset 5000 is larger than the 1,437 training images of 'digits'; choose at most 1,437"),
    (["run", "--study", "twice.toml"], "twice.toml: variant expects distinct variant names"),
    (["run", "--variant", "gan", "--study", "search_seeds.toml"], "'seeds' applies to a study with arms in [arms]"),
    (["run", "--study", "baseline_elsewhere.toml"], "[arms] baseline cannot run on variant 'gan' (variant 'gan' has no"),
    (["run", "--variant", "gan", "--study", "quick", "--storage", "/proc/optuna/journal.log"],
     "cannot write the Optuna storage /proc/optuna/journal.log (/proc is not"),
    (["run", "--variant", "gan", "--study", "quick", "--tracking-uri", "sqlite:////proc/mlflow.db"],
     "cannot create the MLflow store sqlite:////proc/mlflow.db (/proc is not a folder you can write to)"),
    (["run", "--variant", "gan", "--study", "quick", "--seed", str(2**64 + 1)], "is not in the range 0<=x<="),
    (["train", "--variant", "gan", "--device", "meta"], "device 'meta' cannot train here"),
    (["train", "--variant", "gan", "--dataset", "imagefolder:/proc"], "/proc is on a virtual file system"),
    (["train", "--variant", "gan", "--dataset", "imagefolder:no_images"], "no images in no_images"),
    (["train", "--variant", "gan", "--out", "x" * 4100], "(File name too long); choose a shorter folder path"),
    (["train", "--variant", "gan", "--out", "loop", "--resume"], "loop/checkpoint.pt is a link that leads nowhere"),
    (["leaderboard", "--top-k", "0"], "0 is not in the range x>=1"),
    (["eval", "--checkpoint", "nowhere"], "no checkpoint at nowhere"),
    (["eval", "--checkpoint", "checkpoint.pt"], "checkpoint.pt is not a ganbench checkpoint"),
    (["eval", "--checkpoint", "run"], "run holds no checkpoint.pt"),
    (["eval", "--checkpoint", "run", "--samples", "5"], "--samples is 5: scoring needs at least 6"),
    (["doctor", "run"], "run/health.json is not"),
    (["doctor", "run_list"], "run_list/health.json is not"),
    (["doctor", "run_step"], "entry 0: 'step' must be int, got dict"),
    (["doctor", "run_message"], "entry 0: 'message' must be str, got int"),
    (["doctor", "run_folder"], "the health file run_folder/health.json is a folder, not a file"),
    (["doctor", "run_deep"], "run_deep/health.json is not a list of the doctor's findings (not JSON"),
    (["leaderboard", "--study", "quick"], "no MLflow store at sqlite:///"),
    (["leaderboard", "--tracking-uri", "http://127.0.0.1:notaport"], "malformed URL 'http://127.0.0.1:notaport'"),
    (["leaderboard", "--tracking-uri", "http://bench:\u5bc6\u7801@127.0.0.1:9/"],
     "the password in http://bench:***@127.0.0.1:9/ holds characters HTTP basic authentication cannot carry"),
    (["ui", "--study", "quick"], "no MLflow store at sqlite:///"),
    (["leaderboard", "--tracking-uri", "sqlite:///corrupt.db"], "cannot open the MLflow store sqlite:///corrupt.db (file is"),
    (["report", "--study", "x", "--tracking-uri", "sqlite:///corrupt.db"], "cannot open the MLflow store"),
    (["compare", "--study", "quick"], "no MLflow store at sqlite:///"),
    (["report", "--study", "quick"], "no MLflow store at sqlite:///"),
    (["ui", "--port", "web"], "'web' is not a valid integer"),
    (["server", "--backend-store-uri", "sqlite:///x.db", "--port", "99999"], "99999 is not in the range 1<=x<=65535"),
    (["server", "--backend-store-uri", "sqlite:///x.db", "--host", "192.0.2.1"], "cannot listen on 192.0.2.1:5000"),
    (["server", "--backend-store-uri", "ftp://x"], "unsupported MLflow backend store 'ftp://x'"),
    (["doctor", "0123456789abcdef"], "no MLflow store at sqlite:///"),
    (["perf", "--variants", "gan,nosuch"], "unknown variant 'nosuch'"),
    (["perf", "--parallel", "one,two"], "--parallel expects worker counts like 1,2,3"),
    (["perf", "--scoring-samples", "3"], "--scoring-samples is 3: scoring needs at least 6"),
    (["perf", "--time-to-quality", "-5"], "--time-to-quality must be a positive FID"),
    (["perf", "--roofline", "wgan_gp"], "--roofline wgan_gp: torch's FlopCounterMode cannot count a step"),
    (["perf", "-o", "a_file/perf.json"], "cannot write a_file/perf.json"),
    (["perf", "-o", "run"], "cannot write run (it is a folder)"),
    (["perf", "-o", "/proc/perf.json"], "cannot write /proc/perf.json (/proc is not a folder you can write to)"),
    (["features", "train", "--dataset", "celeba"], "unknown dataset 'celeba'"),
    (["features", "train", "--epochs", "0"], "epochs must be at least 1, got 0"),
]


@pytest.mark.parametrize("args, fragment", CASES, ids=[" ".join(args) for args, _ in CASES])
def test_a_user_mistake_is_one_error_line_exit_2_and_leaves_nothing_behind(args, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name, content in FILES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)
    os.mkfifo(tmp_path / "fifo.toml")  # reading it would wait for a writer for ever
    (tmp_path / "loop").mkdir()
    (tmp_path / "loop" / "checkpoint.pt").symlink_to("checkpoint.pt")
    before = sorted(tmp_path.rglob("*"))
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output  # no traceback
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and fragment in errors[0], result.stderr
    if not result.stderr.startswith("Usage:"):  # click's own parse errors come with the usage line
        assert result.stderr.strip().splitlines() == errors, result.stderr
    assert sorted(tmp_path.rglob("*")) == before, "a refused command created files"


def test_every_command_is_in_the_table():
    """(Dead servers and refusing databases, for every command that reaches one: tests/test_servers.py.)"""
    commands = {name for name in main.commands if name != "features"} | {"features train"}
    tried = {args[0] if args[0] != "features" else "features train" for args, _ in CASES}
    assert commands == tried


def test_ui_and_server_refuse_a_port_in_use_before_printing_an_address(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = CliRunner().invoke(main, ["server", "--backend-store-uri", "sqlite:///x.db", "--port", port])
    assert result.exit_code == 2 and result.stdout == "", result.output
    assert result.stderr.strip() == f"Error: cannot listen on 127.0.0.1:{port} (Address already in use); pass " \
                                    "another --port, or a --host address of this machine"
    assert not list(tmp_path.iterdir())
