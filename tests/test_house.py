"""The shape of the house: bench/ knows no particular variant, its modules import one another
without a cycle, and the engine knows its observers only through their interface."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from bench.registry import TIPS, get_variant
from tests.helpers import BUILT_INS

BENCH = Path(__file__).resolve().parent.parent / "bench"
CONTRACT = BENCH / "registry.py"
"""The variant contract: the one file of bench/ that may name what variants share (tips, the
reference variant of benchmarks)."""
SHARED = {"lr", "beta1", "beta2", "loss", *TIPS}
"""Hyperparameters of the contract itself (the optimiser's, the tips), and "loss", a word every
module uses for its own losses."""


def code_names(path: Path) -> set[str]:
    """The identifiers, attribute names and string constants of a module, docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            names.add(node.value)
    return names


def test_readmes_layout_names_every_module_of_bench():
    readme = (BENCH.parent / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    layout = layout[:layout.index("    variants/")]
    named = set(re.findall(r"\w+", layout))
    assert [path.stem for path in sorted(BENCH.rglob("*.py")) if path.stem not in named] == []


def test_bench_names_no_variant_and_no_variant_hyperparameter():
    private = {key for name in BUILT_INS for key in get_variant(name).hparams} - SHARED
    assert {"clip_c", "n_critic", "gp_lambda"} <= private
    for path in sorted(BENCH.rglob("*.py")):
        if path != CONTRACT:
            assert not code_names(path) & (set(BUILT_INS) | private), (path.name, code_names(path) & (set(BUILT_INS) | private))


def module_name(path: Path) -> str:
    """bench/engine.py: bench.engine; bench/__init__.py: bench (any depth)."""
    parts = path.relative_to(BENCH.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def bench_imports() -> dict[str, set[str]]:
    """module -> the bench modules it imports, at the top or inside a function."""
    modules = {module_name(path) for path in BENCH.rglob("*.py") if path.name != "__init__.py"}  # bench's is lazy
    graph = {}
    for path in BENCH.rglob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bench"):
                imported |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
        graph[module_name(path)] = imported & modules
    return graph


def test_no_import_cycle_in_bench():
    graph = bench_imports()
    assert graph["bench.cli"] and graph["bench.engine"], "the walk finds imports"

    def visit(module: str, path: list[str]) -> None:
        for imported in sorted(graph[module]):
            assert imported not in path, " -> ".join(path + [imported])
            visit(imported, path + [imported])

    for module in graph:
        visit(module, [module])


def test_the_engine_knows_observers_only_through_their_interface():
    """The doctor is an observer like tracking and pruning: the engine neither imports nor names it."""
    assert "bench.doctor" not in bench_imports()["bench.engine"]
    assert "Doctor" not in code_names(BENCH / "engine.py")
