"""ONNX export of a model quantized by module swap (`swap.quantize_`): ONNX Runtime's integer operators fed with
OUR codes, scales and zero points, for any model the TorchScript exporter can trace (Hugging Face BERT, GPT-2,
ViT, ... with keyword inputs and dynamic batch and sequence axes).

    q = quantize_(model, DynamicInt8Config())
    blob = to_onnx_int8(q, tokenizer(texts, return_tensors="pt"))   # inputs named input_ids, attention_mask (int64)

How: during the export, each quantized module's `forward` is replaced (on the instance, restored afterwards; the
eager numerics are never changed) by a `torch.autograd.Function` whose `symbolic` writes the module's integer
arithmetic as ONNX nodes; everything else in the model is exported by PyTorch's TorchScript exporter as usual.
The nodes per module (Jacob et al. 2018, eq. 4–7: y = s_x·s_w·Σ(q_x − z_x)·q_w + b, the integer sum exact):

- Linear, act_mode "dynamic" (per-token symmetric int8, what the eager module computes): s = max(max|x_row|/127, ε)
  (ReduceMax, ReduceMin) → per-axis QuantizeLinear(x as [tokens, K], s, 128) = round(x/s) + 128 as uint8 →
  MatMulInteger(q, W_q int8, zero point 128) → Cast → × s → × s_w → + b. The same integers and the same float
  operations in the same order as `QuantizedLinear.forward`: ORT agrees with our eager model to float rounding.
- Linear, dynamic_activations="per_tensor" (or act_mode "dynamic_tensor"): DynamicQuantizeLinear (one affine uint8
  grid from the whole input's min/max) → MatMulInteger → Cast → × (s_x·s_w) → + b: the pattern ORT fuses into
  one DynamicQuantizeMatMul kernel (its own dynamic quantizer's graph, with our weight codes). Fewer nodes than
  per-token, a coarser activation grid: `benchmarks/onnx_int8.py` measures both.
- Linear / Conv, act_mode "static": QuantizeLinear(x, s_x, z_x) with the calibrated (s_x, z_x) → MatMulInteger /
  ConvInteger(x_q, W_q int8, z_x) → Cast → × (s_x·s_w) → + b. ConvInteger pads with the zero point, the eager
  kernel pads with the zero point's code: the same integers. (Not QDQ around a float MatMul/Conv: ORT fuses that
  into QLinearMatMul/QLinearConv only when a QuantizeLinear with the *output's* scale follows, and a swapped layer
  has no output quantizer; the integer operators need none and are exact.)
- Conv, act_mode "dynamic" (per-sample symmetric): as the dynamic Linear, on ConvInteger.
- Weight-only Linear / Conv: int8 (or unpacked int4) codes → Cast → × s (per channel or per group) → MatMul /
  Conv in float (storage saving; ORT folds the dequantization at load). 4-bit groups of 16…256 (a power of two)
  export as ONNX Runtime's MatMulNBits (com.microsoft) with our packed bytes, as `weight_only.matmul_nbits_model`.
- Embedding: Gather on the int8 codes and on the row scales → Cast → ×: only the looked-up rows are dequantized.
  An embedding tied to an int8 output layer (GPT-2's wte / lm_head) gathers columns of that layer's [D, V] codes,
  so the file stores the tied codes once.

A module holding int8 codes that this exporter does not know (QuantizedRNN, third-party quantized layers) is a
UserError naming it: quantize with `skip=[name]` to keep it in float, or export it another way.
"""
from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from nncompress.core.errors import UserError
from nncompress.quantization.modules import _DYN_QMAX, _EPS, QuantizedConv, QuantizedEmbedding, QuantizedLinear, QuantizedWeight

DYNAMIC_ACTIVATIONS = ("per_token", "per_tensor")
_ONNX_FLOAT, _ONNX_UINT8 = 1, 2  # TensorProto.FLOAT, TensorProto.UINT8
_ACTIVE: dict[int, tuple[nn.Module, dict]] = {}  # export key → (module, options), alive only during one export


