"""`nncompress quantize` with the PTQ ladder flags (issue 14): the rungs run from the CLI, W4A8 and W4A4 are
accepted, nonsense combinations are refused in one line, and the accuracy guard still judges the ladder's result.

One LeNet-5 is trained once (3 epochs on 600 digits, about 87 % top-1) and passed to every call with --weights,
so each call costs a quantization and its measurement, not a training run."""
import json

import pytest
import torch

from nncompress.architectures import build_model
from nncompress.core.io import save_weights
from nncompress.data import load_dataset, make_loaders
from nncompress.training import TrainConfig, evaluate, train

SUBSET = 600
LAYERS = ["conv1", "conv2", "fc1", "fc2"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.set_num_threads(1)
    ds = load_dataset("digits", seed=0)
    ds = ds.subset(SUBSET, SUBSET // 4)  # what --subset 600 gives the command
    torch.manual_seed(0)
    net = build_model("lenet5", ds.input_shape, ds.num_classes)
    train_loader, test_loader = make_loaders(ds, seed=0)
    train(net, train_loader, TrainConfig(epochs=3, lr=0.05, seed=0, progress=False))
    assert evaluate(net.eval(), test_loader) > 70  # a model with accuracy to lose, or the guard tests mean nothing
    path = tmp_path_factory.mktemp("ladder") / "lenet5.safetensors"
    save_weights(net.state_dict(), path)
    return str(path)


def _args(weights: str, *extra: str) -> list[str]:
    return ["quantize", "--model", "lenet5", "--data", "digits", "--subset", str(SUBSET), "--weights", weights,
            "--calib-batches", "2", "--repeats", "2", "--batch-size", "8", "--threads", "1", *extra]


def _report(out: str) -> dict:
    return json.loads(out[out.index("{"):])


def test_cle_and_empirical_bias_correction_run_and_are_reported(run_cli, weights):
    code, out, err = run_cli(_args(weights, "--cle", "--bias-correction", "empirical", "--granularity", "tensor", "--json"))
    assert code == 0, err
    rep = _report(out)
    lad = rep["ptq_ladder"]
    assert lad["steps"] == ["fold_bn", "cross_layer_equalization", "calibrate", "bias_correction_empirical"]
    assert lad["equalized_pairs"] == [["conv1", "conv2"], ["fc1", "fc2"]] and lad["bias_corrected"] == LAYERS
    assert rep["quantized_layers"] == LAYERS and rep["granularity"] == "tensor"
    assert lad["ladder_top1"] == rep["quantized_top1"] and lad["gain_pp"] == pytest.approx(lad["ladder_top1"] - lad["static_top1"])
    assert rep["fp32_top1"] - rep["quantized_top1"] <= 5.0  # W8A8: the guard passed on the ladder's own result
    assert "int8_top1" in rep  # the ladder's graph lowers to the int8 kernels like a plain static one


def test_w4a8_adaround_per_channel_lowers_reconstruction_error(run_cli, weights):
    code, out, err = run_cli(_args(weights, "--bits", "4", "--act-bits", "8", "--granularity", "channel", "--adaround",
                                   "--adaround-steps", "50", "--json"))
    assert code == 0, err
    rep = _report(out)
    lad = rep["ptq_ladder"]
    assert (rep["bits"], rep["act_bits"]) == (4, 8) and lad["steps"] == ["fold_bn", "calibrate", "adaround"]
    errors = lad["adaround_error"]
    assert list(errors) == LAYERS
    assert sum(e["adaround"] for e in errors.values()) < sum(e["nearest"] for e in errors.values())


def test_w4a4_per_tensor_is_accepted_and_says_what_did_not_apply(run_cli, weights):
    # W4A4 per tensor can lose more than 5 pp on this small net: --allow-drop keeps the result either way
    code, out, err = run_cli(_args(weights, "--bits", "4", "--act-bits", "4", "--granularity", "tensor", "--cle",
                                   "--bias-correction", "analytic", "--allow-drop", "--json"))
    assert code == 0, err
    rep = _report(out)
    assert (rep["bits"], rep["act_bits"]) == (4, 4) and "simulated only" in rep["int8_note"]
    lad = rep["ptq_ladder"]
    # LeNet-5 has no BatchNorm: the data-free correction has nothing to work from, and the report says so
    assert lad["bias_corrected"] == [] and "bias_correction_analytic" not in lad["steps"]
    assert "BatchNorm" in lad["not_applied"]["bias_correction_analytic"]


def test_the_accuracy_guard_judges_the_ladder_result(run_cli, weights):
    code, out, err = run_cli(_args(weights, "--bits", "2", "--act-bits", "2", "--granularity", "tensor", "--cle"))
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: quantization") and "top-1 fell" in lines[0]


@pytest.mark.parametrize("extra,message", [
    (["--mode", "dynamic", "--adaround"], "--adaround needs --mode static"),
    (["--mode", "qat", "--cle", "--bias-correction", "empirical"], "--cle and --bias-correction need --mode static"),
    (["--bias-correction", "mean"], "unknown bias correction 'mean'"),
    (["--adaround", "--adaround-steps", "0"], "--adaround-steps 0"),
])
def test_bad_ladder_combinations_exit_2_with_one_line(run_cli, extra, message):
    code, out, err = run_cli(_args("missing.safetensors", *extra))  # refused before the weights are even looked at
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
