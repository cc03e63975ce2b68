#!/usr/bin/env python3
"""Hostile and careless inputs, each run as a real `bench` command: what it exits with, how long it
takes, and whether it fails the way ganbench promises.

Every case builds its input in a fresh temporary folder from real data (Debian's Fashion-MNIST IDX
files, scikit-learn's digits, a study really trained by `bench run`, a checkpoint and a feature cache
really written by ganbench), then runs one command there as a subprocess, with a timeout and without
MLFLOW_TRACKING_URI in its environment. The cases are grouped in seven classes:

  1. torchvision-layout roots (`--dataset mnist --data-root DIR`): damaged IDX files, labels that do
     not match the images, legacy processed/training.pt files holding code or junk, `--download`
     without a network;
  2. files this user may not read (skipped when running as root, who reads every file);
  3. the real-feature cache and the domain classifier: wrong widths, dtypes and shapes, values that
     are wrong but finite, folders and FIFOs where a file belongs;
  4. compare, report and leaderboard on MLflow stores holding running or damaged runs, and a
     144-megapixel samples artifact;
  5. waits: an unusable server store, an unwritable output, a server (a thread of this script) that
     answers 200 with `{}` to every request;
  6. study checks: impossible objectives, over-long names, unusable storages, huge counts, two study
     files of one name, a `variant = "all"` study with a plugin variant that always fails;
  7. a seed of 2**70, a non-ASCII password, passwords on a child's command line (seen in /proc),
     SIGTERM during start-up (1 s after results/ appears) and to `bench ui`, NaN weights, a FIFO
     artifact, a 1024-pixel image folder under a 12 GB address-space limit.

Ctrl-C during a PostgreSQL outage is listed but not run (tests/test_waits.py stops a real server).

For each case it records: the id, the class, the command (run in the case's folder), the exit status,
the seconds until the command ended, whether stderr ends in exactly one line starting with `Error:`
(and what came before it), whether any output holds a Python traceback, and the verdict. A case
expects one of:

  error    exit 2, stderr's last line the only one starting with `Error:`, no traceback, no Python
           warning or usage text before the Error line, within the limit (10 s);
  works    valid input (a study with a trial still running): exit 0, no traceback, within 10 s;
  either   a damaged store or checkpoint: worked (exit 0; where the case names the damage, with a
           warning that names it, e.g. the skipped run's id) or refused (as `error`);
  rebuilt  a damaged cache entry: rebuilt with a warning that names it (exit 0) or refused; exit 0
           with no such warning means wrong scores were accepted silently;
  fails    a study in which a variant was skipped: it runs the others and ends non-zero with one
           `Error:` line (no time limit: it trains);
  signal   SIGTERM: exit 143 (128 + 15), the signal named where the case says so;
  ps       until the server listens, no process's command line (/proc/*/cmdline) but that of the
           bench command itself (whose arguments the user wrote) shows the store's password; then
           SIGTERM, exit 143. Needs PostgreSQL (/usr/lib/postgresql/*/bin, a throwaway cluster on
           loopback), else skipped.

Anything else is `FAIL: <why>`; a command still running at its timeout is killed (its whole process
group) and recorded as timed out. A case whose set-up fails is recorded as `setup failed`. The
script exits 0 when no case failed (skipped ones aside), else 1.

Usage (from the repository root, with the project's virtual environment):

  .venv/bin/python scripts/hostile_inputs.py                 # every case -> results/hostile_inputs.csv
  .venv/bin/python scripts/hostile_inputs.py --list          # the case ids, classes and summaries
  .venv/bin/python scripts/hostile_inputs.py --only c1-idx-8d,c4-running-compare -o /tmp/some.csv
  .venv/bin/python scripts/hostile_inputs.py --class 3       # one class
  .venv/bin/python scripts/hostile_inputs.py --keep          # keep the temporary folders to inspect

The CSV begins with a comment line giving the command, the git commit (and whether the working tree
differs from it), the machine (CPU model and cores) and the date. Measure on a quiet machine: the
seconds are wall-clock times of commands that import torch, and a busy machine makes them longer. The
shared inputs (a 2-trial study on digits, `--steps 3`, its checkpoint and feature cache) take a minute
or two to build before the first case that needs them.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import gzip
import http.server
import logging
import os
import re
import resource
import secrets
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
PYTHON = Path(sys.executable)
BENCH = PYTHON.with_name("bench") if PYTHON.with_name("bench").exists() else ROOT / ".venv" / "bin" / "bench"
FASHION = Path("/usr/share/datasets/fashion-mnist")
SHIPPED_WEIGHTS = ROOT / "bench" / "weights"
LIMIT_S = 10.0       # the promise: one Error line and exit 2 within 10 s
SLOW_S = 5.0         # listed in the summary
TIMEOUT_S = 60.0     # a command still running then is killed and recorded as timed out
PASSWORD = f"hostile-{secrets.token_hex(6)}"  # this invocation's own: no other process shows it
NON_ASCII_PASSWORD = "pw€密码"

TINY_STUDY = """\
dataset = "digits"
objective = "{objective}"
trials = {trials}
sampler = "random"
pruner = "none"
{variant}

[budget]
steps = {steps}
batch_size = 32
eval_every = {eval_every}
eval_samples = 100

[space]
{space}
"""
LR = "lr = { low = 1e-4, high = 1e-3, log = true }"


def study_text(*, steps: int = 3, trials: int = 2, objective: str = "fid_domain", variant: str = "",
               space: str = LR) -> str:
    return TINY_STUDY.format(steps=steps, eval_every=3, trials=trials, objective=objective, variant=variant,
                             space=space)


class Skip(Exception):
    """A case that cannot be built here; its message is the reason."""


@dataclass
class Spec:
    """What a case runs: a command in its folder, and how to judge it."""
    argv: list[str]
    expect: str = "error"
    env: dict[str, str] = field(default_factory=dict)
    limit: float | None = LIMIT_S
    timeout: float = TIMEOUT_S
    must: list[str] = field(default_factory=list)       # regexes the output must match
    must_not: list[str] = field(default_factory=list)   # regexes the output must not match
    secret: str | None = None                           # a password no output may show
    warns: str | None = None                            # "either": a regex stderr must match when it exits 0
    drive: Callable[[subprocess.Popen, "Spec"], None] | None = None  # runs beside the command
    preexec: Callable[[], None] | None = None
    notes: list[str] = field(default_factory=list)      # what the driver saw
    failures: list[str] = field(default_factory=list)   # what the driver found wrong


@dataclass
class Case:
    id: str
    cls: int
    summary: str
    build: Callable[["Context", Path], Spec]


@dataclass
class Result:
    id: str
    cls: int
    expect: str
    command: str
    exit: str
    seconds: str
    one_error_line: str
    no_traceback: str
    before_error: str
    verdict: str
    last_line: str


# -- helpers ----------------------------------------------------------------------------------------

def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env.update(extra or {})
    return env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def bench_setup(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """A real `bench` command that builds a case's state; its failure is the case's set-up failure."""
    result = subprocess.run([str(BENCH), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            env=clean_env(), errors="replace")
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        raise RuntimeError(f"`bench {' '.join(args)}` exited {result.returncode}: {last[:200]}")
    return result


def fashion(kind: str, split: str = "train"):
    """Debian's Fashion-MNIST images (N, 28, 28) or labels (N,) as uint8 arrays."""
    import numpy as np

    prefix = "train" if split == "train" else "t10k"
    name = f"{prefix}-images-idx3-ubyte.gz" if kind == "images" else f"{prefix}-labels-idx1-ubyte.gz"
    data = gzip.decompress((FASHION / name).read_bytes())
    offset = 16 if kind == "images" else 8
    array = np.frombuffer(data, dtype=np.uint8, offset=offset)
    return array.reshape(-1, 28, 28) if kind == "images" else array


