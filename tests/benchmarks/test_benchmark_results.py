"""The recorded benchmark results are well-formed, honest about their targets, and what the README quotes."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = sorted((ROOT / "benchmarks" / "results").glob("*.json"))
THRESHOLD = re.compile(r"^\s*(>=|<=|>|<|within)\s*([+-]?\d+(?:\.\d+)?)")


def _figures_module():
    spec = importlib.util.spec_from_file_location("readme_figures", ROOT / "benchmarks" / "readme_figures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_there_are_results():
    assert len(RESULTS) >= 6, [p.name for p in RESULTS]


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.stem)
def test_every_result_carries_targets(path):
    data = json.loads(path.read_text())
    targets = data.get("targets")
    assert isinstance(targets, list) and targets, f"{path.name}: no top-level 'targets' list"
    names = [t["name"] for t in targets]
    assert len(names) == len(set(names)), f"{path.name}: duplicate target names"
    for t in targets:
        assert set(t) >= {"name", "target", "measured", "met"}, t
        assert isinstance(t["met"], bool), t
    env = data.get("environment", data)  # older files record python/torch at the top level
    assert {"python", "torch"} <= set(env), f"{path.name}: no environment (versions, threads, CPU ISA)"


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.stem)
def test_met_agrees_with_the_measured_figure(path):
    """Where a target is a plain threshold ('>= 5x', '<= 0.5 pp', 'within 0.5 pp'), `met` must follow from `measured`."""
    for t in json.loads(path.read_text())["targets"]:
        m = THRESHOLD.match(str(t["target"]))
        if not m or isinstance(t["measured"], bool) or not isinstance(t["measured"], (int, float)):
            continue
        op, bound, x = m[1], float(m[2]), float(t["measured"])
        expected = {">=": x >= bound, "<=": x <= bound, ">": x > bound, "<": x < bound, "within": abs(x) <= bound}[op]
        assert t["met"] == expected, f"{path.name}: {t}"


def test_readme_quotes_the_recorded_figures():
    mod = _figures_module()
    text = (ROOT / "README.md").read_text()
    assert mod.BLOCK.search(text), "README has no generated figure blocks"
    assert mod.render_readme(text, mod.load_results()) == text, "README figures differ: run benchmarks/readme_figures.py --write"


def test_threshold_parser_on_hand_examples():
    assert THRESHOLD.match(">= 40x (paper)").groups() == (">=", "40")
    assert THRESHOLD.match("<= 0.5 pp").groups() == ("<=", "0.5")
    assert THRESHOLD.match("within 0.5 pp").groups() == ("within", "0.5")
    assert THRESHOLD.match("rewind > fine-tune") is None
