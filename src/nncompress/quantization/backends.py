"""Lowering the simulated graph onto real integer kernels, and checking that they agree.

`to_int8_kernels` keeps the simulated fx graph and replaces every `QuantLayer` by the eager int8 module of
`modules` (`QuantizedLinear` / `QuantizedConv`): the layer quantizes its input with the (scale, zero point) of
the activation quantizer in front of it — codes identical to the simulation's, since that input is already on
the grid — multiplies int8 codes on `torch._int_mm` (exact int32 accumulation), adds the float bias and the fused
ReLU, and hands a float tensor to the graph's next activation quantizer, which requantizes it exactly as in the
simulation. Kernel and simulation therefore differ only by the float rounding of the simulation's own sum: at
most one output step after requantization (`compare_with_simulation`). The integer codes and scales are ours
(our observers and quantizers); no torch.ao module is involved.

Dynamic graphs lower to `act_mode="dynamic_tensor"` (the input's own min/max, affine uint8, as simulated).
The other engines: ONNX Runtime (`onnx_qdq.to_onnx_qdq` + `OnnxRuntimeModel`) and torchao (`to_torchao`).
"""
from __future__ import annotations

import copy

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from nncompress.core.errors import UserError
from nncompress.quantization.fake_quant import BinaryQuantizer, FakeQuantize, LSQQuantizer, weight_codes
from nncompress.quantization.graph import QuantLayer, _set_module, is_pass_through
from nncompress.quantization.modules import QuantizedConv, QuantizedLinear, QuantizedWeight, pack_signed_int4

BACKENDS = ("torch", "onnxruntime", "torchao")


def _is_quantizer(m: nn.Module | None) -> bool:
    return isinstance(m, (FakeQuantize, LSQQuantizer))


def cpu_has_vnni() -> bool:
    """AVX512-VNNI / AVX-VNNI accumulate u8·s8 products straight into int32 (no int16 pair saturation)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def _quantized_weight(ql: QuantLayer, name: str) -> QuantizedWeight:
    """Our integer weight codes (per tensor or per output channel) as a QuantizedWeight holder."""
    w, _ = ql.folded()
    w = w.detach().float()
    wq = ql.weight_quant
    if wq.qmin < -128 or wq.qmax > 127:
        raise UserError(f"layer '{name}': int8 kernels hold at most 8-bit weights; it has {wq.bits}-bit weights (use --bits 8 or less)")
    if not isinstance(wq, BinaryQuantizer) and int(torch.as_tensor(wq.qparams_for(w)[1]).abs().max()) != 0:
        raise UserError(f"layer '{name}': int8 weight kernels need symmetric weights (zero point 0)")
    codes, s = weight_codes(wq, w)
    s = torch.as_tensor(s, dtype=torch.float32).reshape(-1)
    bits = max(int(wq.bits), 1)
    qw = QuantizedWeight(tuple(w.shape), bits, "tensor" if wq.axis is None else "channel")
    codes = codes.reshape(w.shape[0], -1).to(torch.int8)
    qw.codes = pack_signed_int4(codes) if qw.packed else codes
    qw.scale = s.clone()
    return qw


def _input_quantizer(node: fx.Node, mods: dict[str, nn.Module]) -> tuple[nn.Module, str] | None:
    """The activation quantizer (module, name) whose codes reach `node`'s input (through pass-through ops)."""
    src = node.args[0] if node.args else None
    while isinstance(src, fx.Node):
        m = mods.get(src.target) if src.op == "call_module" else None
        if _is_quantizer(m) and not getattr(m, "dynamic", False):
            return m, src.target
        if not is_pass_through(src, mods) or not src.args:
            return None
        src = src.args[0]
    return None


_GRID_EXACT_FUNCS = {torch.relu, F.relu, torch.flatten, torch.reshape, torch.max_pool1d, torch.max_pool2d, F.max_pool1d, F.max_pool2d,
                     F.dropout, torch.squeeze, torch.unsqueeze}
_GRID_EXACT_MODULES = (nn.ReLU, nn.MaxPool1d, nn.MaxPool2d, nn.Flatten, nn.Dropout, nn.Identity)


def _grid_exact(node: fx.Node, mods: dict[str, nn.Module]) -> bool:
    """Ops that commute with quantization to the same grid: Q(op(x)) = op(Q(x)) (monotone selections and reshapes;
    not average pooling, whose mean leaves the grid)."""
    return ((node.op == "call_function" and node.target in _GRID_EXACT_FUNCS)
            or (node.op == "call_method" and node.target in {"relu", "view", "reshape", "flatten", "contiguous", "squeeze",
                                                             "unsqueeze", "permute", "transpose"})
            or (node.op == "call_module" and isinstance(mods.get(node.target), _GRID_EXACT_MODULES)))


def _drop_absorbed_quantizers(root: fx.GraphModule, act_of: dict[fx.Node, str]) -> int:
    """Remove fake-quantize nodes whose every consumer is an int8 layer that quantizes with the same (scale, zero
    point) anyway, reached directly or through grid-exact ops: the layer then computes the same codes from the raw
    input (Q(x) = Q(Q(x)) on the grid), and one float quantize-dequantize pass per activation is saved."""
    mods = dict(root.named_modules())

    def absorbed(n: fx.Node, target: str) -> bool:
        if n in act_of:
            return act_of[n] == target
        if n.op == "call_module" and n.target == target:  # the same quantizer re-applied after a pass-through op
            return all(absorbed(u, target) for u in n.users)
        if _grid_exact(n, mods) and n.args and isinstance(n.args[0], fx.Node):
            return all(absorbed(u, target) for u in n.users)
        return False

    dropped = 0
    for node in list(root.graph.nodes):
        m = mods.get(node.target) if node.op == "call_module" else None
        if _is_quantizer(m) and not getattr(m, "dynamic", False) and node.users \
                and all(absorbed(u, node.target) for u in node.users):
            node.replace_all_uses_with(node.args[0])
            root.graph.erase_node(node)
            dropped += 1
    return dropped