def idx_bytes(array, type_code: int = 0x08) -> bytes:
    """An IDX file of ``array`` (big-endian values, as the format says)."""
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[type_code]
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(dtype).tobytes()


def mnist_root(root: Path, *, train: int = 200, test: int = 100) -> Path:
    """A torchvision-layout MNIST root (ROOT/MNIST/raw, uncompressed IDX files) holding the first
    ``train`` and ``test`` images of Fashion-MNIST: real images in MNIST's format and layout."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, prefix, count in (("train", "train", train), ("test", "t10k", test)):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(fashion("images", split)[:count]))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(fashion("labels", split)[:count]))
    return root


def image_folder(root: Path, count: int, *, by_class: bool = True) -> Path:
    """The first ``count`` Fashion-MNIST training images as PNG files, in one sub-folder per class."""
    from PIL import Image

    images, labels = fashion("images"), fashion("labels")
    for index in range(count):
        folder = root / f"class-{labels[index]}" if by_class else root
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[index]).save(folder / f"{index:05d}.png")
    return root


def train_argv(*more: str) -> list[str]:
    return [str(BENCH), "train", "--variant", "gan", "--dataset", "mnist", "--data-root", "root", "--steps", "3",
            *more]


def torch_save(value, path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(value, path)


def tensor_sha256(tensor) -> str:
    """The checksum a feature-cache entry carries: sha256 of the tensor's bytes."""
    import hashlib

    return hashlib.sha256(tensor.detach().reshape(-1).contiguous().numpy().view("uint8")).hexdigest()


def abbreviated(text: str) -> str:
    """A command with its long runs of one character written as CHAR×N."""
    return re.sub(r"(.)\1{19,}", lambda m: f"{m.group(1)}×{len(m.group(0))}", text)


# -- shared state, built once per invocation with real `bench` commands -----------------------------

class FakeMLflow(http.server.BaseHTTPRequestHandler):
    """A server that answers 200 with `{}` to every request."""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _answer

    def log_message(self, *args) -> None:
        pass


