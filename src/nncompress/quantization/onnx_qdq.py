"""ONNX export of the simulated graph in QDQ form, run in ONNX Runtime's integer kernels.

Dynamic graphs (`quantize_dynamic`) export each quantized Linear as DynamicQuantizeLinear → MatMulInteger with
our int8 weight codes (ONNX's integer operators; what ORT's own dynamic quantizer emits, with our codes).

Each activation quantizer becomes QuantizeLinear → DequantizeLinear with *our* scale and zero point; each
quantized layer's weight is stored as int8 codes behind a per-channel DequantizeLinear. ONNX Runtime's
graph optimizer fuses DQ → Conv/Gemm → Q into QLinearConv / integer GEMM, so the model runs on int8
kernels (ONNX operator docs: QuantizeLinear, DequantizeLinear; ORT "quantization: QDQ format").
Supported ops: conv/linear (+ReLU), ReLU, max-pool, global/adaptive average pool to 1, flatten, dropout.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
import torch
import torch.fx as fx
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from nncompress.core.errors import UserError
from nncompress.core.io import atomic_write_bytes
from nncompress.quantization.fake_quant import FakeQuantize, LSQQuantizer, weight_codes
from nncompress.quantization.graph import QuantLayer

OPSET = 17


class _Builder:
    def __init__(self):
        self.nodes, self.inits, self.count = [], [], 0

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}_{self.count}"

    def const(self, base: str, array: np.ndarray) -> str:
        n = self.name(base)
        self.inits.append(numpy_helper.from_array(array, n))
        return n

    def op(self, op_type: str, inputs: list[str], base: str, **attrs) -> str:
        out = self.name(base)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


def _pool_args(node: fx.Node, mods) -> tuple[list[int], list[int], list[int]]:
    if node.op == "call_module":
        m = mods[node.target]
        k, s, p = m.kernel_size, m.stride or m.kernel_size, m.padding
        if getattr(m, "dilation", 1) not in (1, (1, 1)) or getattr(m, "ceil_mode", False):
            raise UserError("ONNX export: max-pool with dilation or ceil_mode is not supported")
    else:
        names = ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode"]
        a = dict(zip(names, node.args)) | dict(node.kwargs)
        k, s, p = a["kernel_size"], a.get("stride") or a["kernel_size"], a.get("padding", 0)
        if a.get("dilation", 1) not in (1, (1, 1)) or a.get("ceil_mode", False):
            raise UserError("ONNX export: max-pool with dilation or ceil_mode is not supported")
    pair = lambda v: list(v) if isinstance(v, (tuple, list)) else [v, v]  # noqa: E731
    p2 = pair(p)
    return pair(k), pair(s), p2 + p2


def _act_qdq(b: _Builder, x: str, q: nn.Module, act_int8: bool = False) -> str:
    s, z = q.qparams()
    z_u8 = int(z) - q.qmin  # shift signed codes into uint8
    if q.qmax - q.qmin not in (127, 255):
        raise UserError("ONNX QDQ export needs 8-bit activations (or 7 with reduce_range)")
    # int8 activations: the same grid, codes (and zero point) moved down by 128
    zp_arr = np.array(z_u8 - 128, np.int8) if act_int8 else np.array(z_u8, np.uint8)
    scale, zp = b.const("scale", np.array(float(s), np.float32)), b.const("zp", zp_arr)
    if q.qmax - q.qmin == 127:  # 7-bit codes: saturate like the simulation before the 8-bit QuantizeLinear
        lo, hi = b.const("lo", np.array(float(s) * (0 - z_u8), np.float32)), b.const("hi", np.array(float(s) * (127 - z_u8), np.float32))
        x = b.op("Clip", [x, lo, hi], "clip")
    return b.op("DequantizeLinear", [b.op("QuantizeLinear", [x, scale, zp], "q"), scale, zp], "dq")


def _float_layer(b: _Builder, x: str, layer: nn.Module, relu: bool = False) -> str:
    w = b.const("w", layer.weight.detach().float().numpy())
    return _op_for(b, layer, x, w, layer.bias, relu)


def _op_for(b: _Builder, layer: nn.Module, x: str, w_name: str, bias: torch.Tensor | None, relu: bool) -> str:
    inputs = [x, w_name] + ([b.const("bias", bias.detach().float().numpy())] if bias is not None else [])
    if isinstance(layer, nn.Linear):
        y = b.op("Gemm", inputs, "gemm", transB=1)
    elif isinstance(layer, nn.Conv2d) and layer.padding_mode == "zeros" and not isinstance(layer.padding, str):
        ph, pw = layer.padding
        y = b.op("Conv", inputs, "conv", kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                 pads=[ph, pw, ph, pw], dilations=list(layer.dilation), group=layer.groups)
    else:
        raise UserError(f"ONNX export supports Linear and zero-padded Conv2d layers, not {type(layer).__name__}")
    return b.op("Relu", [y], "relu") if relu else y


def _dynamic_linear(b: _Builder, x: str, ql: QuantLayer, name: str) -> str:
    """Dynamic int8 Linear on ONNX's integer operators: DynamicQuantizeLinear (the input's own min/max → uint8
    codes, scale, zero point: the same affine 8-bit grid the simulation's dynamic quantizer computes) →
    MatMulInteger with our int8 weight codes (int32 accumulation) → × (s_x · s_w) + bias (→ ReLU)."""
    iq, wq = ql.input_quant, ql.weight_quant
    if not isinstance(ql.layer, nn.Linear):
        raise UserError(f"ONNX dynamic export: layer '{name}' is a {type(ql.layer).__name__}; dynamic int8 runs Linear layers")
    if iq.qmax - iq.qmin != 255:
        raise UserError(f"ONNX dynamic export: layer '{name}' has {iq.qmax - iq.qmin + 1}-level activations; DynamicQuantizeLinear "
                        "is 8-bit: quantize with reduce_range=False")
    w, bias = ql.folded()
    w = w.detach().float()
    if wq.qmin < -128 or wq.qmax > 127 or int(torch.as_tensor(wq.qparams_for(w)[1]).abs().max()) != 0:
        raise UserError(f"ONNX dynamic export: layer '{name}' needs symmetric weights of at most 8 bits")
    codes, s = weight_codes(wq, w)
    out = b.name("dq")
    xq, xs, xz = out + "_q", out + "_s", out + "_z"
    b.nodes.append(helper.make_node("DynamicQuantizeLinear", [x], [xq, xs, xz], name=out))
    acc = b.op("MatMulInteger", [xq, b.const("w_codes_t", codes.to(torch.int8).t().contiguous().numpy()), xz], "mmi")
    s_np = np.asarray(torch.as_tensor(s, dtype=torch.float32).reshape(-1).numpy(), np.float32)
    y = b.op("Mul", [b.op("Cast", [acc], "accf", to=TensorProto.FLOAT), b.op("Mul", [xs, b.const("w_scale", s_np)], "scale")], "y")
    if bias is not None:
        y = b.op("Add", [y, b.const("bias", bias.detach().float().numpy())], "add")
    return b.op("Relu", [y], "relu") if ql.relu else y


def _layer(b: _Builder, x: str, ql: QuantLayer, weights_uint8: bool) -> str:
    w, bias = ql.folded()
    w = w.detach().float()
    wq = ql.weight_quant
    if wq is None:
        return _op_for(b, ql.layer, x, b.const("w", w.numpy()), bias, ql.relu)
    z = wq.qparams_for(w)[1]
    if wq.qmin < -128 or wq.qmax > 127 or int(torch.as_tensor(z).abs().max()) != 0:
        raise UserError("ONNX QDQ export needs symmetric weights of at most 8 bits")
    codes, s = weight_codes(wq, w)
    s_np = np.asarray(torch.as_tensor(s, dtype=torch.float32).numpy(), np.float32)
    if weights_uint8:  # the same weights as codes + 128 with zero point 128: ORT then picks its u8·u8 kernels
        codes, zp_np = (codes + 128).to(torch.uint8).numpy(), np.full(s_np.shape, 128, np.uint8)
    else:
        codes, zp_np = codes.to(torch.int8).numpy(), np.zeros(s_np.shape, np.int8)
    attrs = {"axis": 0} if s_np.ndim == 1 else {}
    w_name = b.op("DequantizeLinear", [b.const("w_codes", codes), b.const("w_scale", s_np), b.const("w_zp", zp_np)], "w", **attrs)
    return _op_for(b, ql.layer, x, w_name, bias, ql.relu)


QDQ_FORMATS = ("u8s8", "u8u8", "s8s8")  # activations, weights


def default_qdq_format() -> str:
    """The QDQ format for this CPU (activation type, weight type), chosen from measurements (ORT 1.32, 1 thread).

    - No VNNI (AVX2, AVX-512 without VNNI): "u8u8". The u8·s8 path (vpmaddubsw) adds pairs of products in int16
      and saturates with 8-bit activations (2·255·127 > 32767); the u8·u8 kernels widen first and do not.
    - VNNI (vpdpbusd accumulates u8·s8 straight into int32, no saturation): "u8s8", ORT's documented x86 format.
      Measured on an AVX-512 VNNI Xeon (ORT 1.32, 1 thread, batch 32, p10 of 60 interleaved calls on a loaded
      2-core VM): LeNet-5 fp32 3.0 ms, u8s8 1.25, s8s8 1.28, u8u8 2.1; conv-BN net fp32 1.12, u8s8 1.04, s8s8 1.05,
      u8u8 1.72; FFN 6×384→1536→384 at 256 tokens (medians of two runs) u8s8 32 / 40 ms, s8s8 39 / 30, u8u8 72 / 87.
      u8s8 and s8s8 tie within this machine's noise, u8u8 costs 1.6–2.2× on VNNI: so u8s8, ORT's documented x86
      choice. `benchmarks/quant_engines.py` re-measures all three and its target reports if another format wins.
    The values, and so the outputs, are the same in every format: only the integer container changes.
    """
    from nncompress.quantization.backends import cpu_has_vnni

    return "u8s8" if cpu_has_vnni() else "u8u8"


def to_onnx_qdq(gm: fx.GraphModule, example_input: torch.Tensor, weights_uint8: bool | None = None,
                qdq_format: str | None = None) -> bytes:
    """Serialized ONNX model (QDQ) of a calibrated static or converted QAT graph.

    qdq_format: "u8s8" (uint8 activations, int8 weights), "u8u8" (weights stored as codes + 128 with zero point
    128) or "s8s8" (activation codes and zero points moved down by 128); default `default_qdq_format()` (per ISA).
    weights_uint8 (older spelling): True means "u8u8", False "u8s8"."""
    if qdq_format is None:
        qdq_format = default_qdq_format() if weights_uint8 is None else ("u8u8" if weights_uint8 else "u8s8")
    if qdq_format not in QDQ_FORMATS:
        raise UserError(f"unknown QDQ format '{qdq_format}': use one of {', '.join(QDQ_FORMATS)}")
    cfg = getattr(gm, "quant_config", None)
    if cfg is None or cfg.mode not in ("static", "qat", "dynamic"):
        raise UserError("ONNX QDQ export takes a graph from quantize_static, quantize_dynamic or convert_qat")
    return _export(gm, example_input, qdq_format == "u8u8", qdq_format == "s8s8")


def to_onnx_float(model: nn.Module, example_input: torch.Tensor) -> bytes:
    """The float model (BN folded) through the same exporter: the fp32 baseline in the same runtime."""
    from nncompress.quantization.fusion import fuse_conv_bn

    return _export(fuse_conv_bn(model), example_input, False)


def _export(gm: fx.GraphModule, example_input: torch.Tensor, weights_uint8: bool, act_int8: bool = False) -> bytes:
    mods = dict(gm.named_modules())
    b, env = _Builder(), {}
    out_name = None
    with torch.no_grad():
        out_shape = ["batch", *gm.eval()(example_input[:1]).shape[1:]]
    for node in gm.graph.nodes:
        m = mods.get(node.target) if node.op == "call_module" else None
        arg = env.get(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
        if node.op == "placeholder":
            env[node] = "input"
        elif isinstance(m, (FakeQuantize, LSQQuantizer)):
            # after pass-through ops too: an exact no-op on values already on the grid, but it hands ORT the
            # DQ → op → Q patterns it fuses into integer kernels
            env[node] = _act_qdq(b, arg, m, act_int8)
        elif isinstance(m, QuantLayer) and m.input_quant is not None:
            env[node] = _dynamic_linear(b, arg, m, node.target)
        elif isinstance(m, QuantLayer):
            env[node] = _layer(b, arg, m, weights_uint8)
        elif isinstance(m, (nn.Linear, nn.Conv2d)):
            env[node] = _float_layer(b, arg, m)
        elif isinstance(m, (nn.ReLU,)) or (node.op == "call_function" and node.target in (torch.relu, F.relu)) \
                or (node.op == "call_method" and node.target == "relu"):
            env[node] = b.op("Relu", [arg], "relu")
        elif isinstance(m, nn.MaxPool2d) or (node.op == "call_function" and node.target in (torch.max_pool2d, F.max_pool2d)):
            k, s, p = _pool_args(node, mods)
            env[node] = b.op("MaxPool", [arg], "maxpool", kernel_shape=k, strides=s, pads=p)
        elif (isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1))) or \
                (node.op == "call_function" and node.target is F.adaptive_avg_pool2d and node.args[1] in (1, (1, 1))):
            env[node] = b.op("GlobalAveragePool", [arg], "gap")
        elif isinstance(m, nn.Flatten) or (node.op == "call_function" and node.target is torch.flatten) \
                or (node.op == "call_method" and node.target == "flatten"):
            start = m.start_dim if m is not None else (node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0))
            if start != 1:
                raise UserError("ONNX export supports flatten from dimension 1 only")
            env[node] = b.op("Flatten", [arg], "flatten", axis=1)
        elif isinstance(m, (nn.Dropout, nn.Identity)):
            env[node] = arg
        elif node.op == "output":
            out_name = env[node.args[0]]
        else:
            raise UserError(f"ONNX QDQ export does not support '{node.op} {node.target}' (supported: conv, linear, relu, "
                            "max-pool, global average pool, flatten, dropout)")
    shape = ["batch", *example_input.shape[1:]]
    graph = helper.make_graph(b.nodes, "nncompress_qdq", [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, out_shape)], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="nncompress")
    onnx.checker.check_model(model)
    return model.SerializeToString()


def save_onnx_qdq(gm: fx.GraphModule, example_input: torch.Tensor, path: str | os.PathLike) -> None:
    atomic_write_bytes(path, to_onnx_qdq(gm, example_input))


class OnnxRuntimeModel(nn.Module):
    """An ONNX Runtime session behind a torch-like forward (CPU, all graph optimizations, fixed threads)."""

    def __init__(self, model_bytes: bytes, threads: int = 1):
        super().__init__()
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input_name: x.detach().float().numpy()})[0])