def _int8_module(ql: QuantLayer, name: str, act_mode: str, act_q: nn.Module | None, reduce_range: bool) -> nn.Module:
    layer = ql.layer
    weight = _quantized_weight(ql, name)
    _, b = ql.folded()
    if act_mode == "static":
        if act_q.qmax - act_q.qmin > 255:
            raise UserError(f"layer '{name}': int8 kernels need activations of at most 8 bits; this graph has "
                            f"{act_q.qmax - act_q.qmin + 1} levels: simulate it instead")
        qrange = (int(act_q.qmin), int(act_q.qmax))
    else:
        qrange = (0, 127 if reduce_range else 255)
    kw = {"relu": ql.relu, "act_qrange": qrange}
    if isinstance(layer, nn.Linear):
        m = QuantizedLinear(layer.in_features, layer.out_features, weight, b, act_mode, **kw)
    elif isinstance(layer, (nn.Conv1d, nn.Conv2d)):
        m = QuantizedConv.from_float(layer, act_mode, weight=weight, name=name, **kw)
        m.bias = None if b is None else b.detach().float().clone()
    else:
        raise UserError(f"layer '{name}': no int8 kernel for {type(layer).__name__} (Linear, Conv1d and Conv2d have one)")
    if act_mode == "static":
        s, z = act_q.qparams()
        m.set_act_qparams(s, z)
    return m.to(layer.weight.device)


def to_int8_kernels(gm: fx.GraphModule, backend: str = "torch", drop_absorbed: bool = True) -> fx.GraphModule:
    """A copy of a calibrated static (or dynamic, or converted QAT) graph with every QuantLayer on int8 kernels.

    drop_absorbed: remove the fake-quantize nodes in front of int8 layers that quantize their input with the same
    parameters themselves (same codes, one float pass less per activation); the graph's output quantizer and
    those feeding float ops stay."""
    if backend != "torch":
        raise UserError(f"to_int8_kernels runs the 'torch' engine (torch._int_mm); for '{backend}' use "
                        + ("to_onnx_qdq + OnnxRuntimeModel" if backend == "onnxruntime" else "to_torchao"))
    cfg = getattr(gm, "quant_config", None)
    if cfg is None or cfg.mode == "weight_only":
        raise UserError("lower a graph from quantize_static, quantize_dynamic or a converted QAT model (weight-only has no int8 kernels)")
    root = copy.deepcopy(gm).eval()
    mods = dict(root.named_modules())
    act_of: dict[fx.Node, str] = {}  # lowered static layer → the activation quantizer it applies itself
    for node in root.graph.nodes:
        m = mods.get(node.target) if node.op == "call_module" else None
        if not isinstance(m, QuantLayer) or m.weight_quant is None:
            continue
        if m.input_quant is not None:
            new = _int8_module(m, node.target, "dynamic_tensor", None, m.input_quant.qmax == 127)
        else:
            found = _input_quantizer(node, mods)
            if found is None:
                raise UserError(f"layer '{node.target}' has no calibrated input quantizer: run calibrate() before lowering")
            new = _int8_module(m, node.target, "static", found[0], cfg.reduce_range)
            act_of[node] = found[1]
        _set_module(root, node.target, new)
    if drop_absorbed:
        _drop_absorbed_quantizers(root, act_of)
    root.graph.lint()
    root.delete_all_unused_submodules()
    root.recompile()
    root.int8_backend = "torch"
    return root


def to_torchao(model: nn.Module, mode: str = "dynamic") -> nn.Module:
    """The float model through torchao's own int8 CPU path (`quantize_` with Int8DynamicActivationInt8WeightConfig:
    per-token dynamic int8 activations, per-channel int8 weights; or Int8WeightOnlyConfig), on a copy.
    torchao picks its own scales: this is the maintained peer engine, not a lowering of our graph."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

    configs = {"dynamic": Int8DynamicActivationInt8WeightConfig, "weight_only": Int8WeightOnlyConfig}
    if mode not in configs:
        raise UserError(f"torchao engine: unknown mode '{mode}': use dynamic or weight_only (static int8 in torchao needs "
                        "its pt2e flow under torch.compile)")
    out = copy.deepcopy(model).eval()
    quantize_(out, configs[mode]())
    return out


@torch.no_grad()
def compare_with_simulation(sim: nn.Module, real: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Max |real − simulated| over a batch, also in units of the output quantization step (≤ 1 expected)."""
    sim.eval()
    real.eval()
    a, b = sim(x), real(x)
    err = float((a - b).abs().max())
    out_q = _output_quantizer(sim)
    step = float(out_q.qparams()[0]) if out_q is not None else float("nan")
    return {"max_abs_error": err, "output_step": step, "error_in_steps": err / step if step == step else float("nan"),
            "top1_agreement": float((a.argmax(1) == b.argmax(1)).float().mean() * 100)}


def _output_quantizer(gm: nn.Module) -> nn.Module | None:
    graph = getattr(gm, "graph", None)
    if graph is None:
        return None
    out = next(n for n in graph.nodes if n.op == "output").args[0]
    if isinstance(out, fx.Node) and out.op == "call_module":
        m = gm.get_submodule(out.target)
        if _is_quantizer(m) and not getattr(m, "dynamic", False):
            return m
    return None
