"""Ristretto formats against hand-worked values, and trimming on a LeNet-5 trained briefly on digits."""
import pytest
import torch

from nncompress.architectures import build_model
from nncompress.core.errors import UserError
from nncompress.data import load_dataset, make_loaders
from nncompress.quantization.ristretto import (
    LayerBits,
    activation_ranges,
    dynamic_fixed_point,
    integer_length,
    minifloat,
    minifloat_exponent_bits,
    minifloat_max,
    power_of_two,
    power_of_two_range,
    simulate,
    trim_bits,
)
from nncompress.training import TrainConfig, evaluate, train


def test_dynamic_fixed_point_hand_values():
    x = torch.tensor([0.75, -1.5, 3.2])
    assert integer_length(3.2) == 2  # 2 integer bits + sign: range up to 127/32 = 3.96875
    # FL = 8 − 1 − 2 = 5: codes 24, −48, round(102.4) = 102 → 102/32 = 3.1875
    assert dynamic_fixed_point(x, 8).tolist() == [0.75, -1.5, 3.1875]
    assert integer_length(4.0) == 3 and integer_length(0.75) == 0
    # fixed IL=0 at 4 bits (FL=3): 3.2 saturates at 7/8, −1.5 at −8/8
    assert dynamic_fixed_point(x, 4, integer_bits=0).tolist() == [0.75, -1.0, 0.875]


def test_minifloat_e4m3_rounds_and_saturates():
    # bias 7; 0.3 = 1.2·2^−2, step 2^(−2−3) = 1/32, 0.3·32 = 9.6 → 10 → 10/32 = 0.3125
    assert minifloat(torch.tensor([0.3]), 4, 3).item() == 0.3125
    top = (2 - 2**-3) * 2 ** (2**4 - 2 - 7)  # = 240
    assert minifloat_max(4, 3) == top == 240.0
    assert minifloat(torch.tensor([1000.0, -1e6, 240.0, 250.0]), 4, 3).tolist() == [240.0, -240.0, 240.0, 240.0]
    # tie: 1.0625 lies halfway between 1.0 and 1.125 (step 1/8) → even mantissa 1.0; 1.1875 → 1.25
    assert minifloat(torch.tensor([1.0625, 1.1875]), 4, 3).tolist() == [1.0, 1.25]
    # no denormals: smallest normal 2^−6; 2^−8 flushes to 0, 0.6·2^−6 goes up to 2^−6
    assert minifloat(torch.tensor([2.0**-8, 0.6 * 2.0**-6]), 4, 3).tolist() == [0.0, 2.0**-6]
    # split of 16 bits for max|w| = 0.5: E=4's smallest normal 2^−6 > 0.5·2^−8 = 2^−9, so E=5 (2^−14)
    assert minifloat_exponent_bits(16, 0.5) == 5 and minifloat_exponent_bits(16, 10.0) == 4


def test_power_of_two_rounds_in_log2_space():
    w = torch.tensor([0.3, -0.7, 0.75, 0.0, 0.001, 5.0])
    # log2: −1.74 → −2, −0.51 → −1, −0.415 → 0; 0.001 (log2 −9.97 → −10) below min_exp −8 → 0; 5 → clamp 2^0
    assert power_of_two(w, -8, 0).tolist() == [0.25, -0.5, 1.0, 0.0, 0.0, 1.0]
    assert power_of_two_range(4, 0.6) == (-7, -1)  # 7 exponents −7..−1 + the zero code; top round(log2 0.6) = −1
    with pytest.raises(UserError):
        power_of_two(w, 1, 0)


@pytest.fixture(scope="module")
def lenet():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ds = load_dataset("digits")
    train_loader, test_loader = make_loaders(ds, batch_size=64)
    model = build_model("lenet5", (1, 8, 8), 10)
    train(model, train_loader, TrainConfig(epochs=3, lr=0.05, seed=0, progress=False, device="cpu"))
    return model.eval(), test_loader


def test_16_bit_dynamic_fixed_point_matches_fp32(lenet):
    model, loader = lenet
    x = next(iter(loader))[0]
    with torch.no_grad():
        ref = model(x)
        ranges = activation_ranges(model, lambda m: m(x))
        with simulate(model, {n: LayerBits(16, 16) for n in ranges}, ranges=ranges):
            q = model(x)
        after = model(x)
    assert torch.equal(after, ref)  # remove() restored the fp32 weights and hooks
    rel = float((q - ref).abs().max() / ref.abs().max())
    assert 0 < rel < 1e-3, rel
    with simulate(model, {n: LayerBits(4, 4) for n in ranges}, ranges=ranges), torch.no_grad():
        assert float((model(x) - ref).abs().max() / ref.abs().max()) > 10 * rel  # the simulation really bites


def test_trim_bits_keeps_accuracy_within_margin(lenet):
    model, loader = lenet
    result = trim_bits(model, lambda m: evaluate(m, loader), max_drop_pp=1.0)
    assert result.fp32_accuracy > 90
    assert result.accuracy >= result.fp32_accuracy - 1.0
    assert set(result.layer_bits) == {"conv1", "conv2", "fc1", "fc2"}
    assert any(b.weights < 16 or b.activations < 16 for b in result.layer_bits.values())
    # the reported widths, applied together again, reproduce the reported accuracy (and it is deterministic)
    ranges = activation_ranges(model, lambda m: evaluate(m, loader))
    with simulate(model, result.layer_bits, ranges=ranges):
        assert evaluate(model, loader) == result.accuracy
    again = trim_bits(model, lambda m: evaluate(m, loader), max_drop_pp=1.0)
    assert again.layer_bits == result.layer_bits and again.accuracy == result.accuracy
    print({n: (b.weights, b.activations) for n, b in result.layer_bits.items()}, result.accuracy, result.fp32_accuracy)


def test_trim_bits_power_of_two_weights(lenet):
    model, loader = lenet
    result = trim_bits(model, lambda m: evaluate(m, loader), formats="power_of_two", max_drop_pp=1.0, min_bits=3)
    assert result.accuracy >= result.fp32_accuracy - 1.0
    assert all(3 <= b.weights < 16 for b in result.layer_bits.values())


def test_errors_are_one_line_user_errors(lenet):
    model, loader = lenet
    for call in (lambda: trim_bits(model, lambda m: 0.0, formats="int4"),
                 lambda: simulate(model, {"nope": LayerBits(8, None)}),
                 lambda: simulate(model, {"fc1": LayerBits(None, 8)})):
        with pytest.raises(UserError) as info:
            call()
        assert "\n" not in str(info.value)


def test_simulation_refuses_unknown_and_masked_layers():
    from torch import nn

    from nncompress.core.errors import UserError
    from nncompress.pruning import LevelPruner
    from nncompress.quantization.ristretto import LayerBits, simulate

    net = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(UserError, match="layer 'nope' is not a Conv/Linear layer"):
        simulate(net, {"nope": LayerBits(8, None)}, "dynamic_fixed_point", {})
    LevelPruner({"0": 0.5}).prune(net)
    with pytest.raises(UserError, match="finalize"):
        simulate(net, {"0": LayerBits(8, None)}, "dynamic_fixed_point", {})
