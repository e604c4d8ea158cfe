import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from nncompress.cli import app
from nncompress.core.errors import UserError

FAST = ["--model", "lenet5", "--data", "digits", "--subset", "300", "--train-epochs", "1", "--calib-batches", "1",
        "--repeats", "3", "--batch-size", "8"]


def test_quantize_static_json_and_output(tmp_path):
    out = tmp_path / "q.safetensors"
    r = CliRunner().invoke(app, ["quantize", *FAST, "--json", "--output", str(out), "--onnx", str(tmp_path / "q.onnx")])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output[r.output.index("{"):])
    assert rep["mode"] == "static" and rep["quantized_layers"] == ["conv1", "conv2", "fc1", "fc2"]
    assert 3.5 < rep["size_ratio"] < 4.0  # int8 codes + per-channel scales + fp32 biases vs fp32
    for key in ("fp32_top1", "int8_top1", "fp32_latency_ms", "int8_latency_ms", "speedup", "kernel_max_abs_error"):
        assert key in rep
    assert rep["kernel_max_abs_error"] <= rep["kernel_output_step"] * 1.001
    assert (tmp_path / "q.onnx").stat().st_size == rep["onnx_bytes"] and rep["onnx_top1"] > 0
    assert rep["onnx_max_abs_error"] <= rep["onnx_output_step"] * 1.001
    tensors = load_file(out)
    assert str(tensors["conv1.weight_codes"].dtype) == "torch.int8"
    assert tensors["conv1.weight_scale"].shape == (20,)


def test_quantize_dynamic_lists_skipped_layers():
    r = CliRunner().invoke(app, ["quantize", *FAST, "--mode", "dynamic"])
    assert r.exit_code == 0, r.output
    assert "skipped conv1" in r.output and "latency" in r.output


def _run(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("nncompress")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)


def test_bad_bits_exits_2_with_one_line():
    p = _run("quantize", "--bits", "17")
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "bit width" in lines[0]


@pytest.mark.parametrize("args,message", [
    (["--bits", "0"], "bit width"),
    (["--mode", "fp8"], "--mode"),
    (["--data", "nowhere.npz"], "not found"),
    (["--calibration", "best"], "unknown calibration"),
    (["--mode", "dynamic", "--onnx", "x.onnx"], "--onnx needs"),
])
def test_bad_input_is_a_user_error(args, message):
    r = CliRunner().invoke(app, ["quantize", *FAST, *args])
    assert isinstance(r.exception, UserError) and message in str(r.exception)


def test_accumulators_command_values():
    r = CliRunner().invoke(app, ["accumulators", "--model", "lenet5", "--acc-bits", "24", "--json"])
    assert r.exit_code == 0, r.output
    rows = {row["layer"]: row for row in json.loads(r.output)}
    assert rows["conv2"]["needed_bits"] == 25 and not rows["conv2"]["fits"] and rows["conv1"]["fits"]


def test_mixed_precision_command_reports_bits_per_layer():
    r = CliRunner().invoke(app, ["mixed-precision", "--model", "lenet5", "--data", "digits", "--subset", "300", "--train-epochs", "1",
                                 "--budget-bytes", "120000", "--bits-options", "2,4,8", "--calib-batches", "1", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output[r.output.index("{"):])
    assert set(res["bits"]) == {"conv1", "conv2", "fc1", "fc2"} and res["weight_bytes"] <= 120000
    bad = CliRunner().invoke(app, ["mixed-precision", "--budget-bytes", "10", "--bits-options", "2,x"])
    assert isinstance(bad.exception, UserError)
