"""ONNX export of the simulated graph in QDQ form, run in ONNX Runtime's integer kernels.

Dynamic graphs (`quantize_dynamic`) export each quantized Linear as DynamicQuantizeLinear → MatMulInteger with
our int8 weight codes (ONNX's integer operators; what ORT's own dynamic quantizer emits, with our codes).

Each activation quantizer becomes QuantizeLinear → DequantizeLinear with *our* scale and zero point; each
quantized layer's weight is stored as int8 codes behind a per-channel DequantizeLinear. ONNX Runtime's
graph optimizer fuses DQ → Conv/Gemm → Q into QLinearConv / integer GEMM, so the model runs on int8
kernels (ONNX operator docs: QuantizeLinear, DequantizeLinear; ORT "quantization: QDQ format").

Everything else mirrors the simulation op for op, so ONNX Runtime computes what the fake-quant graph computes:
- a residual add (operator.add, torch.add, `+=`, Tensor.add) of two quantized branches: both dequantized, a float
  Add, and the QuantizeLinear → DequantizeLinear of the activation quantizer the graph put after the add (none when
  nothing quantized consumes the sum, as in the simulation). ORT fuses DQ, DQ → Add → Q into QLinearAdd.
- ReLU6 / Hardtanh / clamp: Clip with min/max initializers; a ReLU6 fused into a quantized layer (`relu_max`)
  is the same Clip(0, relu_max) after the Conv/Gemm (ORT drops a Clip that the following Q's range already
  implies, ClipQuantFusion, so the layer still fuses into QLinearConv).
- global / adaptive-to-1 average pool, average pool, spatial mean (GlobalAveragePool, AveragePool, ReduceMean),
  flatten / view / reshape (Flatten, or Reshape to the traced shape with the batch dimension left free), constant
  padding (Pad), BatchNorm left unfolded, sub / mul / div, and the elementwise activations (Sigmoid, Tanh,
  HardSigmoid, HardSwish, SiLU as x · sigmoid(x)).
One departure, below the simulation's resolution: ORT stores a fused layer's bias as int32 codes b / (s_in · s_w), which
overflow where a channel's weights are all but zero (EfficientNet-Lite0's pretrained weights have such channels);
those channels get a weight grid just wide enough (`_fit_bias_codes`), or the bias stays a float Add (warned).
"""
from __future__ import annotations

import operator
import os
import warnings

import numpy as np
import onnx
import torch
import torch.fx as fx
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from nncompress.core.errors import UserError
from nncompress.core.io import atomic_write_bytes
from nncompress.quantization.fake_quant import FakeQuantize, LSQQuantizer, weight_codes
from nncompress.quantization.graph import QuantLayer

OPSET = 17


class _Builder:
    def __init__(self):
        self.nodes, self.inits, self.count = [], [], 0
        self.act_scale: dict[str, float] = {}  # DequantizeLinear output → its activation scale

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
    out = b.op("DequantizeLinear", [b.op("QuantizeLinear", [x, scale, zp], "q"), scale, zp], "dq")
    b.act_scale[out] = float(s)
    return out


def _clip(b: _Builder, x: str, lo: float | None, hi: float | None) -> str:
    """Clip(x, lo, hi); a missing bound is ONNX's empty optional input."""
    lo_name = b.const("clip_min", np.array(float(lo), np.float32)) if lo is not None else ""
    hi_name = b.const("clip_max", np.array(float(hi), np.float32)) if hi is not None else ""
    return b.op("Clip", [x, lo_name, hi_name], "clip")


def _layer_activation(b: _Builder, y: str, relu: bool, relu_max: float | None) -> str:
    """The activation fused into a QuantLayer: clamp(y, 0, relu_max) for a fused ReLU6, else ReLU (as in forward)."""
    if relu_max is not None:
        return _clip(b, y, 0.0, relu_max)
    return b.op("Relu", [y], "relu") if relu else y


