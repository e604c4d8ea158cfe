"""LSTM with int8 weights on real integer kernels: ONNX Runtime's dynamic quantization of an exported LSTM.

Why ONNX Runtime. PyTorch's own dynamically quantized LSTM lives in `torch.ao`, which is being removed, and
torchao has no recurrent kernel. ONNX Runtime has one: `quantize_dynamic` rewrites every ONNX `LSTM` node into
`com.microsoft.DynamicQuantizeLSTM`, whose input→gate (W) and hidden→gate (R) matrices are stored as int8 with
a scale per matrix, or per output row with `per_channel`; at run time the activations are quantized to 8 bits
from their observed range on each call (dynamic quantization: no calibration data), the gate GEMMs run as
8-bit integer products accumulated in int32 and are dequantized. That is the scheme PyTorch's
`quantize_dynamic({nn.LSTM, nn.Linear})` implements (weights int8 ahead of time, activations quantized per
call). `MatMul`/`Gemm` heads can be quantized the same way (`MatMulInteger` / `DynamicQuantizeMatMul`).

What stays float: ONNX Runtime has no integer GRU or vanilla-RNN kernel, so `nn.GRU` / `nn.RNN` layers are
exported and left in fp32 (`integer_ops` tells you what really runs on integers). Masked (pruned) recurrent
weights are baked in before export, so the int8 weights carry the zeros.

    fp32 = lstm_to_onnx(model, x)               # ONNX LSTM nodes (checked), parametrizations baked in
    int8 = quantize_lstm_dynamic(fp32)           # DynamicQuantizeLSTM (+ MatMulInteger for the head)
    integer_ops(int8)                            # {"DynamicQuantizeLSTM": 1, ...}
"""
from __future__ import annotations

import io
import logging
import tempfile
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch
from torch import nn

from nncompress.core.errors import UserError

OPSET = 17
# ONNX ops that run on integer kernels after dynamic quantization (ORT contrib and standard integer ops)
INTEGER_OPS = ("DynamicQuantizeLSTM", "MatMulInteger", "DynamicQuantizeMatMul", "ConvInteger", "QLinearMatMul")
QUANTIZABLE = ("LSTM", "MatMul", "Gemm")


def _plain_recurrent_copy(model: nn.Module) -> nn.Module:
    """A copy with every parametrization (pruning masks) baked in and the LSTM's flat weights rebuilt."""
    from nncompress.export.onnx import _plain_copy

    plain = _plain_copy(model)
    for m in plain.modules():
        if isinstance(m, nn.RNNBase):
            m._init_flat_weights()  # the kernel reads _flat_weights: point it at the baked tensors
    return plain


def lstm_to_onnx(model: nn.Module, example_input: torch.Tensor, opset: int = OPSET) -> bytes:
    """Serialized, checker-validated fp32 ONNX of `model` (which holds at least one nn.LSTM) with a dynamic batch.

    The TorchScript exporter writes each nn.LSTM layer as one ONNX `LSTM` node (the op ORT can quantize);
    a graph without one (e.g. an unrolled LSTMCell loop) is refused with the reason."""
    if not any(isinstance(m, nn.LSTM) for m in model.modules()):
        raise UserError(f"{type(model).__name__} has no nn.LSTM: dynamic int8 LSTM needs one (GRU/RNN have no integer kernel in ONNX Runtime)")
    net, buf = _plain_recurrent_copy(model), io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice and the batch_first LSTM warning
        try:
            torch.onnx.export(net, (example_input,), buf, dynamo=False, opset_version=opset, input_names=["input"],
                              output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
        except Exception as e:  # noqa: BLE001 - the exporter raises many types; say which model failed
            raise UserError(f"ONNX export of {type(model).__name__} failed: {str(e).splitlines()[0][:300]}") from None
    proto = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(proto)
    if not any(n.op_type == "LSTM" for n in proto.graph.node):
        raise UserError(f"the ONNX export of {type(model).__name__} has no LSTM node (was the LSTM unrolled?): nothing to quantize")
    return proto.SerializeToString()


def quantize_lstm_dynamic(onnx_fp32: bytes, *, op_types: Sequence[str] = ("LSTM", "MatMul", "Gemm"), per_channel: bool = False,
                          reduce_range: bool = False) -> bytes:
    """ONNX Runtime dynamic quantization of `onnx_fp32`: LSTM → DynamicQuantizeLSTM (int8 W and R), and the
    MatMul/Gemm layers in `op_types` → integer MatMul; activations are quantized per call at run time.

    per_channel: one weight scale per output row instead of per matrix. reduce_range: 7-bit weights, for CPUs
    without VNNI where u8·s8 pairs can saturate the 16-bit intermediate (VPMADDUBSW)."""
    bad = [t for t in op_types if t not in QUANTIZABLE]
    if bad or not op_types:
        raise UserError(f"op_types must be a non-empty subset of {', '.join(QUANTIZABLE)}; got {list(op_types)}")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(onnx_fp32)
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # ORT's "consider pre-processing" notice
        try:
            quantize_dynamic(src, dst, op_types_to_quantize=list(op_types), per_channel=per_channel, reduce_range=reduce_range,
                             weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
        out = dst.read_bytes()
    if "LSTM" in op_types and integer_ops(out).get("DynamicQuantizeLSTM", 0) == 0:
        raise UserError("ONNX Runtime left every LSTM in float (no DynamicQuantizeLSTM in the result): is the input an LSTM export?")
    return out


def integer_ops(onnx_model: bytes) -> dict[str, int]:
    """How many nodes of each integer-kernel op type (`INTEGER_OPS`) the graph holds."""
    counts = Counter(n.op_type for n in onnx.load_from_string(onnx_model).graph.node)
    return {op: counts[op] for op in INTEGER_OPS if counts[op]}


def float_recurrent_ops(onnx_model: bytes) -> dict[str, int]:
    """Recurrent nodes still in float (LSTM not quantized, GRU, RNN)."""
    counts = Counter(n.op_type for n in onnx.load_from_string(onnx_model).graph.node)
    return {op: counts[op] for op in ("LSTM", "GRU", "RNN") if counts[op]}


def int8_weight_bytes(onnx_model: bytes) -> int:
    """Bytes of the graph's int8/uint8 weight matrices (initializers of rank ≥ 2; zero points are left out):
    what the integer kernels read."""
    total = 0
    for init in onnx.load_from_string(onnx_model).graph.initializer:
        if init.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) and len(init.dims) >= 2:
            total += len(init.raw_data) if init.raw_data else len(init.int32_data)
    return total
