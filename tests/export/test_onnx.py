"""ONNX export: checker-valid, ONNX Runtime matches PyTorch (float: ~1e-6; int8 QDQ: within a few output steps)."""
import json

import onnx
import pytest
import torch
from typer.testing import CliRunner

from nncompress.architectures import build_model
from nncompress.cli import app
from nncompress.data import load_dataset
from nncompress.export import (
    compare_with_torch,
    export_onnx,
    onnx_latency_ms,
    run_onnx,
    to_onnx,
)
from nncompress.pruning import LevelPruner
from nncompress.quantization import quantize_static


@pytest.fixture(scope="module")
def digits():
    torch.set_num_threads(1)
    return load_dataset("digits").subset(256, 128)


def test_float_export_matches_pytorch_with_dynamic_batch(digits, tmp_path):
    torch.manual_seed(0)
    net = build_model("lenet5", digits.input_shape, 10).eval()
    path = export_onnx(net, digits.x_test[:1], tmp_path / "m.onnx")
    onnx.checker.check_model(onnx.load(path))
    cmp = compare_with_torch(net, path, digits.x_test[:7])  # exported with batch 1, run with 7
    assert cmp["max_abs_error"] < 1e-5 and cmp["top1_agreement"] == 100.0
    assert onnx_latency_ms(path, digits.x_test[:1], repeats=5) > 0


def test_pruned_zeros_survive_export(digits):
    torch.manual_seed(0)
    net = LevelPruner(0.75).prune(build_model("lenet300", digits.input_shape, 10)).eval()
    model = onnx.load_from_string(to_onnx(net, digits.x_test[:1]))
    fc1 = next(t for t in model.graph.initializer if tuple(t.dims) == (300, 64))
    w = onnx.numpy_helper.to_array(fc1)
    assert (w == 0).mean() == pytest.approx(0.75, abs=1 / w.size)
    assert float(abs(run_onnx(model.SerializeToString(), digits.x_test[:4]) - net(digits.x_test[:4]).detach().numpy()).max()) < 1e-5


def test_int8_qdq_runs_on_integer_kernels_close_to_simulation(digits):
    torch.manual_seed(0)
    net = build_model("lenet5", digits.input_shape, 10).eval()
    gm = quantize_static(net, [digits.x_train[i:i + 64] for i in range(0, 256, 64)], bits=8)
    blob = to_onnx(gm, digits.x_test[:1])
    ops = {n.op_type for n in onnx.load_from_string(blob).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    cmp = compare_with_torch(gm, blob, digits.x_test)
    with torch.no_grad():
        step = float(gm.eval()(digits.x_test).abs().max()) / 127  # one output quantization step, roughly
    assert cmp["max_abs_error"] < 3 * step and cmp["top1_agreement"] >= 95.0


def test_export_cli_json_and_bad_weights(tmp_path):
    res = CliRunner().invoke(app, ["export", "--model", "lenet300", "--data", "digits", "--out", str(tmp_path / "m.onnx"), "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert rep["max_abs_error"] < 1e-5 and rep["onnx_bytes"] == (tmp_path / "m.onnx").stat().st_size
    import sys
    from unittest import mock

    from nncompress.cli import main

    with mock.patch.object(sys, "argv", ["nncompress", "export", "--weights", str(tmp_path / "none.safetensors")]), pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2


def test_torch_export_round_trip(digits, tmp_path):
    from nncompress.export.torch_export import save_program

    torch.manual_seed(0)
    net = LevelPruner(0.5).prune(build_model("lenet5", digits.input_shape, 10)).eval()
    path = save_program(net, digits.x_test[:1], tmp_path / "m.pt2")
    loaded = torch.export.load(path).module()
    with torch.no_grad():
        assert torch.allclose(loaded(digits.x_test[:5]), net(digits.x_test[:5]), atol=1e-6)
    assert hasattr(net.conv1, "parametrizations")  # the original keeps its masks
