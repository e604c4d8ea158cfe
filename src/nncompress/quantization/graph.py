"""The simulated quantized model: a torch.fx graph where every conv/linear is a `QuantLayer` (weight
quantizer, folded BN, fused ReLU) and activation quantizers sit where an integer pipeline holds tensors
in int8: the model input, each quantized layer's output, and the inputs float-only ops hand back.

Placement follows what integer kernels do (Jacob et al. 2018): a quantized layer consumes int8 codes and
writes int8 codes with its own output (scale, zero point); ReLU, max-pool, flatten and reshapes work on
codes directly and reuse their input's parameters; anything else runs in float between a dequantize and
a quantize. The same graph is what `backends` lowers onto real kernels, so simulation and execution agree.
"""
from __future__ import annotations

import copy
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from nncompress.core.errors import UserError
from nncompress.quantization.fake_quant import BinaryQuantizer, FakeQuantize, LSQQuantizer
from nncompress.quantization.fusion import fold_bn, fuse_conv_bn, trace
from nncompress.quantization.observers import OBSERVERS, MinMaxObserver, MovingAverageMinMaxObserver, make_observer
from nncompress.quantization.quantizer import check_bits
from nncompress.training.device import module_device

MODES = ("static", "dynamic", "qat", "weight_only")
QUANT_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_RELU_FUNCS = {torch.relu, F.relu}
PASS_FUNCS = {torch.relu, F.relu, torch.flatten, torch.reshape, torch.max_pool1d, torch.max_pool2d, F.max_pool1d, F.max_pool2d,
              F.avg_pool2d, F.adaptive_avg_pool2d, torch.nn.functional.dropout, torch.squeeze, torch.unsqueeze}
PASS_METHODS = {"relu", "view", "reshape", "flatten", "contiguous", "squeeze", "unsqueeze", "permute", "transpose"}
PASS_MODULES: tuple[type[nn.Module], ...] = (nn.ReLU, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten,
                                             nn.Dropout, nn.Identity)
_SAFE_MODULES = PASS_MODULES + _BN_TYPES  # hold no weights worth quantizing


@dataclass
class QuantConfig:
    """What to quantize and how. Weights: symmetric signed, codes ±(2^(b−1) − 1); activations: affine
    unsigned 8-bit by default (what x86/ARM int8 kernels consume).

    mode: static (calibrated activation ranges), dynamic (ranges per batch at run time), qat (trainable),
          weight_only (activations stay float).
    granularity: "channel" (one scale per output channel) or "tensor".
    calibration: activation observer for static mode: minmax, moving_average, percentile, mse, entropy.
    qat_method: "lsq" (learned steps) or "ste" (min-max/EMA ranges with the straight-through estimator).
    keep_first_last: leave the first and last quantizable layers in float (they are the most sensitive).
    reduce_range: activations use one bit less (codes 0..127). fbgemm on CPUs without VNNI sums pairs of
          u8·s8 products in int16 (vpmaddubsw) and saturates: 2·255·127 > 32767, but 2·127·127 fits.
    layer_bits: per-layer weight bit widths overriding weight_bits (mixed precision).
    """

    mode: str = "static"
    weight_bits: int = 8
    act_bits: int = 8
    granularity: str = "channel"
    calibration: str = "minmax"
    qat_method: str = "lsq"
    keep_first_last: bool = False
    skip: tuple[str, ...] = ()
    layer_bits: dict[str, int] = field(default_factory=dict)
    reduce_range: bool = False

    @property
    def act_observer_bits(self) -> int:
        return self.act_bits - 1 if self.reduce_range else self.act_bits

    def validate(self) -> "QuantConfig":
        if self.mode not in MODES:
            raise UserError(f"unknown mode '{self.mode}': use one of {', '.join(MODES)}")
        check_bits(self.weight_bits, "weight bits")
        check_bits(self.act_bits, "activation bits")
        if self.act_bits < 2:
            raise UserError(f"activation bits={self.act_bits}: activations need at least 2 bits")
        for name, b in self.layer_bits.items():
            check_bits(b, f"bits for layer '{name}'")
        if self.granularity not in ("tensor", "channel"):
            raise UserError(f"unknown granularity '{self.granularity}': use 'tensor' or 'channel'")
        if self.calibration not in OBSERVERS:
            raise UserError(f"unknown calibration '{self.calibration}': choose one of {', '.join(OBSERVERS)}")
        if self.qat_method not in ("lsq", "ste"):
            raise UserError(f"unknown QAT method '{self.qat_method}': use 'lsq' or 'ste'")
        return self


