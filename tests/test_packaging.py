"""ganbench as installed: a wheel that carries the study files, and imports that stay light for
plugins and `bench list`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("optuna", "mlflow", "pandas")
"""What a plugin or `bench list` has no use for and would wait for at every start."""


@pytest.mark.parametrize("code", ["import bench.registry",
                                  "from bench.cli import main\ntry: main(['list'])\nexcept SystemExit: pass"],
                         ids=["plugin", "bench list"])
def test_a_plugin_and_bench_list_import_no_optuna_mlflow_or_pandas(code):
    report = f"\nimport sys\nprint(*sorted(set({HEAVY!r}) & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code + report], capture_output=True, text=True, check=True)
    assert result.stdout.splitlines()[-1] == ""


def test_an_installed_wheel_finds_the_shipped_studies(tmp_path):
    source = tmp_path / "source"  # a copy, so that the build leaves nothing in the checkout
    for folder in ("bench", "variants", "studies"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for file in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / file, source)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(source)], check=True)
    wheel, = tmp_path.glob("ganbench-*.whl")
    studies = sorted(path.stem for path in (ROOT / "studies").glob("*.toml"))
    assert "quick" in studies
    assert sorted(Path(name).stem for name in zipfile.ZipFile(wheel).namelist()
                  if name.startswith("bench/studies/")) == studies

    # Installed before this environment's packages are on the venv's path: pip cannot see, let alone
    # replace, the ganbench installed here.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
                    "--no-deps", str(wheel)], check=True)
    # torch, optuna, ... from this environment, put on the path after the wheel's bench; a bare path in a
    # .pth file skips that folder's own .pth files, so an editable ganbench there stays out.
    site, = venv.glob("lib/python*/site-packages")
    (site / "harness.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([str(venv / "bin" / "bench"), "run", "--study", "no_such_study"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert f"{site.resolve()}/bench/studies/no_such_study.toml does not exist" in result.stderr
    assert f"available: {', '.join(studies)} " in result.stderr