def _float_layer(b: _Builder, x: str, layer: nn.Module, relu: bool = False) -> str:
    w = b.const("w", layer.weight.detach().float().numpy())
    return _op_for(b, layer, x, w, layer.bias, relu)


def _op_for(b: _Builder, layer: nn.Module, x: str, w_name: str, bias: torch.Tensor | None, relu: bool,
            relu_max: float | None = None) -> str:
    inputs = [x, w_name] + ([b.const("bias", bias.detach().float().numpy())] if bias is not None else [])
    if isinstance(layer, nn.Linear):
        y = b.op("Gemm", inputs, "gemm", transB=1)
    elif isinstance(layer, nn.Conv2d) and layer.padding_mode == "zeros" and not isinstance(layer.padding, str):
        ph, pw = layer.padding
        y = b.op("Conv", inputs, "conv", kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                 pads=[ph, pw, ph, pw], dilations=list(layer.dilation), group=layer.groups)
    else:
        raise UserError(f"ONNX export supports Linear and zero-padded Conv2d layers, not {type(layer).__name__}")
    return _layer_activation(b, y, relu, relu_max)


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
    return _layer_activation(b, y, ql.relu, ql.relu_max)


_INT32_MAX = 2**31 - 1


def _fit_bias_codes(w: torch.Tensor, codes: torch.Tensor, s: torch.Tensor, bias: torch.Tensor, s_in: float,
                    out_step: float | None, qmin: int, qmax: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """ORT's QDQ fusion (QLinearConv, QGemm) stores the bias as int32 codes round(b / (s_in · s_w)); past 2^31 − 1 they
    wrap and the fused layer is silently wrong. It happens where a channel's weights are all but zero (a BN with γ ≈ 0
    folded in: EfficientNet-Lite0 has such channels) or the input range is tiny. Such a channel's weight scale is raised
    to s' = |b| / (s_in · (2^31 − 1)) and its weights re-coded on that grid — allowed only when the change of that
    output, ≤ fan_in · max|x| · s' (max|x| ≤ 255 · s_in on the input grid), is under 1 % of the output step, so the
    output codes stay those of the simulation but at rounding ties. Returns (codes, scales, fits); fits=False: no
    such raise is small enough."""
    s_ch = s.reshape(-1).expand(codes.shape[0]) if s.numel() == 1 else s.reshape(-1)
    need = bias.detach().abs().float() / (s_in * _INT32_MAX)
    if s.numel() == 1:
        need = need.max().expand_as(s_ch)
    raise_ch = need > s_ch
    if not bool(raise_ch.any()):
        return codes, s, True
    s_new = torch.where(raise_ch, need * (1 + 1e-6), s_ch)  # a hair above: the int32 code then rounds inside the range
    change = w[0].numel() * 255 * s_in * s_new[raise_ch]
    if out_step is None or float(change.max()) > 0.01 * out_step:
        return codes, s, False
    shape = [-1] + [1] * (w.dim() - 1)
    new_codes = torch.clamp(torch.round(w / s_new.reshape(shape)), qmin, qmax).to(codes.dtype)
    codes = torch.where(raise_ch.reshape(shape), new_codes, codes)
    return codes, (s_new if s.numel() > 1 else s_new[:1].reshape(s.shape)), True


def _layer(b: _Builder, x: str, ql: QuantLayer, weights_uint8: bool, name: str = "", out_step: float | None = None) -> str:
    w, bias = ql.folded()
    w = w.detach().float()
    wq = ql.weight_quant
    if wq is None:
        return _op_for(b, ql.layer, x, b.const("w", w.numpy()), bias, ql.relu, ql.relu_max)
    z = wq.qparams_for(w)[1]
    if wq.qmin < -128 or wq.qmax > 127 or int(torch.as_tensor(z).abs().max()) != 0:
        raise UserError("ONNX QDQ export needs symmetric weights of at most 8 bits")
    codes, s = weight_codes(wq, w)
    s = torch.as_tensor(s, dtype=torch.float32)
    s_in = b.act_scale.get(x)
    fits = True
    if bias is not None and s_in is not None:
        codes, s, fits = _fit_bias_codes(w, codes, s, bias, s_in, out_step, wq.qmin, wq.qmax)
    s_np = np.asarray(s.numpy(), np.float32)
    if weights_uint8:  # the same weights as codes + 128 with zero point 128: ORT then picks its u8·u8 kernels
        codes, zp_np = (codes + 128).to(torch.uint8).numpy(), np.full(s_np.shape, 128, np.uint8)
    else:
        codes, zp_np = codes.to(torch.int8).numpy(), np.zeros(s_np.shape, np.int8)
    attrs = {"axis": 0} if s_np.ndim == 1 else {}
    w_name = b.op("DequantizeLinear", [b.const("w_codes", codes), b.const("w_scale", s_np), b.const("w_zp", zp_np)], "w", **attrs)
    if not fits:
        # the bias in a float Add after the layer, with the simulation's values: ORT then has no int32 bias to build; it
        # still runs a Gemm as QGemm with a float output, but DQ → Conv → Add → Q does not fuse and a Conv runs in float
        warnings.warn(f"ONNX QDQ export: layer '{name}' runs in float in ONNX Runtime (a Linear: its int8 product, "
                      f"the bias in float): its bias needs int32 codes beyond "
                      f"2^31 − 1 at input scale {s_in:.3g} and weight scales down to {float(s.min()):.3g}, and no weight scale "
                      "large enough leaves its outputs unchanged", stacklevel=4)
        y = _op_for(b, ql.layer, x, w_name, None, False)
        shape = [-1] + [1] * (ql.layer.weight.dim() - 2)  # [C] for Linear, [C, 1, 1] for Conv2d
        y = b.op("Add", [y, b.const("bias", bias.detach().float().reshape(shape).numpy())], "bias_add")
        return _layer_activation(b, y, ql.relu, ql.relu_max)
    return _op_for(b, ql.layer, x, w_name, bias, ql.relu, ql.relu_max)


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


_SUPPORTED = ("conv, linear (+ReLU/ReLU6), add/sub/mul/div, ReLU, ReLU6/Hardtanh/clamp, Sigmoid, Tanh, Hardsigmoid, Hardswish, "
              "SiLU, max/average pool, global/adaptive-to-1 average pool, mean over H,W, flatten/view/reshape, constant pad, "
              "BatchNorm, dropout")
_BINARY_FUNCS = {operator.add: "Add", operator.iadd: "Add", torch.add: "Add", operator.sub: "Sub", operator.isub: "Sub",
                 torch.sub: "Sub", operator.mul: "Mul", operator.imul: "Mul", torch.mul: "Mul", operator.truediv: "Div",
                 torch.div: "Div"}
_BINARY_METHODS = {"add": "Add", "add_": "Add", "sub": "Sub", "sub_": "Sub", "mul": "Mul", "mul_": "Mul",
                   "div": "Div", "div_": "Div"}
_UNARY_MODULES = {nn.Sigmoid: "Sigmoid", nn.Tanh: "Tanh", nn.Hardswish: "HardSwish"}
_UNARY_FUNCS = {torch.sigmoid: "Sigmoid", F.sigmoid: "Sigmoid", torch.tanh: "Tanh", F.tanh: "Tanh", F.hardswish: "HardSwish"}
_UNARY_METHODS = {"sigmoid": "Sigmoid", "tanh": "Tanh"}
_IDENTITY_FUNCS = {F.dropout, torch.dropout}
_IDENTITY_METHODS = {"contiguous", "clone", "detach"}
_RESHAPE_FUNCS = {torch.reshape, torch.flatten, torch.squeeze, torch.unsqueeze}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "squeeze", "unsqueeze"}
_SHAPE_METHODS = {"size", "dim"}  # ints feeding a view/reshape: read from the traced shapes instead
_SHAPE = object()  # env marker: the node holds shape metadata (an int, a torch.Size), not a tensor