class Context:
    """The temporary root and the inputs several cases share (built on first use)."""

    def __init__(self, root: Path):
        self.root = root
        self._study: Path | None = None
        self._cache: Path | None = None
        self._fake: http.server.ThreadingHTTPServer | None = None
        self._pg: dict | None = None
        self._failed: dict[str, BaseException] = {}  # a shared input that could not be built: not retried

    def _once(self, name: str, build: Callable[[], object]):
        if name in self._failed:
            raise self._failed[name]
        try:
            return build()
        except Exception as exc:
            self._failed[name] = exc
            raise

    # A real 2-trial study on digits (--steps 3): an MLflow store with artifacts, an Optuna journal,
    # trial checkpoints and the real-feature cache.
    def study(self) -> Path:
        if self._study is None:
            self._study = self._once("study", self._build_study)
        return self._study

    def _build_study(self) -> Path:
        folder = self.root / "shared-study"
        (folder / "studies").mkdir(parents=True)
        (folder / "studies" / "tiny.toml").write_text(study_text())
        bench_setup("run", "--variant", "gan", "--study", "studies/tiny.toml", cwd=folder)
        return folder

    def checkpoint(self) -> Path:
        return self.study() / "results" / "studies" / "tiny_gan_digits" / "trial-0000" / "checkpoint.pt"

    # A folder where `bench eval` on a real checkpoint wrote the real-feature cache.
    def cache(self) -> Path:
        if self._cache is None:
            self._cache = self._once("cache", self._build_cache)
        return self._cache

    def _build_cache(self) -> Path:
        checkpoint = self.checkpoint()
        folder = self.root / "shared-cache"
        (folder / "run").mkdir(parents=True)
        shutil.copy2(checkpoint, folder / "run" / "checkpoint.pt")
        bench_setup(*EVAL[1:], cwd=folder)
        if not self.cache_entries(folder)[0]:
            raise RuntimeError("`bench eval` wrote no real-feature cache entry under results/cache")
        return folder

    @staticmethod
    def cache_entries(folder: Path) -> tuple[list[Path], list[Path]]:
        entries = sorted((folder / "results" / "cache" / "real-features").glob("*.pt"))
        return [p for p in entries if "-radii-" not in p.name], [p for p in entries if "-radii-" in p.name]

    def fake_server(self) -> int:
        if self._fake is None:
            self._fake = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeMLflow)
            self._fake.daemon_threads = True
            threading.Thread(target=self._fake.serve_forever, daemon=True).start()
        return self._fake.server_address[1]

    def postgres(self) -> dict:
        """A throwaway PostgreSQL cluster on 127.0.0.1 with the password-protected user 'bench'."""
        if self._pg is None:
            self._once("postgres", self._start_postgres)
        return self._pg

    def _start_postgres(self) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
        if not bins:
            raise Skip("PostgreSQL is not installed (/usr/lib/postgresql/*/bin)")
        pg_bin, folder, port = bins[-1], Path(tempfile.mkdtemp(prefix="hostile-pg-")), free_port()

        def as_pg(*command) -> list[str]:
            command = [str(part) for part in command]
            return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command

        if os.geteuid() == 0:
            shutil.chown(folder, "postgres", "postgres")
        run = lambda *c: subprocess.run(as_pg(*c), check=True, capture_output=True, timeout=120)
        run(pg_bin / "initdb", "-D", folder / "data", "-U", "postgres", "--auth-local=trust",
            "--auth-host=scram-sha-256")
        run(pg_bin / "pg_ctl", "-D", folder / "data", "-l", folder / "server.log", "-w", "-o",
            f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start")
        self._pg = {"bin": pg_bin, "folder": folder, "port": port, "as_pg": as_pg, "databases": 0}
        psql = lambda sql: run(pg_bin / "psql", "-h", folder, "-p", port, "-U", "postgres", "-v",
                               "ON_ERROR_STOP=1", "-qc", sql)
        self._pg["psql"] = psql
        psql(f"CREATE USER bench PASSWORD '{PASSWORD}'")

    def pg_database(self) -> str:
        pg = self.postgres()
        pg["databases"] += 1
        name = f"hostile{pg['databases']}"
        pg["psql"](f"CREATE DATABASE {name} OWNER bench")
        return f"postgresql://bench:{PASSWORD}@127.0.0.1:{pg['port']}/{name}"

    def close(self) -> None:
        if self._fake is not None:
            self._fake.shutdown()
        if self._pg is not None:
            pg = self._pg
            subprocess.run(pg["as_pg"](pg["bin"] / "pg_ctl", "-D", pg["folder"] / "data", "-m", "immediate", "stop"),
                           capture_output=True)
            shutil.rmtree(pg["folder"], ignore_errors=True)


def study_copy(ctx: Context, folder: Path):
    """The shared study copied into ``folder``, its MLflow store's artifact paths pointing at the copy;
    returns (MlflowClient, {trial number: run id}, the parent run's id)."""
    from mlflow import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its table-creation notices are not the case's
    base = ctx.study()
    for name in ("studies", "results"):
        shutil.copytree(base / name, folder / name, symlinks=True)
    db = folder / "results" / "mlflow.db"
    with contextlib.closing(sqlite3.connect(db)) as connection, connection:
        connection.execute("UPDATE runs SET artifact_uri = REPLACE(artifact_uri, ?, ?)", (str(base), str(folder)))
        connection.execute("UPDATE experiments SET artifact_location = REPLACE(artifact_location, ?, ?)",
                           (str(base), str(folder)))
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    trials = {int(run.data.tags["bench.trial"]): run.info.run_id for run in runs
              if run.data.tags.get("bench.kind") == "trial"}
    parent = next(run.info.run_id for run in runs if run.data.tags.get("bench.kind") == "study")
    return client, trials, parent


def final_samples(client, run_id: str) -> list[Path]:
    uri = client.get_run(run_id).info.artifact_uri
    return sorted((Path(uri.removeprefix("file://")) / "final_samples").glob("*.png"))


COMPARE = [str(BENCH), "compare", "--study", "tiny", "-o", "compare-out"]
REPORT = [str(BENCH), "report", "--study", "tiny", "-o", "report.html"]
LEADERBOARD = [str(BENCH), "leaderboard", "--study", "tiny"]
EVAL = [str(BENCH), "eval", "--checkpoint", "run", "--samples", "100", "--features", "domain"]


# -- class 1: torchvision-layout roots -------------------------------------------------------------

def _mnist(folder: Path, **kw) -> Path:
    return mnist_root(folder / "root", **kw) / "MNIST" / "raw"


def c1_idx(change: Callable[[Path], None]) -> Callable[[Context, Path], Spec]:
    def build(ctx: Context, folder: Path) -> Spec:
        change(_mnist(folder) / "train-images-idx3-ubyte")
        return Spec(train_argv())
    return build


def _tiny(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:3])


def _tiny_images(path: Path) -> None:
    path.write_bytes(idx_bytes(fashion("images")[:200, 13:15, 13:15]))


def _eight_dims(path: Path) -> None:
    path.write_bytes(idx_bytes(fashion("images")[:200].reshape(200, 1, 1, 1, 1, 1, 28, 28)))


def _floats(path: Path) -> None:
    path.write_bytes(idx_bytes(fashion("images")[:200] / 255.0, 0x0D))


def _environ(path: Path) -> None:
    path.unlink()
    path.symlink_to("/proc/self/environ")


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _one_dim(path: Path) -> None:
    path.write_bytes(idx_bytes(fashion("images")[:200].reshape(-1)))


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def c1_labels_short(ctx: Context, folder: Path) -> Spec:
    raw = _mnist(folder, train=100)
    (raw / "train-labels-idx1-ubyte").write_bytes(idx_bytes(fashion("labels")[:7]))
    return Spec(train_argv())


class _Code:
    """Pickles as a call of print: a file that would run code when unpickled without weights_only."""

    def __reduce__(self):
        return (print, ("HOSTILE PICKLE RAN CODE",))


def _legacy(folder: Path, value) -> Path:
    processed = folder / "root" / "MNIST" / "processed"
    torch_save(value, processed / "training.pt")
    return processed


def c1_legacy_code(ctx: Context, folder: Path) -> Spec:
    import torch

    _legacy(folder, (_Code(), torch.from_numpy(fashion("labels")[:100].astype("int64"))))
    return Spec(train_argv(), must_not=["HOSTILE PICKLE RAN CODE"])


def c1_legacy_tensor(ctx: Context, folder: Path) -> Spec:
    import torch

    _legacy(folder, torch.from_numpy(fashion("images")[:100].copy()))  # one tensor, not (images, labels)
    return Spec(train_argv())


def c1_legacy_junk(ctx: Context, folder: Path) -> Spec:
    import torch

    images = torch.from_numpy(fashion("images")[:100].copy()).float()  # float images, 2-d labels
    labels = torch.from_numpy(fashion("labels")[:100].astype("int64")).reshape(10, 10)
    _legacy(folder, (images, labels))
    return Spec(train_argv())


def c1_download_offline(ctx: Context, folder: Path) -> Spec:
    (folder / "root").mkdir()
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there: no network, at once
    env = {"HTTP_PROXY": closed, "HTTPS_PROXY": closed, "http_proxy": closed, "https_proxy": closed,
           "NO_PROXY": "", "no_proxy": ""}
    return Spec(train_argv("--download"), env=env)


# -- class 2: files this user may not read ---------------------------------------------------------

def _not_root() -> None:
    if os.geteuid() == 0:
        raise Skip("root reads every file")


def c2_class_folder(ctx: Context, folder: Path) -> Spec:
    _not_root()
    image_folder(folder / "images", 40)
    sorted((folder / "images").iterdir())[0].chmod(0)
    return Spec([str(BENCH), "train", "--variant", "gan", "--dataset", "imagefolder:images", "--steps", "3"])


