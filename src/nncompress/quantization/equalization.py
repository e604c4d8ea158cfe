"""Cross-layer equalization (CLE) and high-bias absorption: data-free rescaling that makes a float model
easier to quantize per tensor, without changing what it computes (Nagel, van Baalen, Blankevoort, Welling
2019, "Data-Free Quantization Through Weight Equalization and Bias Correction", ICCV, §4.1 and §4.2).

Why: after BN folding, the output channels of one layer can have ranges that differ by 100× (MobileNetV2's
depthwise convs are the classic case); one per-tensor scale then rounds the small channels to zero.

Equalization. For two layers with a positively homogeneous activation f between them (f(x/s) = f(x)/s for
s > 0: identity, ReLU, max-pooling), y = W2 · f(W1 x + b1) + b2 is unchanged when output channel i of W1
(and b1_i) is divided by s_i and input channel i of W2 is multiplied by s_i. With r1_i the range of output
channel i of W1 and r2_i the range of input channel i of W2, the paper's choice (its eq. 11)

    s_i = (1 / r2_i) · sqrt(r1_i · r2_i) = sqrt(r1_i / r2_i)

gives both channels the same range afterwards: r1_i / s_i = r2_i · s_i = sqrt(r1_i · r2_i), which maximizes
the sum of the two layers' per-channel precisions (range_i / range_tensor). Chains (A → B → C) are swept
pair by pair until no scale moves by more than `tol`; the paper reports this converges. Ranges here are
max |w| (the project's weight quantizers are symmetric). Depthwise and grouped convs are handled through
the group layout: input channel i of a grouped conv is column i mod (C/g) of the output channels of group
⌊i / (C/g)⌋ (depthwise: channel i of the input maps to output channel i).

ReLU6 is not homogeneous: relu6(x/s) = min(max(x/s, 0), 6) but relu6(x)/s clips at 6/s. Bounding s_i ≥ 1
does *not* make it exact (values between 6 and 6·s_i are no longer clipped), so `relu6=` chooses:
  "replace" — swap ReLU6 for ReLU in the equalized pairs, as the paper does for MobileNetV2 (§5.1, Table 1:
              "Replace ReLU6"). Exact only where pre-activations stay below 6; the model function changes
              elsewhere, which the paper found costs nothing in accuracy.
  "clamp"   — swap ReLU6 for `ChannelClamp` with a per-channel upper bound 6/s_i: exact everywhere, the
              cost is one float op (no fused ReLU) in the quantized graph.
  "skip"    — leave pairs across ReLU6 alone.
The default is "clamp": on a model trained with ReLU6 "replace" can change the function a lot — measured on
the pretrained EfficientNet-Lite0 (`benchmarks/ptq.py` images), equalizing with "replace" alone, in float,
moved the top-1 class of 44 % of the images (agreement with the original 55.9 %; "clamp": 100 %).

High-bias absorption (§4.2). If the pre-activation of channel i is ~N(β_i, γ_i²) (β, γ from the folded BN),
almost all of it lies above c_i = max(0, β_i − 3γ_i); for such inputs f(x − c) = f(x) − c (ReLU), so c moves
out of layer 1's bias into layer 2's: b1 ← b1 − c, b2 ← b2 + W2 c. Layer 1's output range shrinks by c
(better for the activation quantizer), the model is unchanged for pre-activations ≥ c_i. Exact only when
layer 2 sees no zero padding (a padded border tap would see 0, not −c), so padded convs are skipped.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from nncompress.core.errors import UserError
from nncompress.quantization.fusion import find_layer_bn_pairs

LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# per-channel ops that commute with a positive per-channel scale and with a per-channel shift
_PASS_MODULES: tuple[type[nn.Module], ...] = (nn.Identity, nn.Dropout, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_PASS_FUNCS = {F.dropout, torch.max_pool1d, torch.max_pool2d, F.max_pool1d, F.max_pool2d, F.max_pool3d}
_RELU_FUNCS = {torch.relu, F.relu}
_RELU6_FUNCS = {F.relu6}
RELU6_MODES = ("replace", "clamp", "skip")

# {layer name: (mean, std)} of the layer's output channels (its folded BN's β and |γ|)
BNStats = dict[str, tuple[torch.Tensor, torch.Tensor]]


class ChannelClamp(nn.Module):
    """y = min(max(x, 0), u_c): a ReLU with a per-channel upper bound (channels on dim 1). ReLU6 is u_c = 6;
    equalization divides u_c by s_c, so the rescaled model clips exactly where the original did."""

    def __init__(self, upper: torch.Tensor):
        super().__init__()
        self.register_buffer("upper", upper.detach().clone().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.upper.to(device=x.device, dtype=x.dtype).reshape([1, -1] + [1] * (x.dim() - 2))
        return torch.minimum(torch.relu(x), u)


@dataclass
class LayerPair:
    """Two layers where every output channel of `first` feeds input channel i of `second` through `act`.

    act: "identity", "relu", "relu6" or "clamp"; act_target: the activation's module name (or fx node
    name for a functional call), None for identity; pools: True when a max-pool sits between the two
    (scale- and shift-equivariant, but not mean-preserving: analytic bias correction skips such pairs)."""

    first: str
    second: str
    act: str = "identity"
    act_target: str | None = None
    act_is_node: bool = False
    pools: bool = False
    notes: list[str] = field(default_factory=list)


def _act_kind(m: nn.Module) -> str | None:
    if isinstance(m, nn.ReLU):
        return "relu"
    if isinstance(m, nn.ReLU6) or (isinstance(m, nn.Hardtanh) and m.min_val == 0.0 and m.max_val == 6.0):
        return "relu6"
    if isinstance(m, ChannelClamp):
        return "clamp"
    return None


def _channels(m: nn.Module) -> tuple[int, int]:
    """(input channels, output channels) of a conv/linear."""
    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features
    return m.in_channels, m.out_channels


def _compatible(m1: nn.Module, m2: nn.Module) -> bool:
    if isinstance(m1, nn.Linear) != isinstance(m2, nn.Linear):
        return False
    if not isinstance(m1, nn.Linear) and type(m1) is not type(m2):
        return False
    return _channels(m1)[1] == _channels(m2)[0]


def _node_act(node: fx.Node, mods: dict[str, nn.Module]) -> tuple[str, bool] | None:
    """(kind, is pool) of a per-channel op the pair may cross; None when the chain must stop."""
    if node.op == "call_module":
        m = mods.get(node.target)
        kind = _act_kind(m)
        if kind is not None:
            return kind, False
        if isinstance(m, _PASS_MODULES):
            return "pass", isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d))
        return None
    if node.op == "call_function":
        if node.target in _RELU_FUNCS:
            return "relu", False
        if node.target in _RELU6_FUNCS:
            return "relu6", False
        if node.target in _PASS_FUNCS:
            return "pass", node.target is not F.dropout
        if node.target is F.hardtanh and tuple(node.args[1:3]) == (0.0, 6.0):
            return "relu6", False
    if node.op == "call_method" and node.target == "relu":
        return "relu", False
    return None


def _fx_pairs(gm: fx.GraphModule) -> tuple[list[LayerPair], list[str]]:
    """Pairs from a traced graph: layer → (activation / pass-through ops, one user each) → layer."""
    mods = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    pairs, unfolded = [], []
    for n in gm.graph.nodes:
        if n.op != "call_module" or not isinstance(mods.get(n.target), LAYER_TYPES) or calls[n.target] != 1:
            continue
        node, act, act_target, act_is_node, pools = n, "identity", None, False, False
        while True:
            users = list(node.users)
            if len(users) != 1:
                break
            u = users[0]
            if u.op == "call_module" and isinstance(mods.get(u.target), _BN_TYPES) and node is n:
                unfolded.append(n.target)
                break
            if u.op == "call_module" and isinstance(mods.get(u.target), LAYER_TYPES):
                if u.args and u.args[0] is node and calls[u.target] == 1 and _compatible(mods[n.target], mods[u.target]):
                    pairs.append(LayerPair(n.target, u.target, act, act_target, act_is_node, pools))
                break
            kind = _node_act(u, mods)
            if kind is None or not u.args or u.args[0] is not node:
                break
            if kind[0] != "pass":
                if act != "identity":  # two activations in a row: keep it simple, stop
                    break
                act = kind[0]
                act_is_node = u.op != "call_module"
                act_target = u.name if act_is_node else u.target
            pools = pools or kind[1]
            node = u
    return pairs, unfolded


def _flatten_sequential(seq: nn.Sequential, prefix: str) -> list[tuple[str, nn.Module]]:
    out = []
    for name, child in seq.named_children():
        full = f"{prefix}{name}"
        if isinstance(child, nn.Sequential):
            out.extend(_flatten_sequential(child, full + "."))
        else:
            out.append((full, child))
    return out


def _sequential_pairs(model: nn.Module) -> tuple[list[LayerPair], list[str]]:
    """Pairs by module order inside nn.Sequential containers (nested Sequentials are concatenated): the
    fallback for models torch.fx cannot trace. Assumes each Sequential's forward is its module order."""
    pairs, unfolded, seen = [], [], set()
    for prefix, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential) or any(s == "" or prefix.startswith(s + ".") for s in seen):
            continue
        seen.add(prefix)
        leaves = _flatten_sequential(seq, f"{prefix}." if prefix else "")
        for i, (name, m) in enumerate(leaves):
            if not isinstance(m, LAYER_TYPES):
                continue
            act, act_target, pools = "identity", None, False
            for name2, m2 in leaves[i + 1:]:
                if isinstance(m2, _BN_TYPES) and act == "identity" and not pools:
                    unfolded.append(name)
                    break
                if isinstance(m2, LAYER_TYPES):
                    if _compatible(m, m2):
                        pairs.append(LayerPair(name, name2, act, act_target, False, pools))
                    break
                kind = _act_kind(m2)
                if kind is not None and act == "identity":
                    act, act_target = kind, name2
                elif isinstance(m2, _PASS_MODULES):
                    pools = pools or not isinstance(m2, (nn.Identity, nn.Dropout))
                else:
                    break
    return pairs, unfolded


