"""Shared fixtures: real datasets, the scorer, throwaway servers and project folders."""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bench.data import ImageDataset, load_dataset
from bench.scoring import Scorer
from tests.helpers import PASSWORD, PG_BIN, Postgres, as_postgres, free_port, registered_variants


def pytest_configure(config):
    """Under pytest-xdist (`make test` runs two workers), the workers share the cores: each worker, and
    every process it starts, gets its share of torch's threads instead of all of them."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, len(os.sched_getaffinity(0)) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    """Tests that take the `postgres` fixture are marked `postgres` (select or leave them out with -m).
    The learning checks train every variant for minutes each: they run only when asked for by name
    (`make learning`: -m learning), whatever else -m selects."""
    for item in items:
        if "postgres" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)
    heavy_files_first(items)
    if "learning" in (config.getoption("markexpr") or ""):
        return
    learning = [item for item in items if item.get_closest_marker("learning")]
    if learning:
        config.hook.pytest_deselected(items=learning)
        items[:] = [item for item in items if not item.get_closest_marker("learning")]


def heavy_files_first(items: list) -> None:
    """Test files with the most e2e tests (trainings, studies, servers: the long ones) first, each file's
    tests in their own order. `make test` hands whole files to its two workers in this order
    (--dist loadfile --no-loadscope-reorder), so the long files start early and the short ones fill in
    at the end, instead of one worker finishing minutes before the other."""
    e2e = collections.Counter(item.path for item in items if item.get_closest_marker("e2e"))
    count = collections.Counter(item.path for item in items)
    items.sort(key=lambda item: (-e2e[item.path], -count[item.path], str(item.path)))


@pytest.fixture(scope="session")
def postgres():
    assert PG_BIN is not None, "PostgreSQL is not installed: `make test` installs Debian's postgresql"
    folder = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    subprocess.run(as_postgres(PG_BIN / "initdb", "-D", folder / "data", "-U", "postgres", "--auth-local=trust",
                               "--auth-host=scram-sha-256"), check=True, capture_output=True)
    server = Postgres(folder, free_port())
    server.pg_ctl("start")
    try:
        server.psql(f"CREATE USER bench PASSWORD '{PASSWORD}'")
        yield server
    finally:
        subprocess.run(as_postgres(PG_BIN / "pg_ctl", "-D", folder / "data", "-m", "immediate", "stop"),
                       capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def registered():
    """registered(*classes): registers test variants for this test only, as a plugin's @register does."""
    with contextlib.ExitStack() as stack:
        yield lambda *classes: stack.enter_context(registered_variants(*classes))


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    """tests/plugins/ganbench_test_plugin pip-installed (with its entry points) into a folder of its
    own: put it on PYTHONPATH and `bench` finds its variants as a user's installed package. Built from a
    copy of its source, since the build writes beside it and each pytest-xdist worker builds its own."""
    source = tmp_path_factory.mktemp("plugin") / "ganbench_test_plugin"
    shutil.copytree(Path(__file__).parent / "plugins" / "ganbench_test_plugin", source,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True)
    return target


@pytest.fixture(scope="session")
def fashion_train() -> ImageDataset:
    return load_dataset("fashion-mnist", "train")


@pytest.fixture(scope="session")
def fashion_test() -> ImageDataset:
    return load_dataset("fashion-mnist", "test")


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def scorer(feature_cache) -> Scorer:
    """fid_domain and class metrics against Fashion-MNIST's 10,000 test images."""
    return Scorer("fashion-mnist", "domain", cache_dir=feature_cache)


@pytest.fixture(scope="session")
def project_folder(scorer, feature_cache, tmp_path_factory):
    """project_folder(name) -> a fresh folder to run `bench` in, its results/cache already holding the real
    test-split features of Fashion-MNIST and digits, the datasets its studies train on (computing them is a
    tested path of its own, not repeated here)."""
    Scorer("digits", "domain", cache_dir=feature_cache)

    def make(name: str) -> Path:
        folder = tmp_path_factory.mktemp(name)
        shutil.copytree(feature_cache, folder / "results" / "cache")
        return folder

    return make


