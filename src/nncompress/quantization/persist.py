"""Saving and reloading module-swapped quantized models: safetensors + a JSON layout, never pickle.

    save_quantized_model(qmodel, "model.q.safetensors")
    qmodel = load_quantized(lambda: MyNet(), "model.q.safetensors")      # or a fresh float instance

The file holds the whole `state_dict()` of the quantized model — int8 / packed int4 codes, scales, activation
scales and zero points, float biases and every float parameter left in float — and, in the safetensors
metadata under "nncompress.quantization", a JSON layout: for each quantized module its kind (linear, conv,
embedding, lstm, gru), activation mode, code range, weight bits / granularity / group size and the float layer's
shape. Loading builds the float model
(or takes the instance given), swaps in empty quantized modules from the layout, restores ties and loads the
tensors strictly: outputs are bit-identical to the saved model's, because the codes and the kernels are.

Ties (Hugging Face `save_pretrained`'s rule): a tensor held under two names is written once; the layout records
the other names (`tied`), and a QuantizedWeight shared by two modules (a tied embedding and LM head) is
recorded as `weight_tied_to`, so after loading both modules share one holder again. Every field is validated
before use; a file that does not fit raises a one-line UserError naming the field or the module.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable

import torch
from torch import nn

from nncompress.core.errors import UserError
from nncompress.core.io import load_weights, save_weights, state_dict_mismatch
from nncompress.quantization.modules import ACT_MODES, QuantizedConv, QuantizedEmbedding, QuantizedLinear, QuantizedWeight
from nncompress.quantization.recurrent import QuantizedRNN

FORMAT = "nncompress.quantized/1"
META_KEY = "nncompress.quantization"
_KINDS = {"linear": QuantizedLinear, "conv": QuantizedConv, "embedding": QuantizedEmbedding, "lstm": QuantizedRNN, "gru": QuantizedRNN}


def _module_layout(m: nn.Module) -> dict:
    if isinstance(m, QuantizedRNN):
        return {"kind": m.cell.lower(), "act_mode": m.act_mode, "input_size": m.input_size, "hidden_size": m.hidden_size,
                "num_layers": m.num_layers, "bias": m.bias, "batch_first": m.batch_first, "bidirectional": m.bidirectional,
                "weights": {k: w.spec() for k, w in m.weights.items()}}
    w = m.weight_q.spec()
    if isinstance(m, QuantizedEmbedding):
        return {"kind": "embedding", "weight": w, "num_embeddings": m.num_embeddings, "embedding_dim": m.embedding_dim,
                "padding_idx": m.padding_idx}
    d = {"weight": w, "act_mode": m.act_mode, "relu": m.relu, "act_qrange": [m.act_qmin, m.act_qmax], "bias": m.bias is not None}
    if isinstance(m, QuantizedLinear):
        return {"kind": "linear", **d, "in_features": m.in_features, "out_features": m.out_features}
    return {"kind": "conv", **d, "dim": m.dim, "in_channels": m.in_channels, "out_channels": m.out_channels,
            "kernel_size": list(m.kernel_size), "stride": list(m.stride), "padding": list(m.padding), "dilation": list(m.dilation),
            "groups": m.groups}


def _storage_key(t: torch.Tensor) -> tuple:
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)


def save_quantized_model(model: nn.Module, path: str | os.PathLike) -> None:
    """Write a `quantize_`d model (codes, qparams, float rest) and its layout to one safetensors file, atomically."""
    modules, holders = {}, {}
    for name, m in model.named_modules():
        if isinstance(m, (QuantizedLinear, QuantizedConv, QuantizedEmbedding, QuantizedRNN)):
            layout = _module_layout(m)
            first = holders.setdefault(id(m.weight_q), name)
            if first != name and not isinstance(m, QuantizedRNN):
                layout["weight_tied_to"] = first
            modules[name] = layout
    if not modules:
        raise UserError("save_quantized_model: the model has no quantized modules; run quantize_(model, config) first")
    state, first_key, tied = {}, {}, {}
    for k, v in model.state_dict().items():
        key = _storage_key(v)
        if key in first_key:
            tied[k] = first_key[key]
        else:
            first_key[key] = k
            state[k] = v
    layout = {"format": FORMAT, "modules": modules, "tied": tied}
    save_weights(state, path, metadata={META_KEY: json.dumps(layout)})


# ---------------------------------------------------------------------------------------------------- validation
def _bad(path, what: str) -> UserError:
    return UserError(f"quantized model file {path}: {what}; save it again with save_quantized_model")


def _get(d: dict, key: str, types, path, where: str):
    if not isinstance(d, dict) or key not in d:
        raise _bad(path, f"{where} lacks the field '{key}'")
    v = d[key]
    if isinstance(v, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise _bad(path, f"{where}.{key} is {v!r}, expected {types}")
    if not isinstance(v, types):
        raise _bad(path, f"{where}.{key} is {v!r}, expected {getattr(types, '__name__', types)}")
    return v


def _ints(d: dict, key: str, path, where: str, n: int | None = None, lo: int = 0) -> list[int]:
    v = _get(d, key, list, path, where)
    if (n is not None and len(v) != n) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= lo for i in v):
        raise _bad(path, f"{where}.{key} is {v!r}, expected {n or 'a list of'} integers ≥ {lo}")
    return v


def _pos(d: dict, key: str, path, where: str) -> int:
    v = _get(d, key, int, path, where)
    if v < 1:
        raise _bad(path, f"{where}.{key} is {v}, expected a positive integer")
    return v


def _read_layout(path) -> dict:
    from safetensors import SafetensorError, safe_open

    if not os.path.isfile(path):
        raise UserError(f"quantized model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: not a valid safetensors file ({str(e).splitlines()[0][:200]})") from None
    if META_KEY not in meta:
        raise UserError(f"{path} is not a quantized model file (no '{META_KEY}' metadata); write it with save_quantized_model")
    try:
        layout = json.loads(meta[META_KEY])
    except json.JSONDecodeError as e:
        raise _bad(path, f"the layout is not valid JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(layout, dict) or layout.get("format") != FORMAT:
        raise _bad(path, f"format is {layout.get('format') if isinstance(layout, dict) else layout!r}, expected '{FORMAT}'")
    _get(layout, "modules", dict, path, "layout")
    tied = _get(layout, "tied", dict, path, "layout")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in tied.items()):
        raise _bad(path, "layout.tied must map tensor names to tensor names")
    return layout


def _weight(spec: dict, path, where: str) -> QuantizedWeight:
    shape = _ints(spec, "shape", path, where, lo=1)
    bits = _get(spec, "bits", int, path, where)
    gran = _get(spec, "granularity", str, path, where)
    group = spec.get("group_size")
    if group is not None and (isinstance(group, bool) or not isinstance(group, int)):
        raise _bad(path, f"{where}.group_size is {group!r}, expected an integer or null")
    if not 1 <= bits <= 8 or gran not in ("channel", "tensor", "group") or len(shape) < 2:
        raise _bad(path, f"{where} has bits={bits}, granularity={gran!r}, shape={shape}: expected 1..8 bits, "
                         "channel/tensor/group, ≥ 2 dims")
    try:
        return QuantizedWeight(tuple(shape), bits, gran, group)
    except UserError as e:
        raise _bad(path, f"{where}: {e}") from None


def _build(spec: dict, path, name: str, weight: QuantizedWeight) -> nn.Module:
    where = f"module '{name}'"
    kind = _get(spec, "kind", str, path, where)
    if kind not in _KINDS:
        raise _bad(path, f"{where}.kind is {kind!r}, expected one of {sorted(_KINDS)}")
    if kind == "embedding":
        n, d = _pos(spec, "num_embeddings", path, where), _pos(spec, "embedding_dim", path, where)
        pad = spec.get("padding_idx")
        if pad is not None and (isinstance(pad, bool) or not isinstance(pad, int)):
            raise _bad(path, f"{where}.padding_idx is {pad!r}, expected an integer or null")
        if list(weight.shape) != [n, d]:
            raise _bad(path, f"{where}: weight shape {list(weight.shape)} does not match {n}×{d}")
        return QuantizedEmbedding(n, d, weight, pad)
    act = _get(spec, "act_mode", str, path, where)
    if act not in ACT_MODES:
        raise _bad(path, f"{where}.act_mode is {act!r}, expected one of {', '.join(ACT_MODES)}")
    relu, has_bias = _get(spec, "relu", bool, path, where), _get(spec, "bias", bool, path, where)
    qr = _get(spec, "act_qrange", list, path, where)
    if len(qr) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in qr) or not -128 <= qr[0] < qr[1] <= 255:
        raise _bad(path, f"{where}.act_qrange is {qr!r}, expected [q_min, q_max] within [-128, 255]")
    out = weight.shape[0]
    bias = torch.zeros(out) if has_bias else None
    try:
        if kind == "linear":
            i, o = _pos(spec, "in_features", path, where), _pos(spec, "out_features", path, where)
            if list(weight.shape) != [o, i]:
                raise _bad(path, f"{where}: weight shape {list(weight.shape)} does not match {i}→{o}")
            return QuantizedLinear(i, o, weight, bias, act, relu, tuple(qr))
        dim = _get(spec, "dim", int, path, where)
        if dim not in (1, 2):
            raise _bad(path, f"{where}.dim is {dim}, expected 1 or 2")
        c_in, c_out, groups = (_pos(spec, k, path, where) for k in ("in_channels", "out_channels", "groups"))
        k = _ints(spec, "kernel_size", path, where, dim, 1)
        if list(weight.shape) != [c_out, c_in // groups, *k]:
            raise _bad(path, f"{where}: weight shape {list(weight.shape)} does not match a {dim}-d conv {c_in}→{c_out}, kernel {k}")
        return QuantizedConv(dim, c_in, c_out, k, _ints(spec, "stride", path, where, dim, 1), _ints(spec, "padding", path, where, dim),
                             _ints(spec, "dilation", path, where, dim, 1), groups, weight, bias, act, relu, tuple(qr))
    except UserError as e:
        if str(e).startswith("quantized model file"):
            raise
        raise _bad(path, f"{where}: {e}") from None


_FLOAT_KIND = {"linear": (nn.Linear,), "conv": (nn.Conv1d, nn.Conv2d), "embedding": (nn.Embedding,), "lstm": (nn.LSTM,),
               "gru": (nn.GRU,)}


def _build_rnn(spec: dict, path, name: str, float_m: nn.Module) -> QuantizedRNN:
    """An empty QuantizedRNN from its layout; its sizes must match the float layer in the model."""
    where = f"module '{name}'"
    kind = spec["kind"]
    act = _get(spec, "act_mode", str, path, where)
    if act not in ("dynamic", "none"):
        raise _bad(path, f"{where}.act_mode is {act!r}, expected dynamic or none")
    i, h, n = (_pos(spec, k, path, where) for k in ("input_size", "hidden_size", "num_layers"))
    bias, bf, bi = (_get(spec, k, bool, path, where) for k in ("bias", "batch_first", "bidirectional"))
    if (i, h, n, bias, bf, bi) != (float_m.input_size, float_m.hidden_size, float_m.num_layers, float_m.bias,
                                    float_m.batch_first, float_m.bidirectional):
        raise UserError(f"quantized model file {path}: {where} is a {kind.upper()}({i}, {h}, num_layers={n}, bias={bias}, "
                        f"batch_first={bf}, bidirectional={bi}), the model's differs; was it saved for another size?")
    specs = _get(spec, "weights", dict, path, where)
    expected = {p for p in dict(float_m.named_parameters()) if p.startswith("weight_")}
    if set(specs) != expected:
        raise _bad(path, f"{where}.weights names {sorted(specs)[:4]}, the layer has {sorted(expected)[:4]}")
    weights = {}
    for k, ws in specs.items():
        weights[k] = _weight(ws, path, f"{where}.weights.{k}")
        if weights[k].shape != tuple(getattr(float_m, k).shape):
            raise _bad(path, f"{where}.weights.{k} has shape {list(weights[k].shape)}, the layer's is {list(getattr(float_m, k).shape)}")
    biases = {k: torch.zeros_like(p) for k, p in float_m.named_parameters() if k.startswith("bias_")}
    return QuantizedRNN(kind.upper(), i, h, n, bias, bf, bi, weights, biases, act)


def load_quantized(model: nn.Module | Callable[[], nn.Module], path: str | os.PathLike) -> nn.Module:
    """Rebuild a saved quantized model: `model` is a float instance of the same architecture (modified in place)
    or a zero-argument factory for one. Returns the quantized model (use the return value: a bare quantized
    layer replaces the root)."""
    layout = _read_layout(path)
    if not isinstance(model, nn.Module):
        if not callable(model):
            raise UserError(f"load_quantized takes a model instance or a factory, got {type(model).__name__}")
        model = model()
        if not isinstance(model, nn.Module):
            raise UserError(f"the factory returned {type(model).__name__}, not an nn.Module")
    slots: dict[str, list[tuple[nn.Module | None, str]]] = {}
    for pname, parent in model.named_modules(remove_duplicate=False):
        for cname, child in parent._modules.items():
            if child is not None:
                slots.setdefault(id(child), []).append((parent, cname))
    existing = dict(model.named_modules())
    built: dict[str, nn.Module] = {}
    root = model
    for name, spec in layout["modules"].items():
        where = f"module '{name}'"
        if not isinstance(spec, dict):
            raise _bad(path, f"{where} layout is not an object")
        float_m = existing.get(name)
        kind = _get(spec, "kind", str, path, where)
        if float_m is None or not isinstance(float_m, _FLOAT_KIND.get(kind, ())):
            found = "nothing" if float_m is None else type(float_m).__name__
            raise UserError(f"quantized model file {path}: {where} is a quantized {kind}, the model has {found} there; "
                            "was it saved from another architecture?")
        if kind in ("lstm", "gru"):
            new = _build_rnn(spec, path, name, float_m).to(next(float_m.parameters()).device)
            built[name] = new
            for parent, attr in slots.get(id(float_m), []):
                setattr(parent, attr, new)
            root = new if name == "" else root
            continue
        tie = spec.get("weight_tied_to")
        if tie is not None:
            if tie not in built:
                raise _bad(path, f"{where}.weight_tied_to names '{tie}', which is not an earlier quantized module")
            weight = built[tie].weight_q
        else:
            weight = _weight(_get(spec, "weight", dict, path, where), path, f"{where}.weight")
        if tuple(float_m.weight.shape) != weight.shape:
            raise UserError(f"quantized model file {path}: {where} has a {list(weight.shape)} weight, the model's is "
                            f"{list(float_m.weight.shape)}; was it saved for another size?")
        new = _build(spec, path, name, weight).to(float_m.weight.device)
        if tie is not None:
            new.weight_q = weight
        built[name] = new
        for parent, attr in slots.get(id(float_m), []):
            setattr(parent, attr, new)
        if name == "":
            root = new
    state = load_weights(path)
    for k, src in layout["tied"].items():
        if src not in state:
            raise _bad(path, f"tied tensor '{k}' points at '{src}', which the file lacks")
        state[k] = state[src]
    problem = state_dict_mismatch(root.state_dict(), state)
    if problem:
        raise UserError(f"quantized model file {path} does not fit the model: {problem}")
    root.load_state_dict(state, strict=True)
    root.quant_layers = list(layout["modules"])
    return root.eval()
