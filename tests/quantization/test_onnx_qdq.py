import collections
import operator
import os
import tempfile
import warnings

import onnx
import onnxruntime as ort
import pytest
import torch

from nncompress.core.errors import UserError
from nncompress.quantization import compare_with_simulation, quantize_dynamic, quantize_static
from nncompress.quantization.onnx_qdq import OnnxRuntimeModel, save_onnx_qdq, to_onnx_qdq


@pytest.fixture(scope="module")
def static_sim(trained_net, loaders):
    return quantize_static(trained_net, loaders[0], num_batches=4)  # full 8-bit activations


def test_qdq_model_carries_our_scales(static_sim, digits):
    model = onnx.load_from_string(to_onnx_qdq(static_sim, digits.x_test[:2], weights_uint8=True))
    ops = [n.op_type for n in model.graph.node]
    # input, conv1, conv2, fc outputs, and re-quantization after max-pool and flatten
    assert ops.count("QuantizeLinear") == 6
    assert ops.count("DequantizeLinear") == 6 + 3  # activations + the three weights
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    first_scale = next(v for k, v in inits.items() if k.startswith("scale"))
    assert float(first_scale) == pytest.approx(float(static_sim.get_submodule("x_act_quant").scale))
    codes = [v.astype(int) - 128 for k, v in inits.items() if k.startswith("w_codes")]  # uint8 with zero point 128
    assert all(abs(c).max() <= 127 for c in codes)
    w_conv1 = static_sim.get_submodule("conv1").folded()[0]
    scale = next(v for k, v in inits.items() if k.startswith("w_scale"))
    assert abs(codes[0] * scale[:, None, None, None] - w_conv1.detach().numpy()).max() <= scale.max() / 2 + 1e-7


def test_onnxruntime_runs_integer_kernels_and_matches(static_sim, digits, tmp_path):
    path = tmp_path / "m.onnx"
    save_onnx_qdq(static_sim, digits.x_test[:2], path)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    fused = {n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node}
    assert "QLinearConv" in fused and "QGemm" in fused  # ORT fused DQ → op → Q into integer kernels
    real = OnnxRuntimeModel(path.read_bytes())
    cmp = compare_with_simulation(static_sim, real, digits.x_test[:256])
    assert cmp["max_abs_error"] <= cmp["output_step"] * 1.001


def test_dynamic_graphs_run_on_onnx_integer_operators(trained_net, digits):
    with pytest.warns(UserWarning):
        dyn = quantize_dynamic(trained_net, digits.x_train[:8])
    data = to_onnx_qdq(dyn, digits.x_train[:2])
    ops = [n.op_type for n in onnx.load_from_string(data).graph.node]
    assert ops.count("DynamicQuantizeLinear") == 1 and ops.count("MatMulInteger") == 1  # the one Linear (convs stay float)
    real = OnnxRuntimeModel(data)
    x = digits.x_test[:128]
    with torch.no_grad():
        sim, out = dyn(x), real(x)
    assert float((out - sim).abs().max()) <= 1e-3 * float(sim.abs().max())  # same codes; float rounding only
    with pytest.warns(UserWarning):
        dyn7 = quantize_dynamic(trained_net, digits.x_train[:8], reduce_range=True)
    with pytest.raises(UserError, match="DynamicQuantizeLinear is 8-bit"):
        to_onnx_qdq(dyn7, digits.x_train[:2])
    with pytest.raises(UserError, match="quantize_static, quantize_dynamic or convert_qat"):
        to_onnx_qdq(trained_net, digits.x_train[:2])


def test_float_export_matches_the_float_model(trained_net, digits):
    from nncompress.quantization.onnx_qdq import to_onnx_float

    model = onnx.load_from_string(to_onnx_float(trained_net, digits.x_test[:2]))
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    x = digits.x_test[:64]
    with torch.no_grad():
        ref = trained_net(x)
    assert torch.allclose(OnnxRuntimeModel(model.SerializeToString())(x), ref, atol=1e-4)


# ── residual adds, ReLU6 / clamp, deeper graphs ──────────────────────────────────────────────────────────