class _IntegerOp(torch.autograd.Function):
    """Runs the quantized module eagerly (the traced shapes and values) and exports as its integer ONNX nodes."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, key: int) -> torch.Tensor:  # noqa: ARG004 - autograd.Function signature
        module, _ = _ACTIVE[key]
        # the tracer is paused: the module's buffers are traced values of the exported model, and the eager kernel
        # reading them would otherwise be recorded inside this op (the exporter then fails on unknown values)
        state = torch._C._get_tracing_state()
        torch._C._set_tracing_state(None)
        try:
            return module._onnx_swap_eager(x)
        finally:
            torch._C._set_tracing_state(state)

    @staticmethod
    def symbolic(g, x, key: int):
        module, opts = _ACTIVE[key]
        if isinstance(module, QuantizedEmbedding):
            return _embedding(g, x, module, opts)
        if module.act_mode == "none":
            return _weight_only(g, x, module, opts)
        return _integer_layer(g, x, module, opts)


# ---------------------------------------------------------------------------------------------------- node helpers
def _const(g, value, dtype=torch.float32):
    return g.op("Constant", value_t=torch.as_tensor(value, dtype=dtype).detach().cpu().clone())


def _reduce_absmax(g, x, axes: list[int], opset: int):
    """max|x| over `axes` as max(max x, −min x): two reductions that only read x (Abs would write a copy first)."""
    if opset >= 18:
        ax = _const(g, axes, torch.int64)
        hi, lo = g.op("ReduceMax", x, ax, keepdims_i=1), g.op("ReduceMin", x, ax, keepdims_i=1)
    else:
        hi, lo = g.op("ReduceMax", x, axes_i=axes, keepdims_i=1), g.op("ReduceMin", x, axes_i=axes, keepdims_i=1)
    return g.op("Max", hi, g.op("Neg", lo))


def _unsqueeze_last(g, x):
    return g.op("Unsqueeze", x, _const(g, [-1], torch.int64))


def _bshape(module: nn.Module) -> list[int]:
    """Broadcast shape of a per-output-channel vector: [N] for Linear (last axis), [1, O, 1(, 1)] for convolutions."""
    return [-1] if isinstance(module, QuantizedLinear) else [1, -1] + [1] * module.dim


def _conv_attrs(m: QuantizedConv) -> dict:
    return {"kernel_shape_i": list(m.kernel_size), "strides_i": list(m.stride), "pads_i": list(m.padding) * 2,
            "dilations_i": list(m.dilation), "group_i": m.groups}


def _where(m: nn.Module) -> str:
    return f"layer '{getattr(m, '_onnx_swap_name', '?')}' ({type(m).__name__})"


# ---------------------------------------------------------------------------------------------------- emitters
def _integer_layer(g, x, m, opts):
    """Linear / Conv with int8 activations: integer product on MatMulInteger / ConvInteger, then the float epilogue."""
    wq = m.weight_q
    codes = wq.int_codes().reshape(wq.shape)
    is_linear = isinstance(m, QuantizedLinear)
    w_const = _codes_kn(g, wq, opts) if is_linear else _const(g, codes, torch.int8)
    s_w = wq.channel_scale().float().reshape(_bshape(m))

    def product(xq, x_zp):
        if is_linear:
            return g.op("MatMulInteger", xq, w_const, x_zp)
        return g.op("ConvInteger", xq, w_const, x_zp, **_conv_attrs(m))

    per_tensor = m.act_mode == "dynamic_tensor" or (m.act_mode == "dynamic" and is_linear and opts["dynamic_activations"] == "per_tensor")
    if per_tensor:
        if (m.act_qmin, m.act_qmax) != (0, 255) and m.act_mode == "dynamic_tensor":
            raise UserError(f"ONNX export: {_where(m)} has activation codes [{m.act_qmin}, {m.act_qmax}]; DynamicQuantizeLinear is "
                            "8-bit uint8 [0, 255]: quantize without a reduced activation range")
        xq, xs, xz = g.op("DynamicQuantizeLinear", x, outputs=3)
        acc = g.op("Cast", product(xq, xz), to_i=_ONNX_FLOAT)
        y = g.op("Mul", acc, g.op("Mul", xs, _const(g, s_w)))
    elif m.act_mode == "dynamic":  # symmetric ±127 codes, one scale per row (Linear) or per sample (Conv): as the eager module
        axes = [-1] if is_linear else list(range(1, m.dim + 2))
        amax = _reduce_absmax(g, x, axes, opts["opset"])
        s = g.op("Max", g.op("Div", amax, _const(g, float(_DYN_QMAX))), _const(g, _EPS))
        xq = _row_codes(g, x, s, m.in_features if is_linear else None)
        zp128 = _const(g, 128, torch.uint8)
        acc = g.op("Cast", product(xq, zp128), to_i=_ONNX_FLOAT)
        y = g.op("Mul", g.op("Mul", acc, s), _const(g, s_w)) if is_linear else g.op("Mul", acc, g.op("Mul", s, _const(g, s_w)))
    else:  # static: calibrated (s_x, z_x); codes [q_min, q_max] moved into uint8 by −q_min
        s_x, z_x = float(m.act_scale), int(m.act_zero_point)
        z_u8, levels = z_x - m.act_qmin, m.act_qmax - m.act_qmin
        if levels < 255:  # fewer than 8 bits: saturate to the grid's ends first, as the eager clamp does
            x = g.op("Clip", x, _const(g, s_x * (0 - z_u8)), _const(g, s_x * (levels - z_u8)))
        zp = _const(g, z_u8, torch.uint8)
        xq = g.op("QuantizeLinear", x, _const(g, s_x), zp)
        acc = g.op("Cast", product(xq, zp), to_i=_ONNX_FLOAT)
        y = g.op("Mul", acc, _const(g, torch.tensor(s_x, dtype=torch.float32) * s_w))
    if m.bias is not None:
        y = g.op("Add", y, _const(g, m.bias.float().reshape(_bshape(m))))
    return g.op("Relu", y) if m.relu else y


def _row_codes(g, x, s, features: int | None):
    """uint8 codes round(x / s_row) + 128 (zero point 128: the u8·s8 kernels) in one per-axis QuantizeLinear over the
    rows: x as [rows, features] (rows = tokens for Linear, samples for Conv), s as [rows]. It divides and rounds half
    to even as the eager `quantize_rows` does; |x / s| ≤ 127 by the choice of s, so its [0, 255] saturation never
    binds and the codes equal the eager clamp(round(x / s), ±127) + 128."""
    x_shape = g.op("Shape", x)
    x2 = g.op("Reshape", x, _const(g, [-1, features] if features else [0, -1], torch.int64))  # Conv: [N, C·spatial]
    s1 = g.op("Reshape", s, _const(g, [-1], torch.int64))
    zp = g.op("ConstantOfShape", g.op("Shape", s1), value_t=torch.tensor([128], dtype=torch.uint8))
    return g.op("Reshape", g.op("QuantizeLinear", x2, s1, zp, axis_i=0), x_shape)


def _dequantized_weight(g, wq: QuantizedWeight):
    """Float weight s·q in the original shape from int8 codes (int4 codes unpacked to one per byte) and the scales."""
    out = wq.shape[0]
    codes = wq.int_codes().reshape(out, -1, wq._cols_per_scale)
    scale = wq.scale.float().reshape(wq.scale.shape[0], -1, 1)
    w = g.op("Mul", g.op("Cast", _const(g, codes, torch.int8), to_i=_ONNX_FLOAT), _const(g, scale))
    return g.op("Reshape", w, _const(g, list(wq.shape), torch.int64))


def _nbits_block(wq: QuantizedWeight) -> int | None:
    """The MatMulNBits block for a 4-bit weight (its group, or the whole row per channel), None when it has none."""
    k = wq.in_columns
    block = wq.group_size if wq.granularity == "group" else (k if wq.granularity == "channel" else None)
    if wq.bits != 4 or block is None or block & (block - 1) or not 16 <= block <= 256 or k % block:
        return None
    return block


def _weight_only(g, x, m, opts):
    wq = m.weight_q
    block = _nbits_block(wq) if isinstance(m, QuantizedLinear) and opts["ort_contrib_ops"] else None
    if block is not None:  # ORT's 4-bit kernel on our packed bytes (low nibble first, code + 8 → zero point 8)
        n, k = wq.shape[0], wq.in_columns
        b = wq.codes.reshape(n, k // block, block // 2)
        inputs = [x, _const(g, b, torch.uint8), _const(g, wq.scale.float().reshape(-1))]
        y = g.op("com.microsoft::MatMulNBits", *inputs, K_i=k, N_i=n, bits_i=4, block_size_i=block)
        if m.bias is not None:
            y = g.op("Add", y, _const(g, m.bias.float()))
        return g.op("Relu", y) if m.relu else y
    w = _dequantized_weight(g, wq)
    if isinstance(m, QuantizedLinear):
        y = g.op("MatMul", x, g.op("Transpose", w, perm_i=[1, 0]))
        if m.bias is not None:
            y = g.op("Add", y, _const(g, m.bias.float()))
    else:
        inputs = [x, w] + ([_const(g, m.bias.float())] if m.bias is not None else [])
        y = g.op("Conv", *inputs, **_conv_attrs(m))
    return g.op("Relu", y) if m.relu else y


def _codes_kn(g, wq: QuantizedWeight, opts: dict):
    """The [K, N] int8 constant MatMulInteger takes (our [N, K] codes transposed), made once per QuantizedWeight per
    export: a weight tied between an embedding and an output layer (GPT-2's wte / lm_head) is stored once."""
    cache = opts["_codes_kn"]
    if id(wq) not in cache:
        cache[id(wq)] = _const(g, wq.int_codes().reshape(wq.shape[0], -1).t().contiguous(), torch.int8)
    return cache[id(wq)]


def _embedding(g, ids, m: QuantizedEmbedding, opts):
    wq = m.weight_q
    rank = ids.type().dim() if hasattr(ids.type(), "dim") else None
    if id(wq) in opts["_tied"] and wq.group_size is None and rank is not None:
        # tied to an int8 output layer: gather columns of its [D, V] constant, then move D last (a copy of the looked-up
        # rows only), so the codes are stored once
        cols = g.op("Gather", _codes_kn(g, wq, opts), ids, axis_i=1)  # [D, *ids]
        rows = g.op("Transpose", g.op("Cast", cols, to_i=_ONNX_FLOAT), perm_i=list(range(1, rank + 1)) + [0])
        return g.op("Mul", rows, _unsqueeze_last(g, g.op("Gather", _const(g, wq.scale.float().expand(m.num_embeddings).contiguous()),
                                                            ids, axis_i=0)))
    per = wq.group_size or m.embedding_dim
    codes = wq.int_codes().reshape(m.num_embeddings, -1, per)  # [V, groups, per]
    rows = g.op("Cast", g.op("Gather", _const(g, codes, torch.int8), ids, axis_i=0), to_i=_ONNX_FLOAT)  # [..., groups, per]
    scale = wq.scale.float().reshape(-1, 1) if wq.scale.dim() == 1 else wq.scale.float()  # [V, groups]
    if scale.shape[0] == 1:
        scale = scale.expand(m.num_embeddings, -1).contiguous()
    s = _unsqueeze_last(g, g.op("Gather", _const(g, scale), ids, axis_i=0))
    out_shape = g.op("Concat", g.op("Shape", ids), _const(g, [m.embedding_dim], torch.int64), axis_i=0)
    return g.op("Reshape", g.op("Mul", rows, s), out_shape)


# ---------------------------------------------------------------------------------------------------- the export
_KNOWN = (QuantizedLinear, QuantizedConv, QuantizedEmbedding)


def _owner(model: nn.Module, name: str) -> str:
    """The layer a QuantizedWeight belongs to: its nearest ancestor that is not a ModuleDict / ModuleList."""
    parts = name.split(".")[:-1]
    while parts and isinstance(model.get_submodule(".".join(parts)), (nn.ModuleDict, nn.ModuleList)):
        parts.pop()
    return ".".join(parts)


def _quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The swap-quantized modules this exporter writes, by name; a UserError naming any other module that holds
    quantized codes (a QuantizedRNN, a third-party int8 layer), which the exporter cannot write faithfully."""
    found, owners = {}, {}
    for name, m in model.named_modules():
        if isinstance(m, _KNOWN):
            found[name] = m
            continue
        if any(name.startswith(k + ".") for k in found if k) or (("" in found) and name):
            continue  # the QuantizedWeight inside a known layer
        int_buffers = [b for b in m.buffers(recurse=False) if b.dtype in (torch.int8, torch.uint8)]
        if isinstance(m, QuantizedWeight) or int_buffers:
            owners.setdefault(_owner(model, name) if isinstance(m, QuantizedWeight) else name, m)
    for owner in owners:
        mod = model.get_submodule(owner) if owner else model
        if any(owner == k or owner.startswith(k + ".") for k in found if k):
            continue
        raise UserError(f"ONNX int8 export: module '{owner or '<root>'}' ({type(mod).__name__}) holds quantized codes this exporter "
                        f"does not know (it writes {', '.join(t.__name__ for t in _KNOWN)}); quantize with skip=['{owner}'] "
                        "to keep it in float")
    return found


def is_swap_quantized(model: nn.Module) -> bool:
    """Whether any module of `model` is a swap-quantized layer (what `quantize_` puts in place)."""
    from nncompress.quantization.recurrent import QuantizedRNN

    return isinstance(model, nn.Module) and any(isinstance(m, _KNOWN + (QuantizedRNN,)) for m in model.modules())


def _first_tensor(output: Any) -> tuple[torch.Tensor, str]:
    """The tensor an exported graph returns, and its name: `logits` of a HF output, else its first tensor field
    (BertModel's last_hidden_state), else the first tensor of a tuple."""
    if isinstance(output, torch.Tensor):
        return output, "output"
    if isinstance(output, Mapping):
        if isinstance(output.get("logits"), torch.Tensor):
            return output["logits"], "logits"
        for k, v in output.items():
            if isinstance(v, torch.Tensor):
                return v, str(k)
    if isinstance(output, (tuple, list)):
        for v in output:
            if isinstance(v, torch.Tensor):
                return v, "output"
    raise UserError(f"ONNX int8 export: the model returned {type(output).__name__} with no tensor to export")


class _Inputs(nn.Module):
    """Positional graph inputs → the model's call (keyword arguments named by `keys`, or positional), one output."""

    def __init__(self, model: nn.Module, keys: list[str] | None):
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        out = self.model(**dict(zip(self.keys, tensors))) if self.keys is not None else self.model(*tensors)
        return _first_tensor(out)[0]


def _input_spec(example_inputs) -> tuple[tuple, list[str], list[str] | None]:
    """(positional tensors, graph input names, keyword names or None)."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), ["input"], None
    if isinstance(example_inputs, Mapping):
        keys = list(example_inputs)
        bad = [k for k in keys if not isinstance(example_inputs[k], torch.Tensor)]
        if not keys or bad:
            raise UserError(f"ONNX int8 export: keyword inputs must all be tensors (got non-tensors for {bad}); pass the "
                            "tokenizer's output with return_tensors='pt'")
        return tuple(example_inputs[k] for k in keys), [str(k) for k in keys], [str(k) for k in keys]
    if isinstance(example_inputs, (tuple, list)) and example_inputs and all(isinstance(t, torch.Tensor) for t in example_inputs):
        return tuple(example_inputs), [f"input_{i}" for i in range(len(example_inputs))], None
    raise UserError(f"ONNX int8 export: example_inputs must be a tensor, a tuple of tensors or a dict of keyword tensors, "
                    f"got {type(example_inputs).__name__}")


def _axes(args: tuple, names: list[str], out: torch.Tensor, out_name: str) -> dict:
    """Dim 0 of every input and of the output is the batch; when token ids (integer rank-2 tensors) are among the
    inputs, dim 1 of every rank-2 input is the sequence, and so is the output's dim 1 when it has the same length."""
    tokens = [a for a in args if a.dim() == 2 and not a.is_floating_point()]
    seq = tokens[0].shape[1] if tokens else None
    axes = {n: ({0: "batch", 1: "sequence"} if seq is not None and a.dim() == 2 else {0: "batch"}) for n, a in zip(names, args)}
    axes[out_name] = {0: "batch", 1: "sequence"} if seq is not None and out.dim() >= 3 and out.shape[1] == seq else {0: "batch"}
    return axes


@contextlib.contextmanager
def _exporting(layers: dict[str, nn.Module], opts: dict):
    """Route each layer's forward through `_IntegerOp` for the export; the original forwards come back afterwards."""
    keys = []
    try:
        for name, m in layers.items():
            key = id(m)
            if key in _ACTIVE:
                continue  # one module registered twice
            _ACTIVE[key] = (m, opts)
            keys.append(key)
            m._onnx_swap_name = name or "<root>"
            m._onnx_swap_eager = m.forward
            m.forward = lambda x, _key=key: _IntegerOp.apply(x, _key)
        yield
    finally:
        for key in keys:
            m = _ACTIVE.pop(key)[0]
            for attr in ("forward", "_onnx_swap_eager", "_onnx_swap_name"):
                m.__dict__.pop(attr, None)


def to_onnx_int8(model: nn.Module, example_inputs, *, dynamic_axes: bool = True, opset: int = 17,
                 dynamic_activations: str = "per_token", ort_contrib_ops: bool = True) -> bytes:
    """Serialized, checker-validated ONNX of a swap-quantized `model`, its quantized layers on integer operators.

    example_inputs: a tensor (graph input "input"), a tuple of positional tensors ("input_0", ...), or a dict of
    keyword tensors such as a tokenizer's output (graph inputs named by the keys; token ids stay int64).
    dynamic_axes: batch (dim 0) everywhere, and the sequence (dim 1) of rank-2 token inputs and of the output, so
    one file serves any batch size and text length. dynamic_activations: "per_token" writes our eager per-token
    int8 activations exactly; "per_tensor" uses DynamicQuantizeLinear (ORT's fused DynamicQuantizeMatMul, a
    coarser grid). ort_contrib_ops: 4-bit weight-only Linear layers with groups of 16…256 as ONNX Runtime's
    MatMulNBits (com.microsoft); False writes standard ONNX only. (ORT's MatMulIntegerToFloat would fuse the per-token
    epilogue, but with a per-row activation scale it disagreed with the integer reference in ORT 1.32: not used.)
    """
    if not isinstance(model, nn.Module):
        raise UserError(f"to_onnx_int8 takes an nn.Module, got {type(model).__name__}")
    if dynamic_activations not in DYNAMIC_ACTIVATIONS:
        raise UserError(f"dynamic_activations='{dynamic_activations}': use one of {', '.join(DYNAMIC_ACTIVATIONS)}")
    if isinstance(opset, bool) or not isinstance(opset, int) or not 17 <= opset <= 20:
        raise UserError(f"opset={opset!r}: the int8 export writes opset 17..20")
    layers = _quantized_layers(model)
    if not layers:
        raise UserError(f"ONNX int8 export: {type(model).__name__} has no quantized layer; run quantize_(model, config) first, "
                        "or export the float model with nncompress.export.to_onnx")
    args, names, keys = _input_spec(example_inputs)
    wrapper = _Inputs(model, keys)
    was_training = model.training
    model.eval()
    int8_linear = {id(m.weight_q) for m in layers.values() if isinstance(m, QuantizedLinear) and m.act_mode != "none"}
    tied = {id(m.weight_q) for m in layers.values() if isinstance(m, QuantizedEmbedding)} & int8_linear
    opts = {"opset": opset, "dynamic_activations": dynamic_activations, "ort_contrib_ops": ort_contrib_ops, "_tied": tied,
            "_codes_kn": {}}
    contrib = ort_contrib_ops and any(isinstance(m, QuantizedLinear) and m.act_mode == "none" and _nbits_block(m.weight_q)
                                      for m in layers.values())
    custom = {"com.microsoft": 1} if contrib else None
    buf = io.BytesIO()
    try:
        with torch.no_grad():
            out, out_name = _first_tensor(model(**dict(zip(keys, args))) if keys is not None else model(*args))
            out_name = out_name if out_name not in names else "output"
            axes = _axes(args, names, out, out_name) if dynamic_axes else None
            with _exporting(layers, opts), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
                try:
                    torch.onnx.export(wrapper, args, buf, dynamo=False, opset_version=opset, input_names=names,
                                      output_names=[out_name], dynamic_axes=axes, custom_opsets=custom)
                except UserError:
                    raise
                except Exception as e:  # noqa: BLE001 - the exporter raises many types; say which model failed
                    raise UserError(f"ONNX int8 export of {type(model).__name__} failed: {str(e).splitlines()[0][:300]}") from None
    finally:
        model.train(was_training)
    import onnx

    proto = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def integer_op_counts(onnx_model: bytes) -> dict[str, int]:
    """How many nodes of each integer / quantization operator a serialized model holds (what tests and reports check)."""
    import onnx

    ops = ("MatMulInteger", "ConvInteger", "DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear", "QLinearMatMul",
           "QLinearConv", "MatMulNBits", "Gather")
    counts = dict.fromkeys(ops, 0)
    for node in onnx.load_from_string(onnx_model).graph.node:
        if node.op_type in counts:
            counts[node.op_type] += 1
    return counts


def int8_weight_bytes(onnx_model: bytes) -> int:
    """Bytes of the int8/uint8 initializers and constants in a serialized model (the integer weights it carries)."""
    import onnx

    proto, total = onnx.load_from_string(onnx_model), 0
    tensors = list(proto.graph.initializer) + [a.t for n in proto.graph.node if n.op_type == "Constant" for a in n.attribute
                                               if a.name == "value"]
    for t in tensors:
        if t.data_type in (2, 3):  # UINT8, INT8
            total += math.prod(t.dims) if t.dims else 1
    return total
