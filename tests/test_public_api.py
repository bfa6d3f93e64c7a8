"""ddrl's own plugin packages use only the public API (``ddrl.PUBLIC_MODULES``), as a third party must."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import ddrl

PLUGIN_FILES = sorted((Path(__file__).parents[1] / "plugins").glob("*/**/*.py"))


def ddrl_imports(path: Path) -> list[tuple[str, str | None, int]]:
    """``(module, name or None, line)`` of every import of ddrl in a source file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ddrl":
            found.extend((node.module, alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.Import):
            found.extend((a.name, None, node.lineno) for a in node.names if a.name.split(".")[0] == "ddrl")
    return found


def test_the_plugins_import_only_public_modules_and_names():
    assert PLUGIN_FILES, "no plugin sources found"
    offences = [
        f"{path.relative_to(path.parents[2])}:{line}: {module}{'' if name is None else '.' + name}"
        for path in PLUGIN_FILES
        for module, name, line in ddrl_imports(path)
        if module not in ddrl.PUBLIC_MODULES or (name is not None and name.startswith("_"))
    ]
    assert offences == []


@pytest.mark.parametrize("module", ddrl.PUBLIC_MODULES)
def test_every_public_module_imports(module):
    assert importlib.import_module(module) is not None


def test_the_check_would_see_a_private_import(tmp_path):
    source = tmp_path / "bad.py"
    source.write_text("from ddrl.training.trainer import Trainer\nfrom ddrl.objectives.base import _identity\n")
    found = ddrl_imports(source)
    assert ("ddrl.training.trainer", "Trainer", 1) in found and ("ddrl.objectives.base", "_identity", 2) in found