def c2_test_split(ctx: Context, folder: Path) -> Spec:
    _not_root()
    (_mnist(folder) / "t10k-images-idx3-ubyte").chmod(0)
    return Spec([str(BENCH), "features", "train", "--dataset", "mnist", "--data-root", "root", "--epochs", "1"])


def c2_checkpoint(ctx: Context, folder: Path) -> Spec:
    _not_root()
    (folder / "run").mkdir()
    shutil.copy2(ctx.checkpoint(), folder / "run" / "checkpoint.pt")
    (folder / "run" / "checkpoint.pt").chmod(0)
    return Spec(EVAL)


# -- class 3: the real-feature cache and the classifier weights -------------------------------------

def _cache_copy(ctx: Context, folder: Path) -> tuple[Path, Path]:
    base = ctx.cache()
    for name in ("run", "results"):
        shutil.copytree(base / name, folder / name, symlinks=True)
    features, radii = Context.cache_entries(folder)
    if len(features) != 1 or len(radii) != 1:
        raise RuntimeError(f"expected one features and one radii entry, found {features + radii}")
    return features[0], radii[0]


def c3_entry(which: str, change: Callable) -> Callable[[Context, Path], Spec]:
    """A cache entry whose tensor is replaced by change(tensor), re-checksummed: only a check of
    its shape, dtype or values can tell."""
    def build(ctx: Context, folder: Path) -> Spec:
        import torch

        features, radii = _cache_copy(ctx, folder)
        path = features if which == "features" else radii
        entry = torch.load(path, weights_only=True)
        entry[which] = change(entry[which])
        entry["sha256"] = tensor_sha256(entry[which])
        torch.save(entry, path)
        return Spec(EVAL, expect="rebuilt", must=[re.escape(path.name)])
    return build


def c3_cache_dir(ctx: Context, folder: Path) -> Spec:
    features, _ = _cache_copy(ctx, folder)
    features.unlink()
    features.mkdir()
    (features / "data.pkl").write_bytes(b"")
    return Spec(EVAL)


def c3_cache_fifo(ctx: Context, folder: Path) -> Spec:
    features, _ = _cache_copy(ctx, folder)
    features.unlink()
    os.mkfifo(features)
    return Spec(EVAL)


def c3_classifier_fifo(ctx: Context, folder: Path) -> Spec:
    _cache_copy(ctx, folder)
    (folder / "results" / "classifiers").mkdir(parents=True)
    os.mkfifo(folder / "results" / "classifiers" / "domain-digits.pt")
    return Spec(EVAL)


# -- class 4: compare, report and leaderboard on live and damaged stores ---------------------------

def _with_running_trial(ctx: Context, folder: Path) -> None:
    """A trial still running (its process alive: this script), as `bench run` leaves one mid-study."""
    client, trials, _ = study_copy(ctx, folder)
    model = client.get_run(trials[max(trials)])
    number = max(trials) + 1
    tags = {**{key: value for key, value in model.data.tags.items() if key.startswith(("bench.", "mlflow.parent"))},
            "bench.trial": str(number), "bench.seed": str(number), "bench.state": "running",
            "bench.pid": str(os.getpid())}
    run = client.create_run(model.info.experiment_id, tags=tags, run_name=f"trial-{number}")
    for key, value in model.data.params.items():
        client.log_param(run.info.run_id, key, value)
    client.log_metric(run.info.run_id, "loss_d", 1.0, step=1)  # started, no score yet: left RUNNING


def c4_running(argv: list[str]) -> Callable[[Context, Path], Spec]:
    def build(ctx: Context, folder: Path) -> Spec:
        _with_running_trial(ctx, folder)
        return Spec(argv, expect="works", must=[r"still running"] if argv is COMPARE else [])
    return build


def c4_all_running(argv: list[str]) -> Callable[[Context, Path], Spec]:
    """Every run left RUNNING with no end time, as a kill -9 before the first trial ended leaves them."""
    def build(ctx: Context, folder: Path) -> Spec:
        study_copy(ctx, folder)
        with contextlib.closing(sqlite3.connect(folder / "results" / "mlflow.db")) as connection, connection:
            connection.execute("UPDATE runs SET status = 'RUNNING', end_time = NULL")
            connection.execute("UPDATE tags SET value = 'running' WHERE key = 'bench.state'")
            connection.execute("DELETE FROM metrics WHERE key = 'fid_domain'")
            connection.execute("DELETE FROM latest_metrics WHERE key = 'fid_domain'")
        return Spec(argv, expect="either")
    return build


def c4_damaged(damage: Callable, argv: list[str]) -> Callable[[Context, Path], Spec]:
    def build(ctx: Context, folder: Path) -> Spec:
        client, trials, _ = study_copy(ctx, folder)
        damaged = trials[max(trials)]
        damage(client, damaged)
        return Spec(argv, expect="either", warns=damaged)  # skipped, with a warning that names it
    return build


def _huge_samples(client, run_id: str, folder: Path) -> None:
    from PIL import Image

    replaced = 0
    for run in client.search_runs([client.get_run(run_id).info.experiment_id], "tags.`bench.kind` = 'trial'"):
        for grid in final_samples(client, run.info.run_id):
            replaced += 1
            # Written where the copy's store keeps it, not through client.log_artifact: MLflow caches a run's
            # artifact repository by run id, and every case's copy has the same run ids as the first one built.
            Image.new("1", (12000, 12000)).save(grid, format="PNG")  # 144 megapixels, a few kB at 1 bit a pixel
    if not replaced:
        raise RuntimeError("the study's trials logged no final_samples grid to replace")


def _huge(argv: list[str]) -> Callable[[Context, Path], Spec]:
    def build(ctx: Context, folder: Path) -> Spec:
        client, trials, _ = study_copy(ctx, folder)
        _huge_samples(client, trials[0], folder)
        return Spec(argv, expect="either", warns="12000x12000")
    return build



# -- class 5: waits --------------------------------------------------------------------------------

def c5_server_proc(ctx: Context, folder: Path) -> Spec:
    return Spec([str(BENCH), "server", "--backend-store-uri", "sqlite:////proc/nope.db", "--port", str(free_port())])


def c5_device_check(ctx: Context, folder: Path) -> Spec:
    return Spec([str(PYTHON), "-m", "bench.device_check", "--smoke", "-o", "/proc/x"], timeout=300)


def c5_fake_server(ctx: Context, folder: Path) -> Spec:
    uri = f"http://127.0.0.1:{ctx.fake_server()}"
    return Spec([str(BENCH), "run", "--variant", "gan", "--study", "quick", "--trials", "1", "--tracking-uri", uri])


