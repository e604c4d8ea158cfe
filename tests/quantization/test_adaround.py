"""AdaRound (Nagel et al. 2020): beats nearest rounding on output reconstruction, lands on the grid, is seeded."""
import pytest
import torch
from torch import nn

from nncompress.core.errors import UserError
from nncompress.quantization import quantize_static
from nncompress.quantization.adaround import (
    AdaRoundConfig,
    _inverse_h,
    adaround_weight,
    apply_adaround,
    nearest_weight,
    reconstruction_error,
    rectified_sigmoid,
    weight_qparams,
)
from nncompress.quantization.fusion import fuse_conv_bn

FAST = AdaRoundConfig(iters=300, seed=0)


def _layer_and_inputs(kind: str):
    """Correlated inputs: with x ~ N(0, I) the output error is ‖ε‖² and nearest rounding is already optimal;
    real activations are correlated, which is what AdaRound exploits."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if kind == "linear":
        mix = torch.randn(64, 64, generator=g)
        return nn.Linear(64, 32), torch.relu(torch.randn(512, 64, generator=g) @ mix / 8 + 0.5)
    mix = torch.randn(8, 8, generator=g)
    x = torch.einsum("nchw,cd->ndhw", torch.randn(128, 8, 8, 8, generator=g), mix)
    return nn.Conv2d(8, 16, 3, padding=1), torch.nn.functional.avg_pool2d(x, 3, 1, 1)


def test_rectified_sigmoid():
    assert float(rectified_sigmoid(torch.tensor(0.0))) == pytest.approx(0.5)
    assert float(rectified_sigmoid(torch.tensor(10.0))) == 1.0 and float(rectified_sigmoid(torch.tensor(-10.0))) == 0.0
    # h(V) = clip(σ(V)·1.2 − 0.1, 0, 1): V = log 3 → σ = 0.75 → h = 0.8
    assert float(rectified_sigmoid(torch.tensor(1.0986123))) == pytest.approx(0.8, abs=1e-6)
    rest = torch.tensor([0.05, 0.3, 0.5, 0.9])
    assert torch.allclose(rectified_sigmoid(_inverse_h(rest)), rest, atol=1e-6)


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("granularity", ["channel", "tensor"])
def test_adaround_beats_nearest_at_4_bits_and_lands_on_the_grid(kind, granularity):
    torch.set_num_threads(1)
    layer, x = _layer_and_inputs(kind)
    w = layer.weight.detach().clone()
    s, z, qmin, qmax, axis = weight_qparams(w, 4, granularity)
    w_ada, codes = adaround_weight(layer, x, s, z, qmin, qmax, axis, config=FAST)
    assert torch.equal(layer.weight, w)                             # the layer itself is untouched
    err_near = reconstruction_error(layer, nearest_weight(w, s, z, qmin, qmax, axis), x)
    err_ada = reconstruction_error(layer, w_ada, x)
    assert err_ada < 0.75 * err_near, (err_ada, err_near)          # measured ≈ 0.4–0.45× here
    sb = s if axis is None else s.reshape([-1] + [1] * (w.dim() - 1))
    assert codes.dtype == torch.int32 and int(codes.min()) >= qmin and int(codes.max()) <= qmax and (qmin, qmax) == (-7, 7)
    assert torch.equal(w_ada, sb * codes.float())                  # W̃ = s·q exactly, q integer in the clip range
    assert (codes.float() - w / sb).abs().max() < 1.0 + 1e-5       # only floor or ceil of W/s
    s2, *_ = weight_qparams(w_ada, 4, granularity)                  # the scale group's extreme kept ±q_max:
    assert torch.allclose(s2, s, rtol=1e-6)                         # re-quantizing sees the same grid


def test_adaround_is_deterministic_given_a_seed():
    torch.set_num_threads(1)
    layer, x = _layer_and_inputs("linear")
    s, z, qmin, qmax, axis = weight_qparams(layer.weight, 4, "channel")
    cfg = AdaRoundConfig(iters=60, seed=3)
    a = adaround_weight(layer, x, s, z, qmin, qmax, axis, config=cfg)[1]
    b = adaround_weight(layer, x, s, z, qmin, qmax, axis, config=cfg)[1]
    assert torch.equal(a, b)


def test_adaround_config_errors():
    layer, x = _layer_and_inputs("linear")
    s, z, qmin, qmax, axis = weight_qparams(layer.weight, 4, "channel")
    for bad in (AdaRoundConfig(iters=0), AdaRoundConfig(lr=float("nan")), AdaRoundConfig(warmup=1.0)):
        with pytest.raises(UserError):
            adaround_weight(layer, x, s, z, qmin, qmax, axis, config=bad)
    with pytest.raises(UserError, match="Conv/Linear"):
        adaround_weight(nn.ReLU(), x, s, z, qmin, qmax, axis)


@pytest.mark.parametrize("asymmetric", [True, False])
def test_apply_adaround_plugs_into_quantize_static(trained_net, digits, asymmetric):
    """AdaRound on a quantize_static graph: every layer's error drops (or stays), and the weight quantizer of
    the graph reproduces the written weights, so fake-quant and export use the learned rounding."""
    torch.set_num_threads(1)
    calib = digits.x_train[:256]
    folded = fuse_conv_bn(trained_net)
    gm = quantize_static(folded, calib, bits=4, granularity="channel", num_batches=4)
    report = apply_adaround(gm, folded, calib, num_batches=4, asymmetric=asymmetric, config=AdaRoundConfig(iters=150, seed=0))
    assert set(report) == set(gm.quant_layers)
    assert sum(a for _, a in report.values()) < 0.9 * sum(b for b, _ in report.values())
    for n in gm.quant_layers:
        q = gm.get_submodule(n)
        w = q.layer.weight.detach()
        s, _ = q.weight_quant.qparams_for(w)
        codes = w / s.reshape([-1] + [1] * (w.dim() - 1))
        assert (codes - codes.round()).abs().max() < 1e-4 and codes.abs().max() <= 7 + 1e-4
        assert torch.allclose(q.quantized_weight(), w, rtol=0, atol=1e-6 * float(w.abs().max()))


def test_ladder_with_adaround_lowers_to_int8_kernels(trained_net, digits):
    """The AdaRound + bias-corrected graph is an ordinary static graph: real int8 kernels reproduce it to within
    one output step, with the AdaRound codes as their weights."""
    from nncompress.quantization import compare_with_simulation, ptq_ladder, to_int8_kernels
    from nncompress.quantization.fake_quant import weight_codes

    torch.set_num_threads(1)
    calib = digits.x_train[:256]
    gm = ptq_ladder(trained_net, calib, weight_bits=8, granularity="channel", num_batches=4, adaround=True,
                    adaround_config=AdaRoundConfig(iters=30, seed=0), bias_correction="empirical")
    for n in gm.quant_layers:
        q = gm.get_submodule(n)
        codes, s = weight_codes(q.weight_quant, q.layer.weight)
        assert torch.allclose(codes.float() * s.reshape([-1] + [1] * (codes.dim() - 1)), q.layer.weight, atol=1e-6)
    res = compare_with_simulation(gm, to_int8_kernels(gm), digits.x_test[:128])
    assert res["error_in_steps"] <= 1.01 and res["top1_agreement"] >= 98.0, res