def _ort(data: bytes, optimize: bool = True):
    """ORT session: `optimize` fuses DQ → op → Q into integer kernels; without it ORT runs the reference QDQ
    operators in float, the exact mirror of the fake-quant simulation."""
    opts = ort.SessionOptions()
    level = ort.GraphOptimizationLevel
    opts.graph_optimization_level = level.ORT_ENABLE_ALL if optimize else level.ORT_DISABLE_ALL
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])


class _TwoBranch(torch.nn.Module):
    """x → a(x) (weight 1) and relu6(b(x)) (weight 3), summed, then a head summing the four positions."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(1, 1, 1, bias=False)
        self.b = torch.nn.Conv2d(1, 1, 1, bias=False)
        self.head = torch.nn.Linear(4, 1, bias=False)
        with torch.no_grad():
            self.a.weight.fill_(1.0)
            self.b.weight.fill_(3.0)
            self.head.weight.fill_(1.0)

    def forward(self, x):
        return self.head(torch.flatten(self.a(x) + torch.nn.functional.relu6(self.b(x)), 1))


def test_residual_add_and_relu6_match_hand_computed_codes():
    """Calibrated on all-0 and all-2.55 images, so the 8-bit min-max grids are: input and branch a 2.55/255 = 0.01,
    branch b (3x clamped to 6) 6/255, the add 8.55/255, the head 34.2/255 (all zero points 0). Weights 1 and 3 are
    exact int8 codes (±127 · w/127). For x = [0.5, 2.5, 0.8, 0]:
      b: 3x = 1.5, 7.5 → 6, 2.4, 0 → codes round(x·255/6) = 64 (63.75), 255, 102, 0
      add: 0.5 + 64·6/255 = 2.00588 → code round(59.82) = 60; 2.5 + 6 = 8.5 → round(253.51) = 254; 0.8 + 2.4 → round(95.44) = 95
      head: (60 + 254 + 95)·8.55/255 = 13.7135 → code round(102.25) = 102 → 102·34.2/255 = 13.68.
    With branch b's grid widened to 8/255 (a learned LSQ step can reach past 6), only the Clip keeps 7.5 at 6:
      b codes 48, round(191.25) = 191, for x[2] = 0.7: round(66.94) = 67; add codes 60, round(253.27) = 253, round(83.57) = 84
      head: round(99.25) = 99 → 99·34.2/255 = 13.27765."""
    calib = torch.stack([torch.zeros(1, 2, 2), torch.full((1, 2, 2), 2.55)])
    sim = quantize_static(_TwoBranch(), [calib], num_batches=1)
    assert sim.get_submodule("b").relu_max == 6.0  # the ReLU6 fused into the layer as a clamp
    data = to_onnx_qdq(sim, calib, qdq_format="u8s8")
    model = onnx.load_from_string(data)
    nodes = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    (add,) = [n for n in model.graph.node if n.op_type == "Add"]
    assert [nodes[i].op_type for i in add.input] == ["DequantizeLinear", "DequantizeLinear"]
    (q_after,) = [n for n in model.graph.node if add.output[0] in n.input]
    assert q_after.op_type == "QuantizeLinear" and float(inits[q_after.input[1]]) == pytest.approx(8.55 / 255)
    (clip,) = [n for n in model.graph.node if n.op_type == "Clip"]
    assert nodes[clip.input[0]].op_type == "Conv" and (float(inits[clip.input[1]]), float(inits[clip.input[2]])) == (0.0, 6.0)

    x = torch.tensor([0.5, 2.5, 0.8, 0.0]).reshape(1, 1, 2, 2)
    with torch.no_grad():
        assert float(sim(x)) == pytest.approx(13.68, abs=1e-4)
    for optimize in (False, True):
        assert float(_ort(data, optimize)(x)) == pytest.approx(13.68, abs=1e-4)

    sim.get_submodule("b_act_quant").scale.fill_(8 / 255)
    data = to_onnx_qdq(sim, calib, qdq_format="u8s8")
    x = torch.tensor([0.5, 2.5, 0.7, 0.0]).reshape(1, 1, 2, 2)
    with torch.no_grad():
        assert float(sim(x)) == pytest.approx(13.27765, abs=1e-4)
    for optimize in (False, True):
        assert float(_ort(data, optimize)(x)) == pytest.approx(13.27765, abs=1e-4)


def _normalized(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """Random init with BN statistics measured on `x` (so activations are O(1), as in a trained net) and the last BN of
    each residual branch scaled to 0.3 (near-identity blocks, like zero-init residuals, Goyal et al. 2017). Without
    the latter a random deep BN net is chaotic (Yang et al. 2019): one-code rounding differences between integer
    kernels and the float simulation (ORT rounds the bias to int32 codes) grow layer by layer to whole logits."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average: one batch sets the statistics
            m.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(x)
    for m in model.modules():
        last_bn = getattr(m, "bn2", None) if type(m).__name__ == "BasicBlock" else \
            (m.block[-1][1] if type(m).__name__ == "InvertedResidual" and m.use_residual else None)
        if last_bn is not None:
            last_bn.weight.data.mul_(0.3)
    return model.eval()