# -- class 6: study checks -------------------------------------------------------------------------

def _run_argv(study: str, *more: str, variant: str = "gan") -> list[str]:
    return [str(BENCH), "run", "--variant", variant, "--study", study, *more]


def c6_label_accuracy(ctx: Context, folder: Path) -> Spec:
    (folder / "labels.toml").write_text(study_text(objective="label_accuracy", trials=1))
    return Spec(_run_argv("labels.toml", variant="dcgan"))


def c6_name_300(ctx: Context, folder: Path) -> Spec:
    return Spec(_run_argv("s" * 300))


def c6_path_long(ctx: Context, folder: Path) -> Spec:
    name = "s" * 250 + ".toml"  # 255 characters: a file the file system holds
    (folder / name).write_text(study_text(trials=1))
    return Spec(_run_argv(name))


def c6_storage(kind: str) -> Callable[[Context, Path], Spec]:
    def build(ctx: Context, folder: Path) -> Spec:
        (folder / "tiny.toml").write_text(study_text(trials=1))
        storage = "/dev/null"
        if kind == "dir":
            (folder / "storage").mkdir()
            storage = "storage"
        return Spec(_run_argv("tiny.toml", "--storage", storage))
    return build


def c6_trials_huge(ctx: Context, folder: Path) -> Spec:
    (folder / "tiny.toml").write_text(study_text(trials=1))
    return Spec(_run_argv("tiny.toml", "--trials", str(2**64 + 1)))


def c6_workers_huge(ctx: Context, folder: Path) -> Spec:
    (folder / "tiny.toml").write_text(study_text(trials=1))
    return Spec(_run_argv("tiny.toml", "--workers", "1000000"))


def c6_same_stem(ctx: Context, folder: Path) -> Spec:
    """The shared study (tiny.toml, --steps 3, 2 trials run), then a teammate's tiny.toml with --steps 4."""
    study_copy(ctx, folder)
    (folder / "teammate").mkdir()
    (folder / "teammate" / "tiny.toml").write_text(study_text(steps=4))
    return Spec(_run_argv("teammate/tiny.toml"))


PLUGIN = '''\
"""A third-party variant: a GAN whose discriminator loss is NaN from its first step."""
import torch
from variants.gan import GAN


class AlwaysNaN(GAN):
    """A GAN that always fails."""

    name = "always_nan"

    def d_losses(self, *args, **kwargs):
        losses = super().d_losses(*args, **kwargs)
        return {**losses, "loss_d": losses["loss_d"] * torch.tensor(float("nan"))}
'''


