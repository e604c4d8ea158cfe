"""Lowering the simulated graph onto real integer kernels, and checking that they agree.

`to_int8_kernels` rebuilds the graph with torch.ao's quantized CPU modules (fbgemm/x86, onednn or qnnpack):
the input is quantized once, every quantized layer runs an int8 × int8 → int32 kernel and requantizes to its
output (scale, zero point), ReLU/pool/flatten act on the codes, and only the output is dequantized.
The integer codes and scales are ours (computed by our observers and quantizers), not torch.ao's.
"""
from __future__ import annotations

import contextlib
import copy
import warnings

import torch
import torch.fx as fx
from torch import nn

from nncompress.core.errors import UserError
from nncompress.quantization.fake_quant import FakeQuantize, LSQQuantizer, weight_codes
from nncompress.quantization.graph import QuantLayer, is_pass_through

BACKENDS = ("x86", "fbgemm", "onednn", "qnnpack")


@contextlib.contextmanager
def quiet_torch_ao():
    """Silence torch.ao's deprecation notices for the duration of our own calls only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, message=r".*(deprecated|torch\.ao|quantiz).*")
        yield


def _is_quantizer(m: nn.Module | None) -> bool:
    return isinstance(m, (FakeQuantize, LSQQuantizer))


def _weight_codes(ql: QuantLayer) -> torch.Tensor:
    """Our integer weight codes as a torch quantized int8 tensor (per tensor or per output channel)."""
    w, _ = ql.folded()
    w = w.detach().float()
    wq = ql.weight_quant
    if wq.qmin < -128 or wq.qmax > 127:
        raise UserError(f"int8 kernels hold at most 8-bit weights; a layer has {wq.bits}-bit weights (use --bits 8 or less)")
    if int(torch.as_tensor(wq.qparams_for(w)[1]).abs().max()) != 0:
        raise UserError("int8 weight kernels need symmetric weights (zero point 0)")
    codes, s = weight_codes(wq, w)
    codes = codes.to(torch.int8)
    with quiet_torch_ao():
        if wq.axis is None:
            return torch._make_per_tensor_quantized_tensor(codes, float(s), 0)
        return torch._make_per_channel_quantized_tensor(codes, torch.as_tensor(s).double(), torch.zeros(len(s), dtype=torch.long), 0)


def _act_qparams(q: nn.Module) -> tuple[float, int]:
    """(scale, zero point) of an 8-bit activation quantizer, shifted into quint8's [0, 255]."""
    if q.qmax - q.qmin not in (127, 255):
        raise UserError(f"int8 kernels need 8-bit activations (or 7 with reduce_range); this graph has {q.qmax - q.qmin + 1} levels: simulate it instead")
    s, z = q.qparams()
    return float(s), int(z) - q.qmin


def _clamp_reduced(graph: fx.Graph, node: fx.Node, q: nn.Module) -> fx.Node:
    """With 7-bit activations (reduce_range) the kernels still write codes up to 255: clamp to the
    simulated range [0, 127] so out-of-calibration values saturate exactly as in the simulation."""
    if q.qmax - q.qmin == 255:
        return node
    s, z = _act_qparams(q)
    return graph.call_function(torch.clamp, (node, s * (0 - z), s * (127 - z)))


class _DynamicLinear(nn.Module):
    """The engine's dynamic linear: per-batch activation range (8 bits, or 7 with reduce_range, as simulated), int8 weights."""

    def __init__(self, qweight: torch.Tensor, bias: torch.Tensor | None, relu: bool, reduce_range: bool):
        super().__init__()
        with quiet_torch_ao():
            self._packed = torch.ops.quantized.linear_prepack(qweight, bias)
        self.relu, self.reduce_range = relu, reduce_range

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op = torch.ops.quantized.linear_relu_dynamic if self.relu else torch.ops.quantized.linear_dynamic
        return op(x, self._packed, reduce_range=self.reduce_range)


def _int8_module(ql: QuantLayer, out_scale: float, out_zp: int) -> nn.Module:
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq

    layer = ql.layer
    qw, (_, b) = _weight_codes(ql), ql.folded()
    b = None if b is None else b.detach().float()
    with quiet_torch_ao():
        if isinstance(layer, nn.Linear):
            m = (nniq.LinearReLU if ql.relu else nnq.Linear)(layer.in_features, layer.out_features)
        elif isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            dim = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}[type(layer)]
            cls = {(1, False): nnq.Conv1d, (2, False): nnq.Conv2d, (3, False): nnq.Conv3d,
                   (1, True): nniq.ConvReLU1d, (2, True): nniq.ConvReLU2d, (3, True): nniq.ConvReLU3d}[(dim, ql.relu)]
            m = cls(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                    layer.groups, True, layer.padding_mode)
        else:
            raise UserError(f"no int8 kernel for {type(layer).__name__}")
        m.set_weight_bias(qw, b)
        m.scale, m.zero_point = out_scale, out_zp
    return m


