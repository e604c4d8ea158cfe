"""benchmarks/any_model.py: its size and fidelity helpers on hand-worked cases, and its results file's shape."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
RESULT = ROOT / "benchmarks" / "results" / "any_model.json"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("any_model_bench", ROOT / "benchmarks" / "any_model.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_state_bytes_counts_a_tied_tensor_once(bench):
    emb, head = nn.Embedding(10, 4), nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = nn.ModuleDict({"emb": emb, "head": head})
    assert bench.state_bytes(model) == 10 * 4 * 4  # one 10x4 fp32 table, not two
    assert bench.state_bytes(nn.Linear(4, 3)) == (12 + 3) * 4


def test_pruned_bytes_is_csr_of_the_kept_weights_hand_worked(bench):
    from nncompress.pruning.pruners import LevelPruner

    lin = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0, 0.1, 0.2], [3.0, 0.3, -4.0, 0.4]]))
    model = LevelPruner(0.5).prune(nn.Sequential(lin))
    # 4 kept of 8; CSR: 4 values x 32 bits + (4 column indices + 3 row pointers) x 8 bits (the smallest machine
    # index width that holds 4) = 184 bits = 23 bytes; the dense original (32 B) and the bool mask (8 B) are not stored
    assert bench.pruned_bytes(model) == math.ceil((4 * 32 + 7 * 8) / 8) == 23


def test_compare_hand_worked(bench):
    ref = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # mean over samples (0.5, 0.5): centred rows (±0.5, ∓0.5)
    out = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # centred: (0.5, -0.5) twice; dot with ref = 0.25+0.25-0.25-0.25 = 0
    # uncentred: rows (1,0)·(1,0) = 1, (0,1)·(1,0) = 0; |ref| = |out| = sqrt 2: cos = 1/2
    assert bench.compare(ref, out) == {"cosine": 0.0, "cosine_uncentred": 0.5, "top1_agreement": 50.0}
    # a common offset does not flatter the centred figure: ref + 100 vs out + 100 gives the same
    assert bench.compare(ref + 100, out + 100)["cosine"] == 0.0
    assert bench.compare(ref + 100, out + 100)["cosine_uncentred"] > 0.9999  # ... while the uncentred one is ~1
    assert bench.compare(ref, ref * 1.0) == {"cosine": 1.0, "cosine_uncentred": 1.0, "top1_agreement": 100.0}
    with pytest.raises(RuntimeError, match="NaN"):
        bench.compare(ref, torch.full((2, 2), float("nan")))


def test_one_line_keeps_type_and_first_line(bench):
    assert bench.one_line(ValueError("bad shape\ntraceback detail")) == "ValueError: bad shape"


@pytest.mark.skipif(not RESULT.exists(), reason="benchmarks/results/any_model.json not produced yet")
def test_results_matrix_is_complete_and_honest():
    data = json.loads(RESULT.read_text())
    matrix, methods = data["matrix"], data["methods"]
    assert len(matrix) >= 10 and len(methods) == 11
    counts = {"ok": 0, "n/a": 0, "error": 0}
    for arch, row in matrix.items():
        assert list(row) == methods, arch
        for method, cell in row.items():
            counts[cell["status"]] += 1
            if cell["status"] == "ok":
                assert math.isfinite(cell["fidelity"]) and cell["size_ratio"] > 0, (arch, method)
                assert -1.0 <= cell["cosine"] <= 1.0 + 1e-9 and 0.0 <= cell["top1_agreement"] <= 100.0
            elif cell["status"] == "error":
                assert ": " in cell["message"] and "\n" not in cell["message"], (arch, method)
            else:
                assert cell["why"], (arch, method)
    assert counts == data["cell_counts"]
    first = data["targets"][0]
    assert first["measured"] == counts["error"] and first["met"] == (counts["error"] == 0)