def c6_variant_all(ctx: Context, folder: Path) -> Spec:
    """A plugin installed as a distribution with a bench.variants entry point, and a study of
    variant = "all" whose space only gan and its subclasses have; always_nan fails every trial."""
    site = folder / "site"
    (site / "hostile_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "hostile_plugin.py").write_text(PLUGIN)
    (site / "hostile_plugin-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: hostile-plugin\nVersion: 0.1\n")
    (site / "hostile_plugin-0.1.dist-info" / "entry_points.txt").write_text(
        "[bench.variants]\nalways_nan = hostile_plugin:AlwaysNaN\n")
    space = 'arch = { choices = ["mlp"] }\nloss = { choices = ["nonsaturating", "minimax"] }'
    (folder / "everyone.toml").write_text(study_text(trials=10, variant='variant = "all"', space=space))
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH", "")]))
    return Spec([str(BENCH), "run", "--study", "everyone.toml"], expect="fails", env={"PYTHONPATH": path},
                limit=None, timeout=900,
                must=[r"always_nan", r"study 'everyone:gan:digits': \d+ trials"])


# -- class 7: smaller ------------------------------------------------------------------------------

def _checkpoint_copy(ctx: Context, folder: Path, change: Callable[[dict], None] | None = None) -> None:
    import torch

    (folder / "run").mkdir()
    if change is None:
        shutil.copy2(ctx.checkpoint(), folder / "run" / "checkpoint.pt")
        return
    state = torch.load(ctx.checkpoint(), weights_only=True)
    change(state)
    torch.save(state, folder / "run" / "checkpoint.pt")


def c7_seed(ctx: Context, folder: Path) -> Spec:
    _checkpoint_copy(ctx, folder, lambda state: state["config"].update(seed=2**70))
    return Spec(EVAL, expect="either")


def c7_nonascii_password(ctx: Context, folder: Path) -> Spec:
    uri = f"http://bench:{NON_ASCII_PASSWORD}@127.0.0.1:{ctx.fake_server()}"
    return Spec([str(BENCH), "run", "--variant", "gan", "--study", "quick", "--trials", "1", "--tracking-uri", uri],
                secret=NON_ASCII_PASSWORD)


def _cmdlines(besides: int) -> dict[int, str]:
    """Every process's command line but that of ``besides`` (the bench command, whose arguments the
    user wrote: the password there is theirs to pass through PGPASSWORD or ~/.pgpass instead)."""
    lines = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != besides:
            with contextlib.suppress(OSError):
                lines[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return lines


def _watch_then_term(port: int, secret: str | None, wait: float = 90) -> Callable[[subprocess.Popen, Spec], None]:
    """Until the server listens on ``port``: every other process's command line checked for ``secret``
    (10 times a second); then SIGTERM to the bench process, as a service manager stops it."""
    def drive(process: subprocess.Popen, spec: Spec) -> None:
        deadline, seen = time.monotonic() + wait, set()
        while time.monotonic() < deadline and process.poll() is None:
            if secret:
                seen |= {pid for pid, line in _cmdlines(process.pid).items() if secret in line}
            if listening(port):
                spec.notes.append(f"listening after {time.monotonic() - process.started:.1f} s")
                break
            time.sleep(0.1)
        else:
            if process.poll() is None:
                spec.failures.append(f"not listening on {port} after {wait:.0f} s")
        if secret:
            seen |= {pid for pid, line in _cmdlines(process.pid).items() if secret in line}
            if seen:
                spec.failures.append(f"the password is on the command line of pid {sorted(seen)}")
            else:
                spec.notes.append("password on no command line")
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    return drive


def c7_ps_password(command: str) -> Callable[[Context, Path], Spec]:
    def build(ctx: Context, folder: Path) -> Spec:
        uri = ctx.pg_database()
        port = free_port()
        if command == "server":
            argv = [str(BENCH), "server", "--backend-store-uri", uri, "--port", str(port)]
        else:
            from mlflow import MlflowClient

            logging.getLogger("mlflow").setLevel(logging.WARNING)
            MlflowClient(tracking_uri=uri).search_experiments()  # the store's tables, as a server makes them
            argv = [str(BENCH), "ui", "--tracking-uri", uri, "--port", str(port)]
        return Spec(argv, expect="ps", limit=None, timeout=120, secret=PASSWORD, drive=_watch_then_term(port, PASSWORD))
    return build


def c7_sigterm_startup(ctx: Context, folder: Path) -> Spec:
    """SIGTERM 1 s after `bench run` has begun setting up its stores (results/ appeared), before its
    first trial: earlier, Python is still importing and dies of the signal without a word."""
    (folder / "tiny.toml").write_text(study_text(trials=1))

    def drive(process: subprocess.Popen, spec: Spec) -> None:
        deadline = time.monotonic() + 60
        while not (folder / "results").exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            spec.notes.append(f"SIGTERM at {time.monotonic() - process.started:.1f} s")
        else:
            spec.failures.append("ended before the signal")
    return Spec(_run_argv("tiny.toml"), expect="signal", limit=None, drive=drive, must=["SIGTERM"],
                must_not=["SIGINT"])


def c7_ui_sigterm(ctx: Context, folder: Path) -> Spec:
    study_copy(ctx, folder)
    port = free_port()
    return Spec([str(BENCH), "ui", "--port", str(port)], expect="signal", limit=None, timeout=120,
                drive=_watch_then_term(port, None))


def c7_nan_checkpoint(ctx: Context, folder: Path) -> Spec:
    def poison(state: dict) -> None:
        name = next(key for key in state["variant"] if key.startswith("G.") and key.endswith("weight"))
        state["variant"][name].fill_(float("nan"))
    _checkpoint_copy(ctx, folder, poison)
    return Spec(EVAL, must_not=["learning rate"])


def c7_nan_classifier(ctx: Context, folder: Path) -> Spec:
    import torch

    _checkpoint_copy(ctx, folder)
    state = torch.load(SHIPPED_WEIGHTS / "domain-digits.pt", weights_only=True)
    weights = state["model"] if isinstance(state.get("model"), dict) else state
    name = next(key for key, value in weights.items() if key.endswith("weight") and value.is_floating_point())
    weights[name].fill_(float("nan"))
    torch_save(state, folder / "results" / "classifiers" / "domain-digits.pt")
    return Spec(EVAL, must_not=["learning rate"])


def c7_fifo_artifact(ctx: Context, folder: Path) -> Spec:
    client, trials, _ = study_copy(ctx, folder)
    grids = [grid for run_id in trials.values() for grid in final_samples(client, run_id)]
    if not grids:
        raise RuntimeError("the study's trials logged no final_samples grid to replace")
    for grid in grids:
        grid.unlink()
        os.mkfifo(grid)
    return Spec(REPORT, expect="either", must_not=["tracking server"], warns="FIFO")


def c7_imagefolder_1024(ctx: Context, folder: Path) -> Spec:
    image_folder(folder / "images", 64, by_class=False)
    limit = 12 * 1024 ** 3

    def address_space() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return Spec([str(BENCH), "train", "--variant", "dcgan", "--dataset", "imagefolder@1024:images", "--steps", "3"],
                preexec=address_space, timeout=180)


def skipped(reason: str) -> Callable[[Context, Path], Spec]:
    def build(ctx: Context, folder: Path) -> Spec:
        raise Skip(reason)
    return build


# -- the cases -------------------------------------------------------------------------------------

CASES = [
    Case("c1-idx-tiny", 1, "a 3-byte images IDX file", c1_idx(_tiny)),
    Case("c1-idx-tiny-images", 1, "an IDX of 2x2-pixel images", c1_idx(_tiny_images)),
    Case("c1-idx-8d", 1, "an 8-dimensional images IDX", c1_idx(_eight_dims)),
    Case("c1-idx-float", 1, "an images IDX of 32-bit floats", c1_idx(_floats)),
    Case("c1-idx-environ", 1, "the images file a link to /proc/self/environ", c1_idx(_environ)),
    Case("c1-idx-empty", 1, "an empty images file", c1_idx(_empty)),
    Case("c1-idx-1d", 1, "a 1-d images file", c1_idx(_one_dim)),
    Case("c1-labels-short", 1, "100 images with 7 labels", c1_labels_short),
    Case("c1-legacy-code", 1, "processed/training.pt holding code", c1_legacy_code),
    Case("c1-legacy-tensor", 1, "processed/training.pt holding one tensor", c1_legacy_tensor),
    Case("c1-legacy-junk", 1, "processed/training.pt: float images, 2-d labels", c1_legacy_junk),
    Case("c1-idx-truncated", 1, "an images IDX cut in half", c1_idx(_truncated)),
    Case("c1-download-offline", 1, "--download with no network", c1_download_offline),
    Case("c2-class-folder", 2, "an image folder's class folder unreadable", c2_class_folder),
    Case("c2-features-test-split", 2, "bench features train: the test split unreadable", c2_test_split),
    Case("c2-checkpoint", 2, "bench eval: the checkpoint unreadable", c2_checkpoint),
    Case("c3-features-width", 3, "cached features one column short",
         c3_entry("features", lambda t: t[:, :-1].contiguous())),
    Case("c3-features-dtype", 3, "cached features of float64", c3_entry("features", lambda t: t.double())),
    Case("c3-radii-shape", 3, "cached radii of shape (N, 1)", c3_entry("radii", lambda t: t[:, None].contiguous())),
    Case("c3-cache-dir", 3, "a folder at the cache entry's path", c3_cache_dir),
    Case("c3-cache-fifo", 3, "a FIFO as the cache entry", c3_cache_fifo),
    Case("c3-classifier-fifo", 3, "a FIFO as results/classifiers/domain-digits.pt", c3_classifier_fifo),
    Case("c3-features-1e30", 3, "cached features x 1e30", c3_entry("features", lambda t: t * 1e30)),
    Case("c3-radii-negative", 3, "cached radii negated", c3_entry("radii", lambda t: -t)),
    Case("c4-running-compare", 4, "bench compare, a trial still running", c4_running(COMPARE)),
    Case("c4-running-report", 4, "bench report, a trial still running", c4_running(REPORT)),
    Case("c4-running-leaderboard", 4, "bench leaderboard, a trial still running", c4_running(LEADERBOARD)),
    Case("c4-all-running-compare", 4, "bench compare, every run RUNNING (kill -9)", c4_all_running(COMPARE)),
    Case("c4-all-running-report", 4, "bench report, every run RUNNING (kill -9)", c4_all_running(REPORT)),
    Case("c4-no-trial-tag-compare", 4, "bench compare, a run without bench.trial",
         c4_damaged(lambda c, run: c.delete_tag(run, "bench.trial"), COMPARE)),
    Case("c4-no-trial-tag-report", 4, "bench report, a run without bench.trial",
         c4_damaged(lambda c, run: c.delete_tag(run, "bench.trial"), REPORT)),
    Case("c4-no-trial-tag-leaderboard", 4, "bench leaderboard, a run without bench.trial",
         c4_damaged(lambda c, run: c.delete_tag(run, "bench.trial"), LEADERBOARD)),
    Case("c4-inf-objective", 4, "bench compare, an objective of inf",
         c4_damaged(lambda c, run: c.log_metric(run, "fid_domain", float("inf"), step=4), COMPARE)),
    Case("c4-bogus-objective", 4, "bench compare, bench.objective = 'nonsense'",
         c4_damaged(lambda c, run: c.set_tag(run, "bench.objective", "nonsense"), COMPARE)),
    Case("c4-huge-samples-compare", 4, "bench compare, 144-megapixel samples artifacts", _huge(COMPARE)),
    Case("c4-huge-samples-report", 4, "bench report, 144-megapixel samples artifacts", _huge(REPORT)),
    Case("c5-pg-ctrl-c", 5, "Ctrl-C while PostgreSQL is down",
         skipped("not run here: tests/test_waits.py covers it with a real PostgreSQL outage")),
    Case("c5-server-proc", 5, "bench server --backend-store-uri sqlite:////proc/nope.db", c5_server_proc),
    Case("c5-device-check-proc", 5, "python -m bench.device_check --smoke -o /proc/x", c5_device_check),
    Case("c5-fake-server", 5, "bench run against a server that answers {} to everything", c5_fake_server),
    Case("c6-label-accuracy-dcgan", 6, "objective label_accuracy with dcgan", c6_label_accuracy),
    Case("c6-name-300", 6, "a 300-character study name", c6_name_300),
    Case("c6-path-long", 6, "a study file of a 250-character name", c6_path_long),
    Case("c6-storage-devnull", 6, "--storage /dev/null", c6_storage("devnull")),
    Case("c6-storage-dir", 6, "--storage a folder", c6_storage("dir")),
    Case("c6-trials-2e64", 6, "--trials 2**64 + 1", c6_trials_huge),
    Case("c6-workers-huge", 6, "--workers 1000000", c6_workers_huge),
    Case("c6-same-stem", 6, "another tiny.toml with another budget", c6_same_stem),
    Case("c6-variant-all-failing", 6, "variant = 'all', a plugin variant that always fails", c6_variant_all),
    Case("c7-seed-2e70", 7, "bench eval, a checkpoint with config.seed = 2**70", c7_seed),
    Case("c7-nonascii-password", 7, "a non-ASCII password in --tracking-uri", c7_nonascii_password),
    Case("c7-server-ps-password", 7, "bench server: the password on a command line", c7_ps_password("server")),
    Case("c7-ui-ps-password", 7, "bench ui: the password on a command line", c7_ps_password("ui")),
    Case("c7-sigterm-startup", 7, "SIGTERM 1 s after bench run starts", c7_sigterm_startup),
    Case("c7-ui-sigterm", 7, "SIGTERM to bench ui", c7_ui_sigterm),
    Case("c7-nan-checkpoint", 7, "bench eval, NaN generator weights", c7_nan_checkpoint),
    Case("c7-nan-classifier", 7, "bench eval, a NaN domain classifier", c7_nan_classifier),
    Case("c7-fifo-artifact", 7, "bench report, FIFOs as samples artifacts", c7_fifo_artifact),
    Case("c7-imagefolder-1024", 7, "imagefolder@1024 with dcgan under a 12 GB limit", c7_imagefolder_1024),
]


# -- running and judging ---------------------------------------------------------------------------

WARNING_LINE = re.compile(r"^\S.*:\d+: \w*Warning: |^\s*warnings\.warn\(")


def execute(spec: Spec, cwd: Path) -> tuple[int | None, float, str, str, bool]:
    """Runs the case's command: (exit status, seconds, stdout, stderr, timed out). A status killed
    by signal N is written 128 + N, as a shell does."""
    started = time.monotonic()
    process = subprocess.Popen(spec.argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               errors="replace", start_new_session=True, env=clean_env(spec.env),
                               preexec_fn=spec.preexec)
    process.started = started
    driver = None
    if spec.drive:
        driver = threading.Thread(target=spec.drive, args=(process, spec), daemon=True)
        driver.start()
    timed_out = False
    try:
        stdout, stderr = process.communicate(timeout=spec.timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
    finally:  # also on Ctrl-C: nothing of the case's process group outlives it (a server's children)
        seconds = time.monotonic() - started
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    if driver:
        driver.join(timeout=5)
    code = process.returncode
    return (128 - code if code is not None and code < 0 else code), seconds, stdout, stderr, timed_out


def judge(case: Case, spec: Spec, code: int, seconds: float, stdout: str, stderr: str,
          timed_out: bool) -> tuple[bool, bool, str, str]:
    """(one Error line, no traceback, what came before the Error line, the verdict)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    one_error = len(errors) == 1 and bool(lines) and lines[-1].startswith("Error:")
    no_traceback = "Traceback (most recent call last)" not in stdout + stderr
    before = lines[: lines.index(errors[0])] if one_error else []
    kinds = []
    if any(WARNING_LINE.search(line) for line in before):
        kinds.append("warning")
    if any(line.startswith("Usage:") for line in before):
        kinds.append("usage")
    if before and not kinds:
        kinds.append("other")
    before_error = "+".join(kinds) or ("none" if one_error else "")
    output = stdout + stderr
    why = list(spec.failures)
    if timed_out:
        why.insert(0, f"timed out after {spec.timeout:.0f} s")
    if not no_traceback:
        why.append("traceback")
    if spec.secret and spec.secret in output:
        why.append("password printed")
    for pattern in spec.must:
        if not re.search(pattern, output):
            why.append(f"output lacks /{pattern}/")
    for pattern in spec.must_not:
        if re.search(pattern, output):
            why.append(f"output holds /{pattern}/")
    if spec.limit is not None and seconds > spec.limit and not timed_out:
        why.append(f"{seconds:.1f} s > {spec.limit:.0f} s")
    refused = code == 2 and one_error and not {"warning", "usage"} & set(kinds)
    if not timed_out:
        if spec.expect == "error":
            if code != 2:
                why.append(f"exit {code}, not 2")
            if not one_error:
                why.append("stderr does not end in one Error line")
            why += [f"{kind} text before the Error line" for kind in kinds if kind in ("warning", "usage")]
        elif spec.expect == "works":
            if code != 0:
                why.append(f"exit {code}, not 0 (valid input)")
        elif spec.expect == "either":
            if code != 0 and not refused:
                why.append(f"exit {code}: neither worked (0) nor refused in one Error line (2)")
            elif code == 0 and spec.warns and not re.search(spec.warns, stderr):
                why.append(f"exit 0 with no warning matching /{spec.warns}/: the damage passed silently")
        elif spec.expect == "rebuilt":
            if code == 0 and not re.search(r"rebuil", stderr):
                why.append("exit 0 with no warning: the damaged entry was used silently")
            elif code != 0 and not refused:
                why.append(f"exit {code}: neither rebuilt (0) nor refused in one Error line (2)")
        elif spec.expect == "fails":
            if code in (0, None) or code >= 128:
                why.append(f"exit {code}, not a failure status")
            if not one_error:
                why.append("stderr does not end in one Error line")
        elif spec.expect == "signal":
            if code != 128 + signal.SIGTERM:
                why.append(f"exit {code}, not 143")
        elif spec.expect == "ps":
            if code != 128 + signal.SIGTERM:
                why.append(f"exit {code} after SIGTERM, not 143")
    verdict = "ok" if not why else "FAIL: " + "; ".join(why)
    if spec.notes:
        verdict += f" ({'; '.join(spec.notes)})"
    return one_error, no_traceback, before_error, verdict


def run_case(case: Case, ctx: Context, keep: bool) -> Result:
    folder = Path(tempfile.mkdtemp(prefix=f"{case.id}-", dir=ctx.root))
    blank = dict(exit="", seconds="", one_error_line="", no_traceback="", before_error="", last_line="")
    try:
        try:
            spec = case.build(ctx, folder)
        except Skip as exc:
            return Result(case.id, case.cls, "", "", verdict=f"skipped: {exc}", **blank)
        except Exception as exc:  # noqa: BLE001 - recorded, the other cases go on
            return Result(case.id, case.cls, "", "", verdict=f"setup failed: {type(exc).__name__}: {exc}"[:300],
                          **blank)
        command = abbreviated(shlex.join(["bench" if arg == str(BENCH) else "python" if arg == str(PYTHON) else arg
                                          for arg in spec.argv]))
        code, seconds, stdout, stderr, timed_out = execute(spec, folder)
        one_error, no_traceback, before, verdict = judge(case, spec, code, seconds, stdout, stderr, timed_out)
        last = (stderr.strip().splitlines() or [""])[-1]
        return Result(case.id, case.cls, spec.expect, command, "timeout" if timed_out else str(code),
                      f"{seconds:.2f}", str(one_error), str(no_traceback), before, verdict, last[:240])
    finally:
        if not keep:
            for path in folder.rglob("*"):  # unreadable folders of class 2 cannot be removed otherwise
                with contextlib.suppress(OSError):
                    if path.is_dir() and not path.is_symlink():
                        path.chmod(0o700)
            shutil.rmtree(folder, ignore_errors=True)


def write_csv(path: Path, header: str, results: list[Result]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        handle.write(header + "\n")
        writer = csv.writer(handle)
        names = list(Result.__dataclass_fields__)
        writer.writerow(names)
        for result in results:
            writer.writerow([getattr(result, name) for name in names])


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores"


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    head = git("rev-parse", "HEAD") or "unknown"
    return head + (" (working tree differs)" if git("status", "--porcelain", "--", "bench", "variants") else "")


def table(results: list[Result]) -> str:
    rows = [("id", "class", "exit", "seconds", "verdict")] + [
        (r.id, str(r.cls), r.exit, r.seconds, r.verdict if len(r.verdict) < 110 else r.verdict[:107] + "...")
        for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(widths[i]) if i < 4 else cell for i, cell in enumerate(row))
                     for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "results" / "hostile_inputs.csv",
                        help="the CSV to write [default: results/hostile_inputs.csv]")
    parser.add_argument("--only", help="run only these case ids, separated by commas")
    parser.add_argument("--class", dest="classes", help="run only these classes (1-7), separated by commas")
    parser.add_argument("--list", action="store_true", help="list the case ids and exit")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders (their path is printed)")
    args = parser.parse_args(argv)

    if args.list:
        for case in CASES:
            print(f"{case.id:30s} {case.cls}  {case.summary}")
        print(f"{len(CASES)} cases")
        return 0
    chosen = CASES
    if args.only:
        wanted = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = sorted(set(wanted) - {case.id for case in CASES})
        if unknown:
            parser.error(f"unknown case ids: {', '.join(unknown)} (see --list)")
        chosen = [case for case in CASES if case.id in wanted]
    if args.classes:
        classes = {int(c) for c in args.classes.split(",") if c.strip()}
        chosen = [case for case in chosen if case.cls in classes]
    if not BENCH.exists():
        parser.error(f"no bench command at {BENCH}: run this script with the project's virtual environment")

    header = (f"# command: {shlex.join([Path(sys.executable).name, *sys.argv])}; commit: {commit()}; "
              f"machine: {machine()}; date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}")
    root = Path(tempfile.mkdtemp(prefix="hostile-inputs-"))
    ctx = Context(root)
    results: list[Result] = []
    try:
        for case in chosen:
            result = run_case(case, ctx, args.keep)
            results.append(result)
            write_csv(args.output, header, results)  # after every case: an interrupted run keeps what it measured
            print(f"{result.id:30s} exit {result.exit or '-':>7s}  {result.seconds or '-':>7s} s  {result.verdict}",
                  flush=True)
    except KeyboardInterrupt:
        print("interrupted: writing the cases run so far", file=sys.stderr)
    finally:
        ctx.close()
        if args.keep:
            print(f"kept the case folders in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    write_csv(args.output, header, results)
    print()
    print(header)
    print(table(results))
    slow = [r for r in results if r.seconds and float(r.seconds) > SLOW_S]
    print(f"\nover {SLOW_S:.0f} s: " + (", ".join(f"{r.id} ({float(r.seconds):.1f} s)" for r in slow) or "none"))
    counts = {"ok": 0, "FAIL": 0, "skipped": 0, "setup failed": 0}
    for result in results:
        counts[next(key for key in counts if result.verdict.startswith(key))] += 1
    print(f"{len(results)} cases: " + ", ".join(f"{n} {key}" for key, n in counts.items()) + f"; CSV: {args.output}")
    return 0 if counts["FAIL"] == 0 and counts["setup failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
