"""The runner drives the existing methods on their schedules; every example recipe runs (on a data slice)."""
from pathlib import Path

import pytest
import torch
import yaml

from nncompress.core.io import load_weights
from nncompress.pruning.schedules import agp_sparsity
from nncompress.recipes.runner import _Clock, _Gate, run_recipe
from nncompress.training import Callback

RECIPES = Path(__file__).parents[2] / "recipes"


def fast(name: str, **changes) -> dict:
    """An example recipe on a slice of digits with a short pretraining, otherwise unchanged."""
    d = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
    d["data"] = {"name": "digits", "train_samples": 320, "test_samples": 160}
    d["pretrain"] = {"epochs": 2, "lr": 0.05}
    d.update(changes)
    return d


def test_gate_forwards_per_step_hooks_only_inside_its_range():
    seen = []

    class Rec(Callback):
        def on_step_begin(self, step, model):
            seen.append(step)

        def loss(self, model, x, y, output, loss):
            return loss + 1

    clock = _Clock(steps_per_epoch=5)
    gate = _Gate(Rec(), clock, start_step=3, end_step=6)
    losses = []
    for t in range(10):
        clock.step = t
        gate.on_step_begin(t - 2, None)  # the local step is ignored: the gate reports the global one
        losses.append(float(gate.loss(None, None, None, None, torch.tensor(0.0))))
    assert seen == [3, 4, 5]
    assert losses == [0, 0, 0, 1, 1, 1, 0, 0, 0, 0]


def test_agp_follows_the_cubic_at_epoch_starts(tmp_path):
    r = run_recipe(fast("agp"), tmp_path, progress=False)
    # Zhu & Gupta: s_t = 0.9·(1 − (1 − t/3)³) at the start of epochs 0..3, then held
    expected = [0.0, 0.9 * (1 - (2 / 3) ** 3), 0.9 * (1 - (1 / 3) ** 3), 0.9, 0.9, 0.9]
    assert [h["sparsity"] for h in r.history] == pytest.approx(expected, abs=2e-4)
    assert expected[1] == pytest.approx(agp_sparsity(1, 0.0, 0.9, 0, 3))
    assert r.sparsity == pytest.approx(0.9, abs=1e-4)
    assert r.history[0]["lr"] < 0.02 and r.history[-1]["lr"] < 1e-3  # cosine over the whole run, not per phase
    saved = load_weights(tmp_path / "model.safetensors")
    assert set(saved) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"}
    assert float((saved["fc1.weight"] == 0).float().mean()) == pytest.approx(0.9, abs=1e-3)


def test_level_recipe_hits_per_layer_targets():
    r = run_recipe(fast("level"), progress=False, allow_drop=True)  # 320 samples, 2 pretraining epochs: targets, not accuracy
    for name, s in {"fc1": 0.92, "fc2": 0.91, "fc3": 0.74}.items():
        w = dict(r.model.named_modules())[name].weight
        assert float((w == 0).float().mean()) == pytest.approx(s, abs=1 / w.numel())


def test_regularizer_then_global_level():
    r = run_recipe(fast("l1_then_prune"), progress=False, allow_drop=True)  # 320 samples, 2 pretraining epochs: targets, not accuracy
    assert [h["sparsity"] for h in r.history[:3]] == [0.0, 0.0, 0.0]
    assert r.sparsity == pytest.approx(0.85, abs=1e-4)
    assert [h["lr"] for h in r.history] == pytest.approx([0.02] * 4 + [0.002] * 2)  # step schedule at epoch 4


def test_deep_compression_recipe_prunes_then_shares():
    r = run_recipe(fast("deep_compression"), progress=False)
    for name, s in {"fc1": 0.92, "fc2": 0.91, "fc3": 0.74}.items():
        w = dict(r.model.named_modules())[name].weight.detach()
        assert float((w == 0).float().mean()) == pytest.approx(s, abs=2 / w.numel())
        assert len(torch.unique(w[w != 0])) <= 2 ** 5  # a 5-bit codebook


def test_qat_recipe_writes_integer_codes(tmp_path):
    r = run_recipe(fast("qat", training={"epochs": 1, "lr": 0.005}, pretrain={"epochs": 4, "lr": 0.05}), tmp_path, progress=False)
    codes = load_weights(tmp_path / "quantized.safetensors")
    w = [v for k, v in codes.items() if k.endswith("weight_codes")]
    assert len(w) == 4 and all(v.dtype == torch.int8 and int(v.min()) >= -8 and int(v.max()) <= 7 for v in w)  # 4-bit
    assert r.top1_pretrained > 60 and r.top1_final > r.top1_pretrained - 10  # 4-bit LSQ keeps most of the accuracy


def test_agp_qat_kd_keeps_masks_through_qat_and_exports_qdq(tmp_path):
    r = run_recipe(fast("agp_qat_kd", training={"epochs": 5, "lr": 0.02}), tmp_path, progress=False,
                   allow_drop=True)  # 320 samples: masks, QAT and export are checked here, not accuracy
    assert [h["sparsity"] for h in r.history][2:] == pytest.approx([0.8] * 3, abs=1e-3)
    assert hasattr(r.model, "quant_config")
    assert r.sparsity == pytest.approx(0.8, abs=1e-3)
    import onnx

    from nncompress.export import compare_with_torch

    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in onnx.load(tmp_path / "model.onnx").graph.node}
    from nncompress.data import load_dataset

    x = load_dataset("digits").x_test[:160]
    assert compare_with_torch(r.model, tmp_path / "model.onnx", x)["top1_agreement"] >= 95.0  # ORT int8 kernels vs simulation


def test_structured_recipe_thins_the_model_and_exports_onnx(tmp_path):
    r = run_recipe(fast("structured_finetune", training={"epochs": 1, "lr": 0.01}), tmp_path, progress=False)
    from nncompress.architectures import build_model
    from nncompress.export import compare_with_torch

    dense = sum(m.weight.numel() for m in build_model("lenet5", (1, 8, 8), 10).modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))
    assert r.params < 0.7 * dense  # half the MACs removed as whole channels
    x = torch.randn(5, 1, 8, 8)
    assert compare_with_torch(r.model, tmp_path / "model.onnx", x)["max_abs_error"] < 1e-4
    # the saved thinned weights export from the command line too
    import json

    from typer.testing import CliRunner

    from nncompress.cli import app

    res = CliRunner().invoke(app, ["export", "--model", "lenet5", "--data", "digits", "--weights", str(tmp_path / "model.safetensors"),
                                   "--out", str(tmp_path / "cli.onnx"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["max_abs_error"] < 1e-4