def _arg(node: fx.Node, i: int, key: str, default=None):
    return node.args[i] if len(node.args) > i else node.kwargs.get(key, default)


def _clip_bounds(node: fx.Node, m: nn.Module | None) -> tuple[float | None, float | None] | None:
    """(min, max) of a ReLU6 / Hardtanh / clamp node, None when the node is none of these."""
    if isinstance(m, nn.ReLU6):
        return 0.0, 6.0
    if isinstance(m, nn.Hardtanh):
        return float(m.min_val), float(m.max_val)
    if node.op == "call_function" and node.target is F.relu6:
        return 0.0, 6.0
    if node.op == "call_function" and node.target is F.hardtanh:
        return _arg(node, 1, "min_val", -1.0), _arg(node, 2, "max_val", 1.0)
    if (node.op == "call_function" and node.target in (torch.clamp, torch.clip)) or \
            (node.op == "call_method" and node.target in ("clamp", "clip", "clamp_", "clip_")):
        return _arg(node, 1, "min"), _arg(node, 2, "max")
    return None


def _shape(node: fx.Node) -> tuple[int, ...]:
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        raise UserError(f"ONNX export: no traced shape for '{node.name}' (reshape of a non-tensor value is not supported)")
    return tuple(meta.shape)


def _reshape(b: _Builder, x: str, node: fx.Node) -> str:
    """view / reshape / flatten / squeeze / unsqueeze as one Reshape to the traced shape, the batch dimension kept
    free (0 = copy it from the input), so the model runs at any batch size. Flatten from dim 1 is ONNX Flatten."""
    src, out = _shape(node.args[0]), _shape(node)
    if len(out) == 2 and out[0] == src[0]:
        return b.op("Flatten", [x], "flatten", axis=1)
    if not out or not src or out[0] != src[0]:
        raise UserError(f"ONNX export: '{node.name}' reshapes {list(src)} to {list(out)}, changing the batch dimension; "
                        "only reshapes that keep dimension 0 are exported")
    return b.op("Reshape", [x, b.const("shape", np.array([0, *out[1:]], np.int64))], "reshape")