@pytest.mark.parametrize("arch", ["resnet20", "mobilenet_v2"])
def test_resnet20_and_mobilenet_v2_run_in_onnxruntime_int8_kernels(arch):
    from nncompress.architectures import MobileNetV2, resnet20

    torch.manual_seed(0)
    x = torch.randn(24, 1, 28, 28)
    model = _normalized(resnet20((1, 28, 28), 10) if arch == "resnet20" else MobileNetV2((1, 28, 28), 10), x[:16])
    sim = quantize_static(model, [x[:8], x[8:16]], num_batches=2)
    n_convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    n_adds = sum(n.op == "call_function" and n.target is operator.add for n in sim.graph.nodes)
    assert n_adds == (9 if arch == "resnet20" else 10)
    data = to_onnx_qdq(sim, x[:2], qdq_format="u8s8")
    with torch.no_grad():
        ref = sim(x[16:])
    logit_range = float(ref.max() - ref.min())
    for optimize in (False, True):
        out = _ort(data, optimize)(x[16:])
        assert float((out.argmax(1) == ref.argmax(1)).float().mean()) == 1.0
        assert float((out - ref).abs().max()) <= 0.05 * logit_range  # measured 0.4 % (ResNet-20), 2 % (MobileNetV2)

    with tempfile.TemporaryDirectory() as tmp:  # ORT ran every conv, add and the classifier on integer kernels
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = os.path.join(tmp, "opt.onnx")
        opts.log_severity_level = 3
        ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        ops = collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)
    assert ops["QLinearConv"] == n_convs and ops["QLinearAdd"] == n_adds and ops["QGemm"] == 1
    assert ops["Conv"] == ops["Add"] == ops["Clip"] == 0  # ReLU6 clamps folded into the quantized ranges


def _fused_ops(data: bytes) -> collections.Counter:
    """Op types of the graph ORT runs after its optimizer (QDQ fusion into integer kernels)."""
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = os.path.join(tmp, "opt.onnx")
        opts.log_severity_level = 3
        ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        return collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)


