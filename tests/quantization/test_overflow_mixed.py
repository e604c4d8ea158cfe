import pytest
import torch
from torch import nn

from nncompress.architectures import LeNet5
from nncompress.core.errors import UserError
from nncompress.quantization.mixed_precision import choose_bits, layer_weight_bytes, mixed_precision
from nncompress.quantization.overflow import accumulator_bits, accumulator_report, fan_in, integer_matmul, simulate_accumulator


def test_accumulator_formula_values():
    assert accumulator_bits(8, 8, 20 * 5 * 5) == 25  # 2·8 + ⌈log2 500⌉ = 16 + 9
    assert accumulator_bits(8, 8, 800) == 26  # 16 + ⌈log2 800⌉ = 16 + 10
    assert accumulator_bits(4, 4, 64 * 3 * 3) == 18  # 8 + ⌈log2 576⌉ = 8 + 10
    assert accumulator_bits(8, 8, 1) == 16
    assert accumulator_bits(8, 8, 1024) == 26


def test_fan_in_of_layers():
    assert fan_in(nn.Conv2d(20, 50, 5)) == 500
    assert fan_in(nn.Conv2d(32, 32, 3, groups=32)) == 9  # depthwise: one channel per group
    assert fan_in(nn.Linear(800, 500)) == 800


def test_report_warns_for_narrow_accumulator():
    with pytest.warns(UserWarning) as rec:
        rows = accumulator_report(LeNet5(), acc_bits=24)
    assert [str(w.message).split("'")[1] for w in rec] == ["conv2", "fc1", "fc2"]
    assert "needs 25 bits" in str(rec[0].message)
    by = {r["layer"]: r for r in rows}
    assert by["conv1"]["needed_bits"] == 8 + 8 + 5 and by["conv1"]["fits"]  # fan-in 25 → +5
    assert not by["fc1"]["fits"] and by["fc1"]["needed_bits"] == 26


def test_integer_matmul_modes_hand_worked():
    x, w = torch.tensor([[200, 200]]), torch.tensor([[100, 100]])  # exact 40,000
    assert integer_matmul(x, w, 32).item() == 40000
    assert integer_matmul(x, w, 16, "wrap").item() == 40000 - 65536
    assert integer_matmul(x, w, 16, "saturate").item() == 32767
    x8, w8 = torch.tensor([[255, 255, 1, 1]]), torch.tensor([[127, 127, 1, 1]])  # pair sum 64,770 > int16
    assert integer_matmul(x8, w8, 32, "pairs16").item() == 32767 + 2
    assert integer_matmul(torch.tensor([[127, 127]]), torch.tensor([[127, 127]]), 32, "pairs16").item() == 32258  # fits


def test_narrow_accumulator_error_shows():
    torch.manual_seed(0)
    layer = nn.Linear(256, 16)
    x = torch.rand(8, 256) * 4
    wide = simulate_accumulator(layer, x, acc_bits=32)
    narrow = simulate_accumulator(layer, x, acc_bits=16, mode="saturate")
    assert wide["max_abs_error"] == 0.0 and wide["needed_bits"] == 24
    assert narrow["overflow_fraction"] > 0 and narrow["max_abs_error"] > 0


def test_choose_bits_greedy_hand_worked():
    layers = {"big": nn.Linear(100, 10), "small": nn.Linear(10, 10)}  # 1000 and 100 weights
    sens = {"big": {4: 0.02, 8: 0.0}, "small": {4: 0.5, 8: 0.0}}
    # all 8-bit: 1000 + 40 + 100 + 40 = 1180 bytes; big→4 bits saves 500 at 0.02/500, small→4 saves 50 at 0.5/50
    assert choose_bits(sens, layers, 1180) == {"big": 8, "small": 8}
    assert choose_bits(sens, layers, 1000) == {"big": 4, "small": 8}
    assert choose_bits(sens, layers, 630) == {"big": 4, "small": 4}
    assert layer_weight_bytes(layers["big"], 4) == 500 + 40
    with pytest.raises(UserError, match="below the smallest"):
        choose_bits(sens, layers, 100)


def test_mixed_precision_meets_budget(trained_net, digits):
    full = sum(4 * m.weight.numel() for m in (trained_net.conv1, trained_net.conv2, trained_net.fc))
    res = mixed_precision(trained_net, digits.x_train[:128], budget_bytes=full // 6, bits_options=(2, 4, 8), num_batches=1)
    assert res.weight_bytes <= full // 6
    assert set(res.bits) == {"conv1", "conv2", "fc"} and set(res.bits.values()) <= {2, 4, 8}
    assert res.compression_ratio >= 6 * 0.9
    for name, per_bits in res.sensitivity.items():  # fewer bits can only hurt more on average
        assert per_bits[2] >= per_bits[8], name
