"""Every third-party module imported anywhere under src/ is a declared dependency in pyproject.toml.

A module that is only present because another package happens to pull it in (scipy came with scikit-learn)
works on the developer's machine and breaks a user's install the day that package drops it; `click` leaving
typer 0.29 is how the CLI's error path broke. This test reads the imports with `ast`, so nothing is executed.
"""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imported_top_level_modules() -> set[str]:
    names = set()
    for path in (ROOT / "src").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_imported_package_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_normalize(re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0]) for spec in project["dependencies"]}
    third_party = {m for m in _imported_top_level_modules() if m not in sys.stdlib_module_names and m != "nncompress"}
    dists = packages_distributions()
    undeclared = {}
    for module in sorted(third_party):
        providers = {_normalize(d) for d in dists.get(module, [])}
        assert providers, f"'{module}' is imported under src/ but no installed distribution provides it"
        if not providers & declared:
            undeclared[module] = sorted(providers)
    assert not undeclared, f"imported under src/ but not in [project].dependencies: {undeclared}"


def test_the_scan_sees_the_imports_it_must():
    """Guard the scanner itself: these are imported under src/ today."""
    found = _imported_top_level_modules()
    assert {"torch", "numpy", "scipy", "yaml", "typer"} <= found
