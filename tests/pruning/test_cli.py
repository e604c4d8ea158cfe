"""`nncompress prune` and `nncompress sensitivity`: files written, numbers consistent, bad input exits 2."""
import json
import subprocess
import sys
from pathlib import Path

import torch
import typer
from typer.testing import CliRunner

from nncompress.commands.pruning import register
from nncompress.core.io import load_weights, save_weights
from nncompress.pruning import get_mask

NNCOMPRESS = Path(sys.executable).with_name("nncompress")


def _app():
    app = typer.Typer()
    register(app)
    return app


def test_prune_level_writes_finalized_weights(tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "pruned.safetensors"
    res = CliRunner().invoke(_app(), ["prune", "--model", "lenet300", "--data", "digits", "--sparsity", "0.9",
                                      "--train-epochs", "2", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    sd = load_weights(out)
    assert sorted(sd) == ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight", "fc3.bias", "fc3.weight"]  # no masks left
    for name, numel in {"fc1": 64 * 300, "fc2": 300 * 100, "fc3": 100 * 10}.items():
        zeros = int((sd[f"{name}.weight"] == 0).sum())
        assert zeros == round(0.9 * numel)
        assert report["sparsity"][name] == zeros / numel
    assert report["total_sparsity"] == round(0.9 * 49200) / 49200
    assert 0.0 <= report["top1_after"] <= report["top1_before"] <= 100.0

    # starting from those weights, a global magnitude prune keeps the zeros and saves plain keys again
    out2 = tmp_path / "again.safetensors"
    res = CliRunner().invoke(_app(), ["prune", "--weights", str(out), "--criterion", "magnitude", "--threshold", "0.05",
                                      "--out", str(out2), "--json"])
    assert res.exit_code == 0, res.output
    sd2 = load_weights(out2)
    w1, w2 = sd["fc1.weight"], sd2["fc1.weight"]
    assert torch.equal(w2, torch.where(w1.abs() > 0.05, w1, torch.zeros_like(w1)))


def test_prune_loads_masked_checkpoints(tmp_path):
    from nncompress.architectures import build_model
    from nncompress.pruning import LevelPruner

    model = build_model("lenet300", (1, 8, 8), 10)
    LevelPruner({"fc1": 0.5}).prune(model)
    save_weights(model.state_dict(), tmp_path / "masked.safetensors")
    assert get_mask(model.fc1) is not None
    res = CliRunner().invoke(_app(), ["prune", "--weights", str(tmp_path / "masked.safetensors"), "--sparsity", "0.0",
                                      "--out", str(tmp_path / "o.safetensors"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["sparsity"]["fc1"] == 0.5


def test_sensitivity_writes_json_and_png(tmp_path):
    torch.set_num_threads(1)
    res = CliRunner().invoke(_app(), ["sensitivity", "--levels", "0,0.5,0.95", "--layers", "fc2,fc3", "--train-epochs", "2",
                                      "--out", str(tmp_path / "s"), "--max-drop", "3", "--json"])
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "s" / "sensitivity.json").read_text())
    assert saved == json.loads(res.stdout)
    assert saved["levels"] == [0.0, 0.5, 0.95] and list(saved["metrics"]) == ["fc2", "fc3"]
    assert saved["meta"]["weights"] == "trained-quick"
    for layer, curve in saved["metrics"].items():
        ok = [lv for lv, m in zip(saved["levels"], curve) if saved["baseline"] - m <= 3.0]
        assert saved["targets"][layer] == max(ok)
    assert (tmp_path / "s" / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_sparsity_exits_2_with_one_line(tmp_path):
    proc = subprocess.run([str(NNCOMPRESS), "prune", "--sparsity", "1.5", "--out", str(tmp_path / "x.safetensors")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "sparsity" in lines[0] and "[0, 1)" in lines[0]
    assert not (tmp_path / "x.safetensors").exists()
