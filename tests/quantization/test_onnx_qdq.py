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