def find_layer_pairs(model: nn.Module) -> list[LayerPair]:
    """Consecutive (conv/linear, conv/linear) pairs that CLE can rescale, by a torch.fx trace (or the graph
    of a GraphModule), falling back to module order in nn.Sequential containers when tracing fails.
    A layer whose output also goes elsewhere (a residual add, a concat) is never paired: scaling its
    channels would change the other consumer."""
    return _find(model)[0]


def _find(model: nn.Module) -> tuple[list[LayerPair], list[str]]:
    if isinstance(model, fx.GraphModule):
        return _fx_pairs(model)
    try:
        gm = fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - untraceable models use module order instead
        return _sequential_pairs(model)
    return _fx_pairs(gm)


def out_channel_view(w: torch.Tensor) -> torch.Tensor:
    """[C_out, everything else]: row i holds every weight that produces output channel i."""
    return w.reshape(w.shape[0], -1)


def in_channel_view(w: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """[C_in, everything else]: row i holds every weight that reads input channel i. For a grouped conv
    (weight [O, C/g, k…]) input channel i = g_i·(C/g) + j lives in column j of the O/g filters of group g_i."""
    o, cg = w.shape[0], w.shape[1]
    v = w.reshape(groups, o // groups, cg, -1).permute(0, 2, 1, 3)
    return v.reshape(groups * cg, -1)


def _scale_in_channels(w: torch.Tensor, s: torch.Tensor, groups: int) -> torch.Tensor:
    o, cg = w.shape[0], w.shape[1]
    return (w.reshape(groups, o // groups, cg, -1) * s.reshape(groups, 1, cg, 1)).reshape(w.shape)


def _groups(m: nn.Module) -> int:
    return 1 if isinstance(m, nn.Linear) else m.groups


def channel_ranges(first: nn.Module, second: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(r1, r2): max |w| of each output channel of `first` and of each input channel of `second`."""
    r1 = out_channel_view(first.weight.detach()).abs().amax(1)
    r2 = in_channel_view(second.weight.detach(), _groups(second)).abs().amax(1)
    return r1, r2


def equalization_scales(r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """s_i = (1/r2_i)·sqrt(r1_i·r2_i) = sqrt(r1_i/r2_i); 1 where a channel is all zeros on either side."""
    ok = (r1 > 0) & (r2 > 0)
    return torch.where(ok, torch.sqrt(r1.clamp(min=1e-30) / r2.clamp(min=1e-30)), torch.ones_like(r1))


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def _swap_relu6(model: nn.Module, pair: LayerPair, mode: str, first: nn.Module) -> None:
    """ReLU6 between the pair → ReLU (replace) or ChannelClamp(6) (clamp), module or fx node."""
    channels, device = _channels(first)[1], first.weight.device
    if pair.act_is_node:
        gm = model
        node = next(n for n in gm.graph.nodes if n.name == pair.act_target)
        if mode == "replace":
            node.op, node.target, node.args, node.kwargs = "call_function", torch.relu, (node.args[0],), {}
        else:
            name = f"{node.name}_clamp"
            gm.add_submodule(name, ChannelClamp(torch.full((channels,), 6.0, device=device)))
            node.op, node.target, node.args, node.kwargs = "call_module", name, (node.args[0],), {}
            pair.act_target, pair.act_is_node = name, False
        gm.graph.lint()
        gm.recompile()
    else:
        _set_module(model, pair.act_target, nn.ReLU() if mode == "replace" else ChannelClamp(torch.full((channels,), 6.0, device=device)))
    pair.act = "relu" if mode == "replace" else "clamp"


def _check_model(model: nn.Module, unfolded: list[str]) -> None:
    if unfolded:
        raise UserError(f"layer '{unfolded[0]}' is followed by an unfolded BatchNorm: fold BN first (fuse_conv_bn(model))")


@torch.no_grad()
def cross_layer_equalization(model: nn.Module, relu6: str = "clamp", max_iter: int = 100, tol: float = 1e-8,
                             stats: BNStats | None = None, pairs: list[LayerPair] | None = None) -> list[LayerPair]:
    """Equalize every consecutive layer pair of `model` in place (BN must already be folded) and return the
    pairs. `stats` ({layer: (mean, std)} from `batchnorm_statistics`) is rescaled with the layers so that
    high-bias absorption and analytic bias correction still describe the equalized model. Sweeps all pairs
    until max_i |s_i − 1| < tol or `max_iter` sweeps."""
    if relu6 not in RELU6_MODES:
        raise UserError(f"unknown relu6 handling '{relu6}': use one of {', '.join(RELU6_MODES)}")
    if pairs is None:
        pairs, unfolded = _find(model)
        _check_model(model, unfolded)
    mods = dict(model.named_modules())
    active = []
    for p in pairs:
        if p.act == "relu6":
            if relu6 == "skip":
                p.notes.append("ReLU6 between the layers: skipped (relu6='skip')")
                continue
            if p.act_is_node and not isinstance(model, fx.GraphModule):
                p.notes.append("functional ReLU6 in an untraced model: skipped")
                continue
            _swap_relu6(model, p, relu6, mods[p.first])
            mods = dict(model.named_modules())
        active.append(p)
    for _ in range(max_iter):
        worst = 0.0
        for p in active:
            first, second = mods[p.first], mods[p.second]
            s = equalization_scales(*channel_ranges(first, second))
            worst = max(worst, float((s - 1).abs().max()))
            first.weight.div_(s.reshape([-1] + [1] * (first.weight.dim() - 1)).to(first.weight.dtype))
            if first.bias is not None:
                first.bias.div_(s.to(first.bias.dtype))
            second.weight.copy_(_scale_in_channels(second.weight, s.to(second.weight.dtype), _groups(second)))
            if p.act == "clamp":
                mods[p.act_target].upper.div_(s.to(mods[p.act_target].upper))
            if stats is not None and p.first in stats:
                mean, std = stats[p.first]
                stats[p.first] = (mean / s.to(mean), std / s.to(std))
        if worst < tol:
            break
    return pairs


def batchnorm_statistics(model: nn.Module) -> BNStats:
    """{layer: (β, |γ|)} (on the CPU) for every conv/linear followed by a BatchNorm, read before folding: after
    BN the channel is ~N(β, γ²), which is what high-bias absorption and analytic bias correction assume.
    Layer names are those of `model` (and of `fuse_conv_bn(model)`, which keeps them)."""
    stats: BNStats = {}
    try:
        gm = fx.symbolic_trace(model)
        mods = dict(gm.named_modules())  # exactly the pairs fuse_conv_bn folds
        found = [(layer.target, mods[bn.target]) for layer, bn in find_layer_bn_pairs(gm)]
    except Exception:  # noqa: BLE001 - fall back to module order
        found = []
        for prefix, seq in model.named_modules():
            if isinstance(seq, nn.Sequential):
                leaves = _flatten_sequential(seq, f"{prefix}." if prefix else "")
                found += [(a[0], b[1]) for a, b in zip(leaves, leaves[1:]) if isinstance(a[1], LAYER_TYPES) and isinstance(b[1], _BN_TYPES)]
    for name, bn in found:
        if bn.affine:
            stats[name] = (bn.bias.detach().float().cpu().clone(), bn.weight.detach().abs().float().cpu().clone())
        else:
            stats[name] = (torch.zeros(bn.num_features), torch.ones(bn.num_features))
    return stats


def _padded(m: nn.Module) -> bool:
    if isinstance(m, nn.Linear):
        return False
    if isinstance(m.padding, str):
        return m.padding == "same" and any(k > 1 for k in m.kernel_size)
    return any(p > 0 for p in m.padding)


@torch.no_grad()
def absorb_high_biases(model: nn.Module, stats: BNStats, pairs: list[LayerPair] | None = None,
                       n_sigma: float = 3.0) -> dict[str, torch.Tensor]:
    """High-bias absorption in place: for each pair across a ReLU (or ChannelClamp) whose first layer has BN
    statistics, c = max(0, β − n_sigma·γ) leaves layer 1's bias and enters layer 2's (b2 += W2 c). Returns
    {first layer: c}. Pairs whose second layer zero-pads are skipped (not exact at the borders)."""
    if pairs is None:
        pairs, unfolded = _find(model)
        _check_model(model, unfolded)
    mods = dict(model.named_modules())
    absorbed = {}
    for p in pairs:
        if p.act not in ("relu", "clamp") or p.first not in stats:
            continue
        first, second = mods[p.first], mods[p.second]
        if _padded(second):
            p.notes.append("high-bias absorption skipped: the second layer zero-pads")
            continue
        mean, std = stats[p.first]
        c = torch.clamp(mean - n_sigma * std, min=0.0)
        if p.act == "clamp":
            c = torch.minimum(c, mods[p.act_target].upper.to(c))
        if not bool((c > 0).any()):
            continue
        cd = c.to(first.weight.device)
        if first.bias is None:
            first.bias = nn.Parameter(torch.zeros(first.weight.shape[0], dtype=first.weight.dtype, device=first.weight.device))
        first.bias.sub_(cd.to(first.bias.dtype))
        w2 = second.weight
        g = _groups(second)
        o, cg = w2.shape[0], w2.shape[1]
        shift = (w2.reshape(g, o // g, cg, -1).sum(-1) * cd.to(w2.dtype).reshape(g, 1, cg)).sum(-1).reshape(o)
        if second.bias is None:
            second.bias = nn.Parameter(torch.zeros(o, dtype=w2.dtype, device=w2.device))
        second.bias.add_(shift)
        if p.act == "clamp":
            mods[p.act_target].upper.sub_(cd.to(mods[p.act_target].upper))
        stats[p.first] = (mean - c, std)
        absorbed[p.first] = c
    return absorbed


def equalize(model: nn.Module, relu6: str = "clamp", high_bias_absorption: bool = True,
             stats: BNStats | None = None, n_sigma: float = 3.0) -> tuple[nn.Module, list[LayerPair]]:
    """One call: CLE then (with BN statistics) high-bias absorption, in place on a BN-folded model.
    Returns (model, pairs). `stats` should come from `batchnorm_statistics` of the model before folding."""
    pairs = cross_layer_equalization(model, relu6=relu6, stats=stats)
    if high_bias_absorption and stats:
        absorb_high_biases(model, stats, pairs, n_sigma)
    return model, pairs
