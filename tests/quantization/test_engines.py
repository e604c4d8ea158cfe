"""The int8 engines besides our own kernels: ONNX Runtime QDQ in every integer format, torchao's dynamic int8,
and the pipeline/CLI engine choice (issue 14)."""
import warnings

import pytest
import torch
from torch import nn

from nncompress.core.errors import UserError
from nncompress.quantization import compare_with_simulation, quantize_static, to_torchao
from nncompress.quantization.onnx_qdq import QDQ_FORMATS, OnnxRuntimeModel, default_qdq_format, to_onnx_qdq
from nncompress.quantization.pipeline import check_backend, quantize_and_measure


@pytest.fixture(scope="module")
def static_sim(trained_net, loaders):
    return quantize_static(trained_net, loaders[0], num_batches=2)


def test_every_qdq_format_gives_the_same_values(static_sim, digits):
    """u8s8 / u8u8 / s8s8 only change the integer container: the dequantized values, so the outputs, are the same."""
    import onnx

    x = digits.x_test[:128]
    outs = {}
    for fmt in QDQ_FORMATS:
        data = to_onnx_qdq(static_sim, x[:2], qdq_format=fmt)
        zp_types = {i.data_type for i in onnx.load_from_string(data).graph.initializer if i.name.startswith("zp")}
        assert zp_types == {onnx.TensorProto.INT8 if fmt == "s8s8" else onnx.TensorProto.UINT8}
        real = OnnxRuntimeModel(data)
        cmp = compare_with_simulation(static_sim, real, x)
        assert cmp["max_abs_error"] <= cmp["output_step"] * 1.001
        outs[fmt] = real(x)
    assert float((outs["u8s8"] - outs["s8s8"]).abs().max()) <= compare_with_simulation(static_sim, static_sim, x)["output_step"] * 1.001
    assert default_qdq_format() in ("u8s8", "u8u8")
    with pytest.raises(UserError, match="unknown QDQ format"):
        to_onnx_qdq(static_sim, x[:2], qdq_format="s8u8")


def test_torchao_engine_runs_its_dynamic_int8():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).eval()
    x = torch.randn(16, 64)
    q = to_torchao(model)
    assert type(q[0].weight).__module__.startswith("torchao")  # torchao's int8 tensor subclass holds the weight
    assert type(model[0].weight) is nn.Parameter  # the float model is untouched
    with torch.no_grad():
        ref, out = model(x), q(x)
    assert float((out - ref).abs().max()) < 0.05 * float(ref.abs().max())
    with pytest.raises(UserError, match="unknown mode"):
        to_torchao(model, "static")


@pytest.mark.parametrize("backend,mode,match", [("tpu", "static", "unknown backend 'tpu'"),
                                                ("torchao", "static", "--backend torchao runs torchao's dynamic int8")])
def test_backend_refusals_are_one_line(backend, mode, match):
    with pytest.raises(UserError, match=match) as e:
        check_backend(backend, mode)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("backend,mode", [("torch", "static"), ("onnxruntime", "static"), ("onnxruntime", "dynamic"),
                                          ("torchao", "dynamic")])
def test_pipeline_runs_each_engine(trained_net, digits, backend, mode):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # dynamic mode leaves the convolutions in float, and says so
        _, rep = quantize_and_measure(trained_net, digits, mode, calib_batches=2, backend=backend, repeats=2, threads=1,
                                      batch_size=16)
    assert rep["int8_engine"] == backend and rep["int8_latency_ms"] > 0
    assert rep["kernel_top1_agreement"] >= (95 if backend == "torchao" else 99)  # torchao picks its own scales
    if mode == "static":
        assert rep["kernel_error_in_steps"] <= 1.001
