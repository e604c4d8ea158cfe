import warnings

import pytest
import torch
from torch import nn

from nncompress.architectures import LeNet5
from nncompress.core.errors import UserError
from nncompress.quantization import (QuantLayer, compare_with_simulation, float_weight_bytes, quantize_dynamic, quantize_static,
                                     quantized_weight_bytes, to_int8_kernels, to_reduced_precision)
from nncompress.quantization.modules import QuantizedConv, QuantizedLinear
from nncompress.training import evaluate


@pytest.fixture(scope="module")
def static_x86(trained_net, loaders):
    return quantize_static(trained_net, loaders[0], calibration="minmax", num_batches=4, reduce_range=True)


def test_static_int8_keeps_accuracy(trained_net, loaders, static_x86):
    fp32 = evaluate(trained_net, loaders[1])
    assert fp32 > 85
    assert evaluate(static_x86, loaders[1]) >= fp32 - 1.0


def test_bn_folded_and_relu_fused(static_x86):
    assert not any(isinstance(m, nn.BatchNorm2d) for m in static_x86.modules())
    layers = {n: m for n, m in static_x86.named_modules() if isinstance(m, QuantLayer)}
    assert set(layers) == {"conv1", "conv2", "fc"}
    assert layers["conv1"].relu and layers["conv2"].relu and not layers["fc"].relu


@pytest.mark.parametrize("reduce_range", [True, False])
def test_int8_kernels_match_simulation_within_one_step(trained_net, loaders, digits, reduce_range):
    sim = quantize_static(trained_net, loaders[0], num_batches=4, reduce_range=reduce_range)
    real = to_int8_kernels(sim)
    kinds = {n: type(m) for n, m in real.named_modules() if isinstance(m, (QuantizedConv, QuantizedLinear))}
    assert kinds == {"conv1": QuantizedConv, "conv2": QuantizedConv, "fc": QuantizedLinear}  # our int8 modules, codes in buffers
    assert real.get_submodule("conv1").act_mode == "static" and real.get_submodule("conv1").relu
    assert "fc.weight_q.codes" in real.state_dict() and real.state_dict()["fc.weight_q.codes"].dtype == torch.int8
    cmp = compare_with_simulation(sim, real, digits.x_test[:256])
    assert cmp["max_abs_error"] <= cmp["output_step"] * 1.001
    assert cmp["top1_agreement"] >= 99.0


def test_dynamic_kernels_match_simulation(trained_net, digits):
    with pytest.warns(UserWarning, match="dynamic mode quantizes Linear"):
        sim = quantize_dynamic(trained_net, digits.x_train[:16], reduce_range=True)
    assert list(sim.quant_layers) == ["fc"] and set(sim.quant_skipped) == {"conv1", "conv2"}
    real = to_int8_kernels(sim)
    assert real.get_submodule("fc").act_mode == "dynamic_tensor" and real.get_submodule("fc").act_qmax == 127
    assert real.state_dict()["fc.weight_q.codes"].dtype == torch.int8  # the int8 weights are in the state dict (issue 13)
    x = digits.x_test[:128]
    with torch.no_grad():
        ref = trained_net(x)
        err = (sim(x) - real(x)).abs().max().item()
    assert err < 1e-3 * ref.abs().max().item()  # same per-batch qparams, same integer codes


def test_weight_bytes_hand_worked():
    net = LeNet5()
    x = torch.randn(4, 1, 28, 28)
    gm = quantize_static(net, x, num_batches=1)
    sizes = quantized_weight_bytes(gm)
    # weights 500 + 25,000 + 400,000 + 5,000 = 430,500 int8 codes; scales 4·(20+50+500+10) + 5 activation (s, z) · 8
    assert sizes["weights"] == 430_500
    assert sizes["scales"] == 4 * 580 + 5 * 8
    assert sizes["float"] == 4 * 580  # biases
    assert float_weight_bytes(net) == 4 * 431_080
    assert float_weight_bytes(net) / sizes["total"] == pytest.approx(3.96, abs=0.01)


