"""Bias correction (Nagel et al. 2019, §4.2): empirical removes the measured mean shift; analytic means match."""
import math

import pytest
import torch
from torch import nn

from nncompress.core.errors import UserError
from nncompress.quantization import quantize_static
from nncompress.quantization.adaround import nearest_weight, weight_qparams
from nncompress.quantization.bias_correction import (
    analytic_bias_correction,
    analytic_bias_shift,
    capture_inputs,
    clipped_gaussian_mean,
    empirical_bias_correction,
    empirical_bias_shift,
    relu_gaussian_mean,
)
from nncompress.quantization.equalization import ChannelClamp, batchnorm_statistics, cross_layer_equalization
from nncompress.quantization.fusion import fuse_conv_bn


def test_relu_gaussian_mean_hand_worked_and_monte_carlo():
    assert float(relu_gaussian_mean(0.0, 1.0)) == pytest.approx(1 / math.sqrt(2 * math.pi), abs=1e-6)  # 0.39894
    # β = 1, γ = 2: 2·φ(0.5) + Φ(0.5) = 2·0.352065 + 0.691462 = 1.395593
    assert float(relu_gaussian_mean(1.0, 2.0)) == pytest.approx(1.395593, abs=1e-5)
    assert float(relu_gaussian_mean(-3.0, 0.0)) == 0.0 and float(relu_gaussian_mean(2.5, 0.0)) == 2.5
    g = torch.Generator().manual_seed(0)
    mean, std = torch.tensor([-1.0, 0.0, 0.7, 4.0]), torch.tensor([0.5, 1.0, 3.0, 2.0])
    x = torch.randn(1_000_000, 4, generator=g, dtype=torch.float64) * std.double() + mean.double()
    assert torch.allclose(relu_gaussian_mean(mean, std), torch.relu(x).mean(0).float(), atol=5e-3)
    assert torch.allclose(clipped_gaussian_mean(mean, std, 0.0, 6.0), x.clamp(0, 6).mean(0).float(), atol=5e-3)
    upper = torch.tensor([1.0, 0.5, 2.0, 3.0])
    assert torch.allclose(clipped_gaussian_mean(mean, std, 0.0, upper), torch.minimum(x.clamp(min=0), upper.double()).mean(0).float(),
                          atol=5e-3)


def _layer_and_inputs(kind: str):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if kind == "linear":
        layer = nn.Linear(32, 16)
        xs = [torch.relu(torch.randn(64, 32, generator=g) + 0.5) for _ in range(4)]
    else:
        layer = nn.Conv2d(8, 16, 3, padding=1)
        xs = [torch.relu(torch.randn(16, 8, 6, 6, generator=g) + 0.5) for _ in range(4)]
    return layer, xs


def _mean_error(layer, w_q, bias, xs, linear):
    with torch.no_grad():
        d = []
        for x in xs:
            if linear:
                d.append(torch.nn.functional.linear(x, w_q, bias) - layer(x))
            else:
                d.append((layer._conv_forward(x, w_q, bias) - layer(x)).movedim(1, -1).reshape(-1, layer.out_channels))
        return torch.cat(d).mean(0)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_empirical_bias_correction_removes_the_mean_shift(kind):
    layer, xs = _layer_and_inputs(kind)
    s, z, qmin, qmax, axis = weight_qparams(layer.weight, 4, "tensor")
    w_q = nearest_weight(layer.weight.detach(), s, z, qmin, qmax, axis)
    before = _mean_error(layer, w_q, layer.bias, xs, kind == "linear")
    assert float(before.abs().max()) > 1e-2          # 4-bit rounding shifts channel means
    shift = empirical_bias_shift(layer, w_q, xs)
    assert torch.allclose(shift, before, atol=1e-5)
    after = _mean_error(layer, w_q, layer.bias - shift, xs, kind == "linear")
    assert float(after.abs().max()) < 1e-5


