"""What several test modules share: running `bench`, a tiny study, reading a study's trials and
runs back, a throwaway PostgreSQL server, registering test variants, and the learning budgets.
Fixtures are in conftest.py."""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import subprocess
import sys
import tempfile
import warnings
from importlib.metadata import entry_points
from pathlib import Path
from typing import Iterator

import mlflow
import optuna
import pandas as pd
import pytest

from bench import registry
from bench.doctor import Doctor
from bench.registry import Variant
from bench.storage import open_storage

BENCH = str(Path(sys.executable).with_name("bench"))
BUILT_INS = tuple(sorted(entry.name for entry in entry_points(group="bench.variants")
                         if entry.value.startswith("variants.")))
"""The variants ganbench ships, as its package declares them (pyproject.toml's entry points): a new one
is picked up by every test that runs them all."""
TINY_STUDY = """
dataset = "digits"
objective = "fid_domain"
trials = 3
sampler = "random"
pruner = "none"

[budget]
steps = {steps}
eval_every = {eval_every}
eval_samples = 300

[space]
lr = {{ low = 1e-4, high = 1e-3, log = true }}
"""


def write_study(folder: Path, name: str, steps: int = 60, eval_every: int = 30) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(TINY_STUDY.format(steps=steps, eval_every=eval_every))
    return path


def clean_env() -> dict[str, str]:
    """This process's environment without the tracking URI that mlflow.set_tracking_uri exports."""
    return {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}


def bench(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([BENCH, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=clean_env())


def bench_here(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`bench ARGS` in ``cwd``, run in this process (click's CliRunner) as :func:`bench` runs it in its own, for
    the commands that read back what a study recorded (compare, report, leaderboard): a process would add
    seconds of start-up and test nothing more than the many tests that run `bench` as one do."""
    from click.testing import CliRunner

    from bench.cli import main

    with contextlib.chdir(cwd), warnings.catch_warnings():  # the command's own warning display stays its own
        result = CliRunner().invoke(main, list(args), env={"MLFLOW_TRACKING_URI": None})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(["bench", *args], result.exit_code, result.stdout, result.stderr)


def optuna_trials(cwd: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    storage = open_storage(str(cwd / "results" / "optuna" / "journal.log"))
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def mlflow_runs(cwd: Path, study: str) -> pd.DataFrame:
    mlflow.set_tracking_uri(f"sqlite:///{cwd / 'results' / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=[study])


@contextlib.contextmanager
def registered_variants(*classes: type[Variant]) -> Iterator[None]:
    """The test variants ``classes`` registered as a plugin's @register would, and removed again after."""
    saved = dict(registry.variants())  # the entry points loaded first
    try:
        for cls in classes:
            registry.register(cls)
        yield
    finally:
        registry._VARIANTS.clear()
        registry._VARIANTS.update(saved)


# -- datasets a user brings -----------------------------------------------------------------------

def mnist_root(root: Path, *, train: int, test: int) -> Path:
    """A torchvision-layout MNIST root (ROOT/MNIST/raw, the uncompressed IDX files) holding the first
    ``train`` and ``test`` images of Debian's Fashion-MNIST: real images in MNIST's format and layout."""
    from bench.torchvision_files import DEBIAN_FASHION_MNIST, read_idx

    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, count in (("train", train), ("t10k", test)):
        for kind, ndim in (("images-idx3", 3), ("labels-idx1", 1)):
            array = read_idx(DEBIAN_FASHION_MNIST / f"{prefix}-{kind}-ubyte.gz", ndim, "Fashion-MNIST", "")[:count]
            header = bytes([0, 0, 8, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
            (raw / f"{prefix}-{kind}-ubyte").write_bytes(header + array.tobytes())
    return root


FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle-boot")


def image_folder(root: Path, data, count: int, *, by_class: bool = True, rgb_side: int | None = None) -> Path:
    """The first ``count`` real images of ``data`` (an ImageDataset) written as PNG files to
    ROOT/<n>-<class name>/ (numbered, so that the folders sort in label order) or flat in ROOT;
    grayscale as they are, or RGB resized bilinearly to ``rgb_side``."""
    from PIL import Image

    for index in range(count):
        label = int(data.labels[index])
        image = Image.fromarray(data.images[index, 0].numpy())
        if rgb_side:
            image = image.convert("RGB").resize((rgb_side, rgb_side), Image.BILINEAR)
        folder = root / f"{label}-{FASHION_CLASSES[label]}" if by_class else root
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{index:05d}.png")
    return root


# -- files no one may read -------------------------------------------------------------------------

def modes_bind() -> bool:
    """Whether a file with mode 000 is unreadable to this process: not so for root with its usual
    capabilities, which read anything whatever the mode."""
    with tempfile.NamedTemporaryFile() as probe:
        os.chmod(probe.name, 0)
        return not os.access(probe.name, os.R_OK)


WITHOUT_OVERRIDES = ("setpriv", "--inh-caps=-dac_override,-dac_read_search",
                     "--bounding-set=-dac_override,-dac_read_search")
"""Runs a command without the two capabilities that let root read a file whatever its mode."""


def where_modes_bind(test):
    """A test of files this process may not read, run where file modes bind: as it is for a user they bind
    on; for root, in a pytest process of its own without the capabilities that override them (a process
    start, hence e2e)."""
    if modes_bind():
        return test

    @functools.wraps(test)
    def in_a_process_where_modes_bind(*args, **kwargs):
        node = os.environ["PYTEST_CURRENT_TEST"].rsplit(" ", 1)[0]
        result = subprocess.run([*WITHOUT_OVERRIDES, sys.executable, "-m", "pytest", node, "-q", "-p",
                                 "no:cacheprovider"], cwd=Path(__file__).parent.parent, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0 and " passed" in result.stdout and "skipped" not in result.stdout, \
            result.stdout[-3000:] + result.stderr[-2000:]

    return pytest.mark.e2e(in_a_process_where_modes_bind)


# -- PostgreSQL ------------------------------------------------------------------------------------

PASSWORD = "s3cret-Pw-7"
PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda path: int(path.parent.name), default=None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def as_postgres(*command: object) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the postgres user then."""
    command = [str(part) for part in command]
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


class Postgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1 with a password-protected user 'bench'."""

    def __init__(self, folder: Path, port: int):
        self.folder, self.port = folder, port

    def pg_ctl(self, *action: str) -> None:
        subprocess.run(as_postgres(PG_BIN / "pg_ctl", "-D", self.folder / "data", "-l", self.folder / "server.log",
                                   "-w", "-o", f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1",
                                   *action), check=True, capture_output=True)

    def psql(self, sql: str) -> None:
        subprocess.run(as_postgres(PG_BIN / "psql", "-h", self.folder, "-p", self.port, "-U", "postgres",
                                   "-v", "ON_ERROR_STOP=1", "-qc", sql), check=True, capture_output=True)

    def database(self, name: str) -> str:
        """A new database owned by 'bench', as a URL with the password in it."""
        self.psql(f"CREATE DATABASE {name} OWNER bench")
        return self.url(name)

    def url(self, name: str, password: str = PASSWORD) -> str:
        return f"postgresql://bench:{password}@127.0.0.1:{self.port}/{name}"


def doctor_of(trainer) -> Doctor:
    """The training doctor watching ``trainer`` (a bench.engine.Trainer)."""
    [doctor] = [observer for observer in trainer.observers if isinstance(observer, Doctor)]
    return doctor