class Int8Model(nn.Module):
    """The lowered graph; forward runs with torch.ao's deprecation notices silenced and the engine set."""

    def __init__(self, graph_module: fx.GraphModule, backend: str):
        super().__init__()
        self.graph_module, self.backend = graph_module, backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.backends.quantized.engine = self.backend
        with quiet_torch_ao():
            return self.graph_module(x)


def cpu_has_vnni() -> bool:
    """AVX512-VNNI / AVX-VNNI accumulate u8·s8 products straight into int32 (no int16 pair saturation)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def to_int8_kernels(gm: fx.GraphModule, backend: str = "x86") -> Int8Model:
    """Rebuild a calibrated static (or dynamic) graph on torch.ao's quantized CPU kernels."""
    if backend not in BACKENDS or backend not in torch.backends.quantized.supported_engines:
        raise UserError(f"quantized engine '{backend}' is not available here: use one of {torch.backends.quantized.supported_engines}")
    cfg = getattr(gm, "quant_config", None)
    if cfg is None or cfg.mode == "weight_only":
        raise UserError("lower a graph from quantize_static, quantize_dynamic or a converted QAT model (weight-only has no int8 kernels)")
    if backend in ("x86", "fbgemm") and not cfg.reduce_range and not cpu_has_vnni():
        warnings.warn(f"backend '{backend}' on this CPU (no VNNI) adds pairs of u8·s8 products in int16 and saturates with 8-bit "
                      "activations; outputs may differ from the simulation: quantize with reduce_range=True or use backend='qnnpack'",
                      stacklevel=2)
    torch.backends.quantized.engine = backend
    root = copy.deepcopy(gm)
    mods = dict(root.named_modules())
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    is_q: dict[fx.Node, bool] = {}
    deq: dict[fx.Node, fx.Node] = {}

    def as_float(n: fx.Node) -> fx.Node:
        if not is_q.get(n, False):
            return env[n]
        if n not in deq:
            deq[n] = graph.call_method("dequantize", (env[n],))
        return deq[n]

    for node in gm.graph.nodes:
        if node in env:
            continue
        m = mods.get(node.target) if node.op == "call_module" else None
        if node.op == "placeholder":
            env[node], is_q[node] = graph.placeholder(node.name), False
        elif _is_quantizer(m):
            src = node.args[0]
            if is_q.get(src, False):  # re-applied after a pass-through op: the codes are already right
                env[node], is_q[node] = env[src], True
            else:
                s, z = _act_qparams(m)
                env[node] = _clamp_reduced(graph, graph.call_function(torch.quantize_per_tensor, (env[src], s, z, torch.quint8)), m)
                is_q[node] = True
        elif isinstance(m, QuantLayer):
            src = node.args[0]
            if m.input_quant is not None:  # dynamic
                w, b = m.folded()
                name = f"{node.target.replace('.', '_')}_int8"
                root.add_submodule(name, _DynamicLinear(_weight_codes(m), None if b is None else b.detach().float(), m.relu,
                                                      cfg.reduce_range))
                env[node], is_q[node] = graph.call_module(name, (as_float(src),)), False
                continue
            users = list(node.users)
            if len(users) != 1 or not _is_quantizer(mods.get(users[0].target)) or not is_q.get(src, False):
                raise UserError(f"layer '{node.target}' has no calibrated input/output quantizer: run calibrate() before lowering")
            s, z = _act_qparams(mods[users[0].target])
            name = f"{node.target.replace('.', '_')}_int8"
            root.add_submodule(name, _int8_module(m, s, z))
            env[node] = env[users[0]] = _clamp_reduced(graph, graph.call_module(name, (env[src],)), mods[users[0].target])
            is_q[node] = is_q[users[0]] = True
        elif node.op == "output":
            graph.output(fx.node.map_arg(node.args[0], as_float))
        elif is_pass_through(node, mods) and isinstance(node.args[0], fx.Node) and is_q.get(node.args[0], False) \
                and not (node.op == "call_function" and node.target is torch.nn.functional.dropout):
            env[node] = graph.node_copy(node, lambda n: env[n])
            is_q[node] = True
        else:  # float island: dequantize inputs, run in float
            env[node] = graph.node_copy(node, as_float)
            is_q[node] = False
    lowered = fx.GraphModule(root, graph)
    lowered.delete_all_unused_submodules()
    return Int8Model(lowered, backend).eval()


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