def test_empirical_bias_correction_on_a_static_graph(trained_net, digits):
    calib = digits.x_train[:256]
    gm = quantize_static(trained_net, calib, bits=4, granularity="tensor", num_batches=4)
    biases = {n: gm.get_submodule(n).layer.bias.detach().clone() for n in gm.quant_layers}
    shifts = empirical_bias_correction(gm, calib, num_batches=4)
    assert set(shifts) == set(gm.quant_layers) and any(float(s.abs().max()) > 1e-3 for s in shifts.values())
    batches = list(calib.split(64))
    for n in gm.quant_layers:     # after the pass: E[W̃x + b'] − E[Wx + b] = 0 per channel on each layer's calibration inputs
        q = gm.get_submodule(n)
        assert torch.allclose(q.layer.bias, biases[n] - shifts[n])
        with torch.no_grad():
            d = torch.cat([(q.layer._conv_forward(x, q.quantized_weight(), q.layer.bias) - q.layer._conv_forward(x, q.layer.weight, biases[n]))
                           .movedim(1, -1).reshape(-1, q.layer.out_channels) if isinstance(q.layer, nn.Conv2d) else
                           torch.nn.functional.linear(x, q.quantized_weight(), q.layer.bias) - torch.nn.functional.linear(x, q.layer.weight, biases[n])
                           for x in capture_inputs(gm, n, batches)])
        assert float(d.mean(0).abs().max()) < 1e-5, n
        assert float(shifts[n].abs().max()) > 1e-5, n    # and it was not zero before


@pytest.mark.parametrize("act", ["relu", "relu6-cle-clamp"])
def test_analytic_bias_correction_matches_the_measured_shift(act):
    """Linear → BN → ReLU → Linear with Gaussian inputs: the BN output is exactly N(β, γ²), so the data-free
    correction must equal the empirical one measured on many samples. With ReLU6 and CLE (relu6="clamp"),
    the statistics are rescaled with the layer and E[x] is the mean of a Gaussian clipped at 6/s_i."""
    torch.manual_seed(0)
    l1, bn, l2 = nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 5)
    m = nn.Sequential(l1, bn, nn.ReLU() if act == "relu" else nn.ReLU6(), l2).eval()
    with torch.no_grad():  # x ~ N(0, I) → l1(x) ~ N(b1, diag(Σ_j W1_ij²))
        bn.running_mean.copy_(l1.bias)
        bn.running_var.copy_((l1.weight ** 2).sum(1) - bn.eps)
        bn.weight.copy_(torch.linspace(0.5, 2.0, 8))
        bn.bias.copy_(torch.linspace(-1.0, 1.5, 8) if act == "relu" else torch.linspace(-1.0, 6.5, 8))
    stats = batchnorm_statistics(m)
    folded = fuse_conv_bn(m)
    if act != "relu":
        cross_layer_equalization(folded, relu6="clamp", stats=stats)
        upper = folded.get_submodule("2").upper
        assert isinstance(folded.get_submodule("2"), ChannelClamp) and float((upper - 6).abs().max()) > 0.5
    g = torch.Generator().manual_seed(2)
    x = torch.randn(200_000, 6, generator=g)
    gm = quantize_static(folded, x[:512], bits=3, granularity="tensor", num_batches=1)
    q = gm.get_submodule("3")
    with torch.no_grad():
        x2 = folded.get_submodule("2")(folded.get_submodule("0")(x))
    measured = empirical_bias_shift(q.layer, q.quantized_weight(), [x2])
    assert float(measured.abs().max()) > 1e-2
    b = q.layer.bias.detach().clone()
    shifts = analytic_bias_correction(gm, folded, stats)
    assert set(shifts) == {"3"}                   # the first layer has no data-free E[x]
    assert torch.allclose(shifts["3"], measured, atol=3e-3)
    assert torch.allclose(q.layer.bias, b - shifts["3"])
    assert torch.allclose(analytic_bias_shift(q.layer, q.quantized_weight(), torch.zeros(8)), torch.zeros(5))


def test_bias_correction_needs_a_static_graph():
    with pytest.raises(UserError, match="quantize_static"):
        empirical_bias_correction(nn.Linear(2, 2), torch.randn(4, 2))
