"""The dependency direction reactor <- handlers <- servers, read off the source with `ast`:
a lower package never imports a higher one, not even under TYPE_CHECKING or in a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"reactor": {"handlers", "servers"}, "handlers": {"servers"}}


def imported_packages(path: Path) -> set[str]:
    """Top-level names of every absolute import in `path` (relative ones stay inside)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_layers_do_not_import_higher_ones(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no sources found under {package}/"
    wrong = {str(f.relative_to(ROOT)): sorted(imported_packages(f) & FORBIDDEN[package])
             for f in files}
    assert not {f: names for f, names in wrong.items() if names}


def test_the_checker_sees_imports_hidden_under_type_checking(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                      "    from servers.base import BaseServer\n"
                      "def f():\n    import handlers.io\nfrom . import sibling\n")
    assert imported_packages(sample) == {"typing", "servers", "handlers"}