def test_bias_beyond_int32_codes_gets_a_wider_weight_grid():
    """Tiny activations (input scale ~1e-11) make ORT's int32 bias codes round(b / (s_in·s_w)) overflow (the fused
    kernels were then off by whole logits). The exporter widens those channels' weight grid to s' = |b| / (s_in·(2^31 − 1)),
    a change of at most fan_in · 255·s_in · s' ≈ 1e-12 here, far under 1 % of the output step: still fused, still equal."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.Flatten(), torch.nn.Linear(8, 3))
    x = torch.randn(8, 1, 2, 2) * 1e-9
    sim = quantize_static(net, [x], num_batches=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = to_onnx_qdq(sim, x[:2], qdq_format="u8s8")
    s_in = float(sim.get_submodule("input_1_act_quant").scale)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load_from_string(data).graph.initializer}
    conv_scale = next(v for k, v in inits.items() if k.startswith("w_scale"))
    bias = net[0].bias.detach().abs().numpy()
    assert (bias / (s_in * conv_scale) <= 2**31 - 1).all()  # every int32 bias code now fits
    ops = _fused_ops(data)
    assert ops["QLinearConv"] == 1 and ops["QGemm"] == 1 and ops["Conv"] == ops["Gemm"] == 0
    with torch.no_grad():
        ref = sim(x)
    step = float(sim.get_submodule("_2_act_quant").scale)
    assert float((_ort(data)(x) - ref).abs().max()) <= step * 1.001


def test_bias_that_no_weight_grid_fits_stays_in_float():
    """512 inputs on a 0.01 grid, weights ~1e-12 and a bias of 1: the widened grid could move the output by up to
    512 · 255·s_in · s' ≈ 6e-5 > 1 % of the output step (1/255): the bias stays a float Add after the layer, and a warning
    says so."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(512, 1))
    with torch.no_grad():
        net[0].weight.uniform_(-1e-12, 1e-12)
        net[0].bias.fill_(1.0)
    x = torch.rand(16, 512) * 2.55
    sim = quantize_static(net, [x], num_batches=1)
    with pytest.warns(UserWarning, match="runs in float in ONNX Runtime"):
        data = to_onnx_qdq(sim, x[:2], qdq_format="u8s8")
    (gemm,) = [n for n in onnx.load_from_string(data).graph.node if n.op_type == "Gemm"]
    assert len(gemm.input) == 2  # no bias input: ORT has no int32 bias to build
    ops = _fused_ops(data)
    assert ops["Add"] == 1 and ops["QGemm"] == 1  # the int8 product (float output), then the float bias
    with torch.no_grad():
        ref = sim(x)
    assert float((_ort(data)(x) - ref).abs().max()) <= float(sim.get_submodule("_0_act_quant").scale) * 1.001


class _FloatOps(torch.nn.Module):
    """The float ops the exporter maps one to one (a float graph: to_onnx_float)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.pool = torch.nn.AvgPool2d(2)
        self.pad = torch.nn.ZeroPad2d((1, 0, 2, 1))
        self.acts = torch.nn.ModuleList([torch.nn.Hardswish(), torch.nn.Hardsigmoid(), torch.nn.SiLU(), torch.nn.ReLU6(),
                                         torch.nn.Hardtanh(-0.5, 0.5), torch.nn.Sigmoid(), torch.nn.Tanh()])
        self.fc = torch.nn.Linear(4 * 5 * 3, 5)  # 2×2 after the pool, padded to 5×3

    def forward(self, x):
        y = self.conv(x)
        y = torch.add(y, self.bn(y), alpha=2.0) - 0.5  # BN not after a conv: left unfolded
        y = y * torch.sigmoid(y) / 2.0
        for act in self.acts:
            y = y + act(y)
        y = torch.clamp(self.pad(self.pool(y)), min=-1.0) + y.mean((2, 3), keepdim=True)
        return self.fc(y.view(y.size(0), -1))


def test_float_export_covers_activations_pads_and_reshapes():
    from nncompress.quantization.onnx_qdq import to_onnx_float

    torch.manual_seed(0)
    net = _FloatOps().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
    x = torch.randn(6, 3, 4, 4)
    data = to_onnx_float(net, x[:2])
    ops = {n.op_type for n in onnx.load_from_string(data).graph.node}
    assert {"BatchNormalization", "HardSwish", "HardSigmoid", "AveragePool", "Pad", "ReduceMean", "Clip"} <= ops
    with torch.no_grad():
        ref = net(x)
    assert torch.allclose(OnnxRuntimeModel(data)(x), ref, atol=1e-5)


def test_unsupported_op_names_the_node():
    class Cat(torch.nn.Module):
        def forward(self, x):
            return torch.cat([x, x], 1)

    from nncompress.quantization.onnx_qdq import to_onnx_float

    with pytest.raises(UserError, match="does not support call_function <built-in method cat.*node 'cat'"):
        to_onnx_float(Cat(), torch.randn(2, 3))