class QuantLayer(nn.Module):
    """A conv/linear with quantized weights, optionally a BN folded in and a fused ReLU.

    With a BN in training (QAT), the BN is folded with running statistics so the quantizer sees the
    deployed weights, the conv output is un-scaled and the BN normalizes with batch statistics
    (Krishnamoorthi 2018, §3.2); in eval the BN is folded completely.
    """

    def __init__(self, layer: nn.Module, weight_quant: nn.Module | None, bn: nn.Module | None = None,
                 relu: bool = False, input_quant: nn.Module | None = None, relu_max: float | None = None):
        super().__init__()
        self.layer, self.weight_quant, self.bn, self.input_quant = layer, weight_quant, bn, input_quant
        self.relu = relu or relu_max is not None
        # ReLU6 (MobileNetV2, EfficientNet-Lite) fused as a clamp to [0, relu_max]: the activation quantizer after
        # the layer then sees the clamped range. Left unfused, it calibrates on the pre-ReLU6 output, whose range
        # can be 10× wider, and [0, 6] gets a handful of codes (EfficientNet-Lite0 W8A8 fell to 37 % agreement).
        # Lowered kernels run a plain ReLU (the output quantizer's range, max ≤ relu_max, clamps the rest); ONNX export
        # writes Clip(0, relu_max), which ORT drops where the following QuantizeLinear already implies it.
        self.relu_max = relu_max

    def folded(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Float weight and bias of the deployed layer (BN folded with running statistics)."""
        if self.bn is None:
            return self.layer.weight, self.layer.bias
        return fold_bn(self.layer.weight, self.layer.bias, self.bn)

    def quantized_weight(self) -> torch.Tensor:
        w, _ = self.folded()
        return w if self.weight_quant is None else self.weight_quant(w)

    def _run_layer(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        # not `_apply`: nn.Module._apply is what .to()/.cuda()/.half() call, and overriding it broke moving the model
        forward = type(self.layer).forward
        if forward is nn.Linear.forward:
            return F.linear(x, w, b)
        if forward in (nn.Conv1d.forward, nn.Conv2d.forward):
            return self.layer._conv_forward(x, w, b)
        # a subclass with its own forward (EfficientNet's TF-"SAME" Conv2dSame pads by input size): run that forward
        # with the quantized tensors, or the padding it adds is lost
        return torch.func.functional_call(self.layer, {"weight": w, "bias": b}, (x,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quant is not None:
            x = self.input_quant(x)
        if self.bn is not None and self.training:
            inv_std = torch.rsqrt(self.bn.running_var + self.bn.eps)
            factor = (self.bn.weight if self.bn.affine else torch.ones_like(inv_std)) * inv_std
            shape = [-1] + [1] * (self.layer.weight.dim() - 1)
            w = self.layer.weight * factor.reshape(shape)
            w = self.weight_quant(w) if self.weight_quant is not None else w
            y = self._run_layer(x, w, None) / factor.reshape([1, -1] + [1] * (x.dim() - 2))
            if self.layer.bias is not None:
                y = y + self.layer.bias.reshape([1, -1] + [1] * (x.dim() - 2))
            y = self.bn(y)
        else:
            w, b = self.folded()
            y = self._run_layer(x, self.weight_quant(w) if self.weight_quant is not None else w, b)
        if self.relu_max is not None:
            return torch.clamp(y, 0.0, self.relu_max)
        return torch.relu(y) if self.relu else y

    def extra_repr(self) -> str:
        act = f"relu6(max={self.relu_max:g})" if self.relu_max is not None else f"relu={self.relu}"
        return f"{act}, bn_folded_in={self.bn is not None}"


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def _weight_quantizer(cfg: QuantConfig, bits: int) -> nn.Module:
    axis = 0 if cfg.granularity == "channel" else None
    if bits == 1:  # binary: sign and a mean-magnitude scale (affine 1-bit codes cannot be symmetric)
        return BinaryQuantizer(axis)
    if cfg.mode == "qat" and cfg.qat_method == "lsq":
        return LSQQuantizer(bits, signed=True, axis=axis, narrow=True, init="minmax")
    # weights: min-max of the current tensor (recomputed each call, so it follows training)
    return FakeQuantize(MinMaxObserver(bits, signed=True, symmetric=True, narrow=True, axis=axis), dynamic=True)


def _act_quantizer(cfg: QuantConfig, signed: bool) -> nn.Module:
    if cfg.mode == "qat":
        if cfg.qat_method == "lsq":
            return LSQQuantizer(cfg.act_observer_bits, signed=signed, init="mse")
        return FakeQuantize(MovingAverageMinMaxObserver(cfg.act_observer_bits, signed=False), observing=True, quantizing=True)
    return FakeQuantize(make_observer(cfg.calibration, bits=cfg.act_observer_bits, signed=False), observing=True, quantizing=False)


def _is_relu(node: fx.Node, mods: dict[str, nn.Module]) -> bool:
    return ((node.op == "call_function" and node.target in _RELU_FUNCS) or (node.op == "call_method" and node.target == "relu")
            or (node.op == "call_module" and isinstance(mods.get(node.target), nn.ReLU)))


def _relu6_max(node: fx.Node, mods: dict[str, nn.Module]) -> float | None:
    """6.0 (the clamp's top) for ReLU6 / Hardtanh(0, 6) / F.relu6 / F.hardtanh(x, 0, 6); None otherwise."""
    if node.op == "call_module":
        m = mods.get(node.target)
        if isinstance(m, nn.ReLU6):
            return 6.0
        if isinstance(m, nn.Hardtanh) and m.min_val == 0.0 and m.max_val > 0:
            return float(m.max_val)
        return None
    if node.op == "call_function" and node.target is F.relu6:
        return 6.0
    if node.op == "call_function" and node.target is F.hardtanh:
        lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)
        hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max_val", 1.0)
        if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo == 0 and hi > 0:
            return float(hi)
    return None


def is_pass_through(node: fx.Node, mods: dict[str, nn.Module]) -> bool:
    """Ops that work on integer codes directly and keep their input's (scale, zero point)."""
    return ((node.op == "call_function" and node.target in PASS_FUNCS) or (node.op == "call_method" and node.target in PASS_METHODS)
            or (node.op == "call_module" and isinstance(mods.get(node.target), PASS_MODULES)))


def _is_tensor(node: fx.Node) -> bool:
    return "tensor_meta" in node.meta and isinstance(node.meta["tensor_meta"], torch.fx.passes.shape_prop.TensorMetadata)


def prepare(model: nn.Module, example_input: torch.Tensor, cfg: QuantConfig) -> fx.GraphModule:
    """Trace `model` and return the simulated quantized graph for `cfg` (the model itself is not modified).

    The result carries `quant_layers` (names of quantized layers) and `quant_skipped` ({name: reason})."""
    cfg.validate()
    if isinstance(model, QUANT_TYPES):  # a bare layer: fx would trace the root's F.linear and find no layer to swap
        model = nn.Sequential(OrderedDict(layer=model))
    qat = cfg.mode == "qat"
    device = module_device(model)
    example_input = example_input.to(device)
    gm = trace(copy.deepcopy(model)) if qat else fuse_conv_bn(model)
    gm.eval()  # shape propagation must not move BN running statistics
    ShapeProp(gm).propagate(example_input)
    mods = dict(gm.named_modules())
    skipped: dict[str, str] = {}
    layer_nodes = [n for n in gm.graph.nodes if n.op == "call_module" and isinstance(mods[n.target], QUANT_TYPES)]
    for n in gm.graph.nodes:  # parameterised modules we cannot quantize: skipped, warned, listed
        if n.op == "call_module" and not isinstance(mods[n.target], QUANT_TYPES + _SAFE_MODULES) \
                and any(True for _ in mods[n.target].parameters(recurse=False)):
            skipped[n.target] = f"unsupported layer type {type(mods[n.target]).__name__}"
    keep = set(cfg.skip)
    unknown = keep - {n.target for n in layer_nodes}
    if unknown:
        raise UserError(f"skip names {sorted(unknown)} are not quantizable layers; layers are {[n.target for n in layer_nodes]}")
    if cfg.keep_first_last and layer_nodes:
        keep |= {layer_nodes[0].target, layer_nodes[-1].target}
    for n in layer_nodes:
        if n.target in keep:
            skipped[n.target] = "kept in float (asked)"
        elif cfg.mode == "dynamic" and not isinstance(mods[n.target], nn.Linear):
            skipped[n.target] = "dynamic mode quantizes Linear layers (use quantize_ with DynamicInt8Config for convolutions)"
    unknown_bits = set(cfg.layer_bits) - {n.target for n in layer_nodes}
    if unknown_bits:
        raise UserError(f"layer_bits names {sorted(unknown_bits)} are not quantizable layers; layers are {[n.target for n in layer_nodes]}")

    quantized: list[str] = []
    for n in layer_nodes:
        if n.target in skipped:
            continue
        layer = mods[n.target]
        bn = None
        users = list(n.users)
        if qat and len(users) == 1 and users[0].op == "call_module" and isinstance(mods.get(users[0].target), _BN_TYPES):
            bn_node = users[0]
            bn = mods[bn_node.target]
            bn_node.replace_all_uses_with(n)
            gm.graph.erase_node(bn_node)
        relu, relu_max = False, None
        users = list(n.users)
        if len(users) == 1 and _is_relu(users[0], mods):
            relu = True
            users[0].replace_all_uses_with(n)
            gm.graph.erase_node(users[0])
        elif len(users) == 1 and cfg.mode in ("static", "qat") and _relu6_max(users[0], mods) is not None:
            # only where an output quantizer follows (static/QAT): it is what clamps the top in lowered kernels
            relu_max = _relu6_max(users[0], mods)
            users[0].replace_all_uses_with(n)
            gm.graph.erase_node(users[0])
        bits = cfg.layer_bits.get(n.target, cfg.weight_bits)
        wq = _weight_quantizer(cfg, bits)
        iq = None
        if cfg.mode == "dynamic":
            iq = FakeQuantize(MinMaxObserver(cfg.act_observer_bits, signed=False), dynamic=True)
        _set_module(gm, n.target, QuantLayer(layer, wq, bn, relu, iq, relu_max=relu_max))
        quantized.append(n.target)
    mods = dict(gm.named_modules())

    if cfg.mode in ("static", "qat"):
        _insert_activation_quantizers(gm, mods, cfg)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    for name, why in skipped.items():
        warnings.warn(f"quantization: layer '{name}' left in float: {why}", stacklevel=2)
    if not layer_nodes:
        warnings.warn("quantization: the traced graph calls no Linear/Conv module, so nothing was quantized (layers called "
                      "through F.linear or inside a leaf module are invisible to fx): use quantize_ (module swap) instead",
                      stacklevel=2)
    gm.quant_layers, gm.quant_skipped, gm.quant_config = quantized, skipped, cfg
    gm.to(device)  # quantizers are built on the CPU: put their buffers (ranges, histograms, steps) beside the weights
    if qat:  # initialise LSQ steps (and EMA ranges) on one batch so parameter shapes are final before an optimizer exists
        with torch.no_grad():
            gm(example_input)
        gm.train(model.training)
    return gm


def _feeds_quant_layer(node: fx.Node, mods: dict[str, nn.Module]) -> bool:
    for u in node.users:
        if u.op == "call_module" and isinstance(mods.get(u.target), QuantLayer):
            return True
        if is_pass_through(u, mods) and u.args and u.args[0] is node and _feeds_quant_layer(u, mods):
            return True
    return False


def _insert_activation_quantizers(gm: fx.GraphModule, mods: dict[str, nn.Module], cfg: QuantConfig) -> None:
    source: dict[fx.Node, str] = {}  # node → name of the quantizer that holds its output's qparams
    for node in list(gm.graph.nodes):
        if node.op == "output" or not _is_tensor(node):
            continue
        is_layer = node.op == "call_module" and isinstance(mods.get(node.target), QuantLayer)
        first = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        if is_layer:
            signed = not mods[node.target].relu
        elif is_pass_through(node, mods) and first in source:
            with gm.graph.inserting_after(node):
                req = gm.graph.call_module(source[first], (node,), {"observe": False})
            node.replace_all_uses_with(req, delete_user_cb=lambda u: u is not req)
            source[node] = source[req] = source[first]
            continue
        elif _feeds_quant_layer(node, mods):
            signed = True  # model inputs and float-op outputs can be negative
        else:
            continue
        name = f"{node.name}_act_quant"
        gm.add_submodule(name, _act_quantizer(cfg, signed))
        with gm.graph.inserting_after(node):
            q = gm.graph.call_module(name, (node,))
        node.replace_all_uses_with(q, delete_user_cb=lambda u: u is not q)
        source[node] = source[q] = name


def quantizers(gm: nn.Module) -> dict[str, nn.Module]:
    """Every fake-quant module in the graph by name (weights, activations, LSQ steps)."""
    return {n: m for n, m in gm.named_modules() if isinstance(m, (FakeQuantize, LSQQuantizer, BinaryQuantizer))}


def set_observing(gm: nn.Module, observing: bool) -> None:
    for m in quantizers(gm).values():
        if isinstance(m, FakeQuantize) and not m.dynamic:
            m.observing = observing


def freeze(gm: nn.Module) -> nn.Module:
    """End calibration: fix every activation quantizer's (scale, zero point) and start quantizing."""
    for name, m in quantizers(gm).items():
        if isinstance(m, FakeQuantize) and not m.dynamic:
            if not m.observer.has_data and not m.observer.saw_nonfinite:  # NaN/inf: m.freeze() raises DivergenceError
                raise UserError(f"activation quantizer '{name}' saw no calibration data: pass calibration batches through the model")
            m.freeze()
    return gm