def _pad(b: _Builder, x: str, node: fx.Node, m: nn.Module | None) -> str:
    """Constant padding. torch lists (begin, end) pairs from the last dimension backwards; ONNX lists all begins,
    then all ends, from the first dimension."""
    if m is not None:
        torch_pads, value = list(m.padding), float(m.value)
    else:
        torch_pads, mode, value = list(_arg(node, 1, "pad")), _arg(node, 2, "mode", "constant"), _arg(node, 3, "value", 0.0)
        if mode != "constant":
            raise UserError(f"ONNX export: '{node.name}' pads in mode '{mode}'; only constant padding is exported")
    rank = len(_shape(node.args[0]))
    begins, ends = [0] * rank, [0] * rank
    for i in range(len(torch_pads) // 2):
        begins[rank - 1 - i], ends[rank - 1 - i] = torch_pads[2 * i], torch_pads[2 * i + 1]
    pads = b.const("pads", np.array(begins + ends, np.int64))
    return b.op("Pad", [x, pads, b.const("pad_value", np.array(float(value or 0.0), np.float32))], "pad", mode="constant")


def _avg_pool(b: _Builder, x: str, node: fx.Node, m: nn.Module | None) -> str:
    if m is not None:
        k, s, p, ceil, inc, div = m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad, m.divisor_override
    else:
        k, s, p = _arg(node, 1, "kernel_size"), _arg(node, 2, "stride"), _arg(node, 3, "padding", 0)
        ceil, inc = _arg(node, 4, "ceil_mode", False), _arg(node, 5, "count_include_pad", True)
        div = _arg(node, 6, "divisor_override")
    if div is not None:
        raise UserError(f"ONNX export: average pool '{node.name}' with divisor_override is not supported")
    pair = lambda v: list(v) if isinstance(v, (tuple, list)) else [v, v]  # noqa: E731
    ph, pw = pair(p)
    return b.op("AveragePool", [x], "avgpool", kernel_shape=pair(k), strides=pair(s or k), pads=[ph, pw, ph, pw],
                ceil_mode=int(bool(ceil)), count_include_pad=int(bool(inc)))


def _batch_norm(b: _Builder, x: str, bn: nn.Module) -> str:
    c = bn.num_features
    w = bn.weight if bn.affine else torch.ones(c)
    bias = bn.bias if bn.affine else torch.zeros(c)
    const = lambda base, t: b.const(base, t.detach().float().numpy())  # noqa: E731
    return b.op("BatchNormalization", [x, const("bn_scale", w), const("bn_bias", bias), const("bn_mean", bn.running_mean),
                                       const("bn_var", bn.running_var)], "bn", epsilon=float(bn.eps))


def _output_step(node: fx.Node, mods) -> float | None:
    """Scale of the activation quantizer right after `node` (static graphs put one after every quantized layer)."""
    users = list(node.users)
    q = mods.get(users[0].target) if len(users) == 1 and users[0].op == "call_module" else None
    return float(q.qparams()[0]) if isinstance(q, (FakeQuantize, LSQQuantizer)) and q.qparams()[0].numel() == 1 else None


def _export(gm: fx.GraphModule, example_input: torch.Tensor, weights_uint8: bool, act_int8: bool = False) -> bytes:
    mods = dict(gm.named_modules())
    b, env = _Builder(), {}
    out_name = None
    with torch.no_grad():
        gm.eval()
        ShapeProp(gm).propagate(example_input)  # shapes for reshapes and pads (static graphs are frozen: no observer moves)
    out_node = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    if not isinstance(out_node, fx.Node):
        raise UserError("ONNX export needs a model that returns one tensor (not a tuple, list or dict)")
    out_shape = ["batch", *_shape(out_node)[1:]]

    def t(a) -> str:
        """ONNX name of a tensor argument; Python scalars become float32 initializers."""
        if isinstance(a, fx.Node):
            v = env.get(a)
            if v is None or v is _SHAPE:
                raise UserError(f"ONNX export: '{a.name}' is used as a tensor but is not one the exporter can compute")
            return v
        if isinstance(a, (int, float)) and not isinstance(a, bool):
            return b.const("scalar", np.array(float(a), np.float32))
        raise UserError(f"ONNX export: operand {a!r} is neither a tensor nor a number")

    for node in gm.graph.nodes:
        m = mods.get(node.target) if node.op == "call_module" else None
        fn = node.target if node.op == "call_function" else None
        meth = node.target if node.op == "call_method" else None
        x = node.args[0] if node.args else None
        if node.op == "placeholder":
            env[node] = "input"
        elif node.op == "output":
            out_name = t(node.args[0])
        elif isinstance(m, (FakeQuantize, LSQQuantizer)):
            # after pass-through ops too: an exact no-op on values already on the grid, but it hands ORT the
            # DQ → op → Q patterns it fuses into integer kernels
            env[node] = _act_qdq(b, t(x), m, act_int8)
        elif isinstance(m, QuantLayer) and m.input_quant is not None:
            env[node] = _dynamic_linear(b, t(x), m, node.target)
        elif isinstance(m, QuantLayer):
            env[node] = _layer(b, t(x), m, weights_uint8, node.target, _output_step(node, mods))
        elif isinstance(m, (nn.Linear, nn.Conv2d)):
            env[node] = _float_layer(b, t(x), m)
        elif isinstance(m, nn.ReLU) or fn in (torch.relu, F.relu) or meth in ("relu", "relu_"):
            env[node] = b.op("Relu", [t(x)], "relu")
        elif (bounds := _clip_bounds(node, m)) is not None:
            lo, hi = bounds
            if isinstance(lo, fx.Node) or isinstance(hi, fx.Node):
                raise UserError(f"ONNX export: clamp '{node.name}' has tensor bounds; only number bounds are exported")
            env[node] = _clip(b, t(x), lo, hi)
        elif fn in _BINARY_FUNCS or meth in _BINARY_METHODS:
            op = _BINARY_FUNCS.get(fn) or _BINARY_METHODS[meth]
            other = _arg(node, 1, "other")
            if fn is torch.div and node.kwargs.get("rounding_mode") is not None:
                raise UserError(f"ONNX export: '{node.name}' divides with rounding_mode; only true division is exported")
            alpha = node.kwargs.get("alpha", 1)
            other_name = t(other) if alpha == 1 else b.op("Mul", [t(other), t(alpha)], "alpha")  # x + alpha·y
            env[node] = b.op(op, [t(x), other_name], op.lower())
        elif isinstance(m, tuple(_UNARY_MODULES)) or fn in _UNARY_FUNCS or meth in _UNARY_METHODS:
            op = _UNARY_MODULES.get(type(m)) or _UNARY_FUNCS.get(fn) or _UNARY_METHODS[meth]
            env[node] = b.op(op, [t(x)], op.lower())
        elif isinstance(m, nn.Hardsigmoid) or fn is F.hardsigmoid:  # relu6(x + 3) / 6
            env[node] = b.op("HardSigmoid", [t(x)], "hardsigmoid", alpha=1.0 / 6.0, beta=0.5)
        elif isinstance(m, nn.SiLU) or fn is F.silu:
            env[node] = b.op("Mul", [t(x), b.op("Sigmoid", [t(x)], "sigmoid")], "silu")
        elif isinstance(m, nn.MaxPool2d) or fn in (torch.max_pool2d, F.max_pool2d):
            k, s, p = _pool_args(node, mods)
            env[node] = b.op("MaxPool", [t(x)], "maxpool", kernel_shape=k, strides=s, pads=p)
        elif (isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1))) or \
                (fn is F.adaptive_avg_pool2d and _arg(node, 1, "output_size") in (1, (1, 1))):
            env[node] = b.op("GlobalAveragePool", [t(x)], "gap")
        elif isinstance(m, nn.AvgPool2d) or fn is F.avg_pool2d:
            env[node] = _avg_pool(b, t(x), node, m)
        elif fn is torch.mean or meth == "mean":
            dims = _arg(node, 1, "dim")
            rank = len(_shape(x))
            axes = sorted(d % rank for d in (dims if isinstance(dims, (tuple, list)) else [dims])) if dims is not None else None
            if axes is None or 0 in axes:
                raise UserError(f"ONNX export: mean '{node.name}' reduces the batch dimension; only means over feature "
                                "axes are exported")
            env[node] = b.op("ReduceMean", [t(x)], "mean", axes=axes, keepdims=int(bool(_arg(node, 2, "keepdim", False))))
        elif isinstance(m, nn.Flatten) or fn in _RESHAPE_FUNCS or meth in _RESHAPE_METHODS:
            env[node] = _reshape(b, t(x), node)
        elif isinstance(m, (nn.ZeroPad2d, nn.ConstantPad2d, nn.ConstantPad1d, nn.ConstantPad3d)) or fn is F.pad:
            env[node] = _pad(b, t(x), node, m)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            env[node] = _batch_norm(b, t(x), m)
        elif isinstance(m, (nn.Dropout, nn.Dropout2d, nn.Identity)) or fn in _IDENTITY_FUNCS or meth in _IDENTITY_METHODS:
            env[node] = t(x)
        elif meth in _SHAPE_METHODS or (fn is getattr and _arg(node, 1, "name") == "shape") \
                or (fn is operator.getitem and env.get(x) is _SHAPE):
            env[node] = _SHAPE
        else:
            what = f"{type(m).__name__} module '{node.target}'" if m is not None else f"{node.op} {node.target}"
            raise UserError(f"ONNX QDQ export does not support {what} (node '{node.name}'); supported: {_SUPPORTED}")
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
