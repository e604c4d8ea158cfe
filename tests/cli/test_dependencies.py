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


def _handles_import_error(node: ast.Try) -> bool:
    for handler in node.handlers:
        types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        if any(isinstance(t, ast.Name) and t.id in ("ImportError", "ModuleNotFoundError") for t in types):
            return True
    return False


def _imports(tree: ast.AST, guarded: bool = False):
    """(top-level module, guarded) for every absolute import; guarded: inside `try: ... except ImportError`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import):
            yield from ((alias.name.split(".")[0], guarded) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], guarded
        elif isinstance(node, ast.Try) and _handles_import_error(node):
            for child in node.body:
                yield from _imports(ast.Module(body=[child], type_ignores=[]), True)
            for part in (node.handlers, node.orelse, node.finalbody):
                for child in part:
                    yield from _imports(child, guarded)
        else:
            yield from _imports(node, guarded)


def _imported_modules() -> dict[str, bool]:
    """Top-level module → True when every import of it is guarded (an optional dependency)."""
    out: dict[str, bool] = {}
    for path in (ROOT / "src").rglob("*.py"):
        for name, guarded in _imports(ast.parse(path.read_text(), filename=str(path))):
            out[name] = out.get(name, True) and guarded
    return out


def _imported_top_level_modules() -> set[str]:
    return set(_imported_modules())


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_imported_package_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    def names(specs):
        return {_normalize(re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0]) for spec in specs}

    declared = names(project["dependencies"])
    optional = names(spec for extra in project.get("optional-dependencies", {}).values() for spec in extra)
    modules = {m: g for m, g in _imported_modules().items() if m not in sys.stdlib_module_names and m != "nncompress"}
    dists = packages_distributions()
    undeclared = {}
    for module, guarded in sorted(modules.items()):
        providers = {_normalize(d) for d in dists.get(module, [])}
        if guarded and providers & optional:
            continue  # an optional extra, imported under `try/except ImportError` with a message saying what to install
        assert providers, f"'{module}' is imported under src/ but no installed distribution provides it"
        if not providers & declared:
            undeclared[module] = sorted(providers)
    assert not undeclared, f"imported under src/ (unguarded) but not in [project].dependencies: {undeclared}"


def test_the_scan_sees_the_imports_it_must():
    """Guard the scanner itself: these are imported under src/ today."""
    found = _imported_modules()
    assert {"torch", "numpy", "scipy", "yaml", "typer"} <= set(found)
    assert not any(found[m] for m in ("torch", "numpy", "scipy", "yaml", "typer"))  # plain imports are not "guarded"
    tree = ast.parse("try:\n    import optpkg\nexcept ImportError:\n    pass\nimport hardpkg\n")
    assert dict(_imports(tree)) == {"optpkg": True, "hardpkg": False}