def test_keep_first_last_and_unsupported_layers_listed(digits):
    class WithPReLU(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.act, self.conv2 = nn.Conv2d(1, 4, 3), nn.PReLU(), nn.Conv2d(4, 4, 3)
            self.fc = nn.Linear(4 * 4 * 4, 10)

        def forward(self, x):
            return self.fc(torch.flatten(self.conv2(self.act(self.conv1(x))), 1))

    with pytest.warns(UserWarning, match="left in float") as rec:
        gm = quantize_static(WithPReLU(), digits.x_train[:64], keep_first_last=True, num_batches=1)
    assert gm.quant_layers == ["conv2"]
    assert set(gm.quant_skipped) == {"act", "conv1", "fc"} and "PReLU" in gm.quant_skipped["act"]
    assert len(rec) == 3
    real = to_int8_kernels(gm)  # float islands (PReLU, the float layers) run as they are
    cmp = compare_with_simulation(gm, real, digits.x_test[:64])
    assert cmp["top1_agreement"] >= 95


def test_bad_inputs(trained_net, digits):
    with pytest.raises(UserError, match="calibration data"):
        quantize_static(trained_net, None)
    with pytest.raises(UserError, match="empty"):
        quantize_static(trained_net, [])
    with pytest.raises(UserError, match="bit width"):
        quantize_static(trained_net, digits.x_train[:64], bits=0)
    with pytest.raises(UserError, match="unknown calibration"):
        quantize_static(trained_net, digits.x_train[:64], calibration="best")
    sim = quantize_static(trained_net, digits.x_train[:64], bits=12, num_batches=1)
    with pytest.raises(UserError, match="at most 8-bit"):
        to_int8_kernels(sim)
    with pytest.raises(UserError, match="to_onnx_qdq"):
        to_int8_kernels(sim, "onnxruntime")


@pytest.mark.parametrize("dtype,tol", [("fp16", 1e-2), ("bf16", 5e-2)])
def test_reduced_precision(trained_net, digits, dtype, tol):
    half = to_reduced_precision(trained_net, dtype)
    x = digits.x_test[:64]
    with torch.no_grad():
        ref, out = trained_net(x), half(x)
    assert out.dtype == torch.float32
    assert (out - ref).abs().max().item() < tol * ref.abs().max().item()
    assert float_weight_bytes(half, 2) * 2 == float_weight_bytes(trained_net, 4)
    assert next(trained_net.parameters()).dtype == torch.float32  # the original is untouched


def test_int8_kernels_warn_nothing(static_x86, digits):
    with warnings.catch_warnings():  # nothing to silence: no deprecated engine underneath
        warnings.simplefilter("error")
        real = to_int8_kernels(static_x86)
        real(digits.x_test[:8])


def test_binary_weights_run_on_int8_kernels(trained_net, digits):
    from nncompress.quantization import quantize_weights

    gm = quantize_weights(trained_net, digits.x_train[:8], bits=1)
    w = gm.get_submodule("conv2").quantized_weight().detach()
    alpha = gm.get_submodule("conv2").folded()[0].detach().abs().flatten(1).mean(1)
    assert torch.allclose(w.abs().flatten(1), alpha[:, None].expand(-1, w[0].numel()))  # ±α per channel
    sim = quantize_static(trained_net, digits.x_train[:64], bits=1, num_batches=1)
    assert quantized_weight_bytes(sim)["weights"] == sum(-(-m.weight.numel() // 8) for m in (trained_net.conv1, trained_net.conv2, trained_net.fc))
    real = to_int8_kernels(sim)
    cmp = compare_with_simulation(sim, real, digits.x_test[:128])
    assert cmp["max_abs_error"] <= cmp["output_step"] * 1.001


def test_absorbed_input_quantizers_change_no_output(static_x86, digits):
    """Dropping the fake-quantize nodes the int8 layers re-apply themselves (through max-pool/flatten) gives the same
    codes, so bit-identical outputs; the output quantizer stays."""
    from nncompress.quantization.fake_quant import FakeQuantize

    keep, drop = to_int8_kernels(static_x86, drop_absorbed=False), to_int8_kernels(static_x86)
    count = lambda g: sum(1 for n in g.graph.nodes if n.op == "call_module" and isinstance(g.get_submodule(n.target), FakeQuantize))  # noqa: E731
    assert count(drop) < count(keep)
    out_node = next(n for n in drop.graph.nodes if n.op == "output").args[0]
    assert isinstance(drop.get_submodule(out_node.target), FakeQuantize)
    x = digits.x_test[:256]
    with torch.no_grad():
        assert torch.equal(drop(x), keep(x))
