"""No module reaches into another's private names (`_x`): not the package, not the tests,
not the benchmarks. A test keeps its own helpers (`_images` in a test file) local."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest
from conftest import REPO

FOLDERS = ("hiseg_jax", "tests", "benchmarks")


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _own_module(path: Path) -> str:
    """`hiseg_jax.engine.step` for hiseg_jax/engine/step.py, "" outside the package."""
    if not path.is_relative_to(REPO / "hiseg_jax"):
        return ""
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def private_uses(path: Path) -> list[str]:
    """`file:line name` for every private hiseg_jax name that `path` imports from another
    module or reads as an attribute of an imported hiseg_jax module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    own = _own_module(path)
    modules: dict[str, str] = {}  # local alias -> hiseg_jax module it is bound to
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("hiseg_jax"):
                    modules[alias.asname or alias.name.split(".")[0]] = alias.name
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hiseg_jax"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if _is_private(alias.name) and node.module != own:
                    found.append(f"{path}:{node.lineno} from {node.module} import {alias.name}")
                elif _is_module(full):
                    modules[alias.asname or alias.name] = full
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and _is_private(node.attr)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and modules[node.value.id] != own
        ):
            found.append(f"{path}:{node.lineno} {modules[node.value.id]}.{node.attr}")
    return found


def test_no_private_name_crosses_a_module():
    files = [f for folder in FOLDERS for f in sorted((REPO / folder).rglob("*.py"))]
    assert len(files) > 50
    uses = [use for f in files for use in private_uses(f)]
    assert not uses, "private names used across modules:\n" + "\n".join(uses)


@pytest.mark.parametrize(
    "source, count",
    [
        ("from hiseg_jax.spectral.partition import _partition_batch\n", 1),
        ("from hiseg_jax.spectral import kmeans as km\nkm._seed(1)\n", 1),
        ("import hiseg_jax.features\nhiseg_jax.features.compiled_features\n", 0),
        ("from hiseg_jax import __version__\n", 0),
    ],
)
def test_the_check_sees_imports_and_module_attributes(tmp_path, source, count):
    path = tmp_path / "probe.py"
    path.write_text(source)
    assert len(private_uses(path)) == count
