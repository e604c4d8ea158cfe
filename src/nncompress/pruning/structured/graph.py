"""Channel dependency graph: which channels of which layers must be removed together.

Removing output channel j of a convolution also removes input channel j of every layer that reads it,
entry j of the batch norm after it, and, through a residual addition, channel j of every other branch
of that addition. Following Torch-Pruning (Fang et al., "DepGraph", CVPR 2023), the unit of structured
pruning is therefore a *group* of coupled channels, not a layer.

How: trace the model with torch.fx, run the example input through it to learn shapes, and propagate a
label per channel (dim 1) along the graph; a union-find merges labels that must stay equal:
  conv/linear output     → fresh labels (the layer "produces" them)
  bn, activations, pools → labels pass through (bn is pruned along with them)
  depthwise conv         → labels pass through (its filters are pruned along with them)
  grouped conv (G groups, grouped="positions", the default)
                         → outputs get fresh labels, the same d_out labels repeated in every conv-group; inputs
                           are merged into units that cost every conv-group equally many channels (`_balance`:
                           position p of every group, Torch-Pruning's rule, or across a shuffle one column per
                           group): the conv is a producer and a consumer like a dense conv, `groups` is
                           unchanged and the groups stay equal-sized (ResNeXt, ShuffleNet V1)
  grouped conv (grouped="whole", and any conv with one input channel per group, e.g. a depthwise multiplier)
                         → the channels of each conv-group are merged into one unit, in and out: whole
                           conv-groups are removed and `groups` falls
  channel shuffle        → unflatten(1, (g, k)) → transpose(1, 2) → flatten(1, 2) is followed as the
                           permutation it is (output j·g + i = input i·k + j), as are other reshapes and
                           transposes that only split, swap and merge the channel dimension. The split keeps its
                           literal factor (g) after thinning and recomputes the other, so the permutation
                           changes with the width: it stays the old one restricted to the kept channels only
                           when every row i loses the same positions j, so those are merged (channel j of every
                           row is one unit, a column).
  a + b, a * b           → labels of a and b are merged element by element
  cat(dim=1)             → labels concatenated (each input keeps its own offset range)
  flatten                → each channel label repeated H·W times (the next linear loses H·W columns)
Channels reaching the model's input or output, or any operation we do not understand, are pinned:
never removed.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np
import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn import functional as F

from nncompress.core.errors import UserError
from nncompress.pruning.pruners import weight_holders
from nncompress.training.device import module_device

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid,
    nn.Hardtanh, nn.Mish, nn.Dropout, nn.Dropout2d, nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool2d,
)
_PASS_FUNCTIONS = {
    torch.relu, F.relu, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid, F.hardtanh,
    torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.dropout, F.dropout2d, torch.max_pool1d, torch.max_pool2d,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool2d, torch.clone, torch.abs, torch.neg,
    operator.neg, torch.mean, torch.sum, torch.amax,
}
_PASS_METHODS = {"relu", "relu_", "sigmoid", "tanh", "clone", "contiguous", "abs", "neg", "mean", "sum", "amax", "float"}
_ELEMENTWISE = {operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.imul,
                torch.add, torch.sub, torch.mul, torch.div, torch.maximum, torch.minimum}
_ELEMENTWISE_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
_REDUCTIONS = {torch.mean, torch.sum, torch.amax, "mean", "sum", "amax"}
_SHAPE_QUERIES = {"size", "dim", "numel", getattr}
_RESHAPES = {torch.flatten, torch.reshape, "flatten", "view", "reshape"}
_TRANSPOSES = {torch.transpose, "transpose", torch.swapaxes, "swapaxes"}
GROUPED_MODES = ("positions", "whole")


@dataclass(frozen=True)
class ChannelGroup:
    """Channels removed together. `channels[j]` names channel j of the group in `DependencyGraph.labels`."""

    name: str
    channels: np.ndarray
    producers: tuple[str, ...]  # layers whose output channels (filters) belong to the group
    consumers: tuple[str, ...]  # layers whose input channels belong to it
    norms: tuple[str, ...]  # batch norms along the way
    depthwise: tuple[str, ...]  # depthwise and grouped convolutions that carry the channels through

    @property
    def size(self) -> int:
        return len(self.channels)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []
        self.pinned: list[bool] = []

    def new(self, n: int, pinned: bool = False) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        self.pinned.extend([pinned] * n)
        return np.arange(start, start + n)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[ry] = rx
                self.pinned[rx] = self.pinned[rx] or self.pinned[ry]

    def pin(self, ids: np.ndarray) -> None:
        for x in np.ravel(ids).tolist():
            self.pinned[self.find(x)] = True

    def roots(self, ids: np.ndarray) -> np.ndarray:
        return np.array([self.find(x) for x in ids.tolist()], dtype=np.int64)


def model_dtype(model: nn.Module) -> torch.dtype | None:
    """The floating dtype of the model's first floating parameter or buffer (None for a model without any)."""
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return None


def model_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`x` on the model's device and, when floating point, in the model's floating dtype.

    Example inputs usually come from a float32 dataset; a float64, float16 or bfloat16 model cannot run them
    ("expected scalar type Double but found Float"), which used to surface as a refusal blaming the example
    input or a hard-coded channel count. Integer inputs (token ids) are left as they are.
    """
    x = x.to(module_device(model))
    dtype = model_dtype(model)
    if dtype is not None and x.is_floating_point() and x.dtype != dtype:
        x = x.to(dtype)
    return x


class InModelDtype:
    """`loader`'s (x, y) batches with x through `model_input`: float32 data through a float64 or bfloat16 model
    would otherwise stop a scan or a fine-tuning step with "Input type (float) and bias type (double)"."""

    def __init__(self, loader, model: nn.Module):
        self.loader, self.model = loader, model

    def __iter__(self):
        for x, y in self.loader:
            yield model_input(self.model, x), y

    def __len__(self) -> int:
        return len(self.loader)


def trace(model: nn.Module) -> fx.GraphModule:
    """Module-level torch.fx graph (`nncompress.core.capture.trace_modules`): a submodule fx cannot trace is kept
    whole as an opaque leaf, whose channels the dependency graph then pins (never removed); a UserError naming the
    module and operation when the top-level forward itself cannot be traced."""
    from nncompress.core.capture import trace_modules

    return trace_modules(model, "structured pruning")


def _tensor_meta(node):
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return meta if meta is not None and hasattr(meta, "shape") else None


def _shape(node) -> tuple[int, ...] | None:
    meta = _tensor_meta(node)
    return tuple(meta.shape) if meta is not None else None


def _arg(node: fx.Node, i: int, key: str, default=None):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(key, default)


class DependencyGraph:
    """Channel groups of a model, found by tracing it with an example input.

    `labels[(module, role)]` holds, for each position along that module's pruned dimension, the id of the
    channel it belongs to; role is "out" (conv/linear output channels), "in" (their input channels),
    "bn" (batch-norm features), "dw" (depthwise conv channels), "gw_in"/"gw_out" (grouped conv input/output
    channels). `groups` lists the prunable groups. `grouped` ("positions" or "whole") says how grouped convs
    are pruned (module docstring); `grouped_modes` records, per grouped conv, which rule it got.
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor, grouped: str = "positions"):
        if grouped not in GROUPED_MODES:
            raise UserError(f"unknown grouped-conv mode '{grouped}': use 'positions' (prune the same in-group channels of "
                            "every conv-group, groups kept) or 'whole' (remove whole conv-groups)")
        self.grouped = grouped
        self.grouped_modes: dict[str, str] = {}  # grouped conv → "positions" or "whole", as it was labelled
        self.modules = dict(model.named_modules())
        canonical = {id(m): n for n, m in self.modules.items()}
        # a module registered under two names (`self.b = self.a`) is traced, labelled and grouped under its first
        # name; `aliases` maps every other name to that one so either name finds its group
        self.aliases = {n: canonical[id(m)] for n, m in model.named_modules(remove_duplicate=False) if canonical.get(id(m), n) != n}
        gm = trace(model)
        modes = {m: m.training for m in model.modules()}
        try:
            model.eval()
            with torch.no_grad():
                ShapeProp(gm).propagate(model_input(model, example_input))
        except Exception as e:  # noqa: BLE001
            raise UserError(f"the example input of shape {list(example_input.shape)} does not run through the model: {e}") from None
        finally:
            for m, mode in modes.items():
                m.train(mode)
        self._uf = _UnionFind()
        self._balanced: list[np.ndarray] = []  # [groups, d_in] inputs of grouped convs: rows lose equally many
        self._raw: dict[tuple[str, str], np.ndarray] = {}
        env: dict[fx.Node, np.ndarray | None] = {}
        for node in gm.graph.nodes:
            env[node] = self._visit(node, env)
        self._couple_tied(model)
        self._balance()
        uf = self._uf
        self.labels = {key: uf.roots(ids) for key, ids in self._raw.items()}
        self.pinned = {i for i in range(len(uf.parent)) if uf.parent[i] == i and uf.pinned[i]}
        self.groups = self._make_groups()

    # --- propagation -------------------------------------------------------------------------------
    def _fresh(self, node: fx.Node, pinned: bool = True) -> np.ndarray | None:
        shape = _shape(node)
        return self._uf.new(shape[1], pinned) if shape is not None and len(shape) >= 2 else None

    def _record(self, name: str, role: str, ids: np.ndarray) -> None:
        key = (name, role)
        if key in self._raw:  # a module called twice: both calls see the same channels
            self._uf.union(self._raw[key], ids)
        else:
            self._raw[key] = ids

    def _pin_inputs(self, node: fx.Node, env) -> None:
        for a in node.all_input_nodes:
            if env.get(a) is not None:
                self._uf.pin(env[a])

    def _visit(self, node: fx.Node, env) -> np.ndarray | None:
        if node.op == "placeholder" or node.op == "get_attr":
            return self._fresh(node)
        if node.op == "output":
            self._pin_inputs(node, env)
            return None
        if _shape(node) is None:  # sizes, scalars, tuples (split, chunk): no channel labels of their own
            if node.target not in _SHAPE_QUERIES:
                self._pin_inputs(node, env)  # a tensor split into pieces keeps its width
            return None
        x = node.args[0] if node.args else None
        xl = env.get(x) if isinstance(x, fx.Node) else None
        split = self._split_channels(node, x, xl)
        if split is not None:
            return split
        if any(isinstance(env.get(a), np.ndarray) and env[a].ndim > 1 for a in node.all_input_nodes):
            self._pin_inputs(node, env)  # a split channel dimension reaching anything but a shuffle's next step
            return self._fresh(node)
        if node.op == "call_module":
            return self._visit_module(node, self.modules[node.target], xl, env)
        fn = node.target
        out_shape = _shape(node)
        if fn in _ELEMENTWISE or fn in _ELEMENTWISE_METHODS:
            return self._elementwise(node, env)
        if fn in _PASS_FUNCTIONS or fn in _PASS_METHODS:
            dims = _arg(node, 1, "dim", ()) if fn in _REDUCTIONS else ()
            dims = {d % len(_shape(x)) for d in (dims if isinstance(dims, (tuple, list)) else (dims,)) if isinstance(d, int)}
            if xl is not None and len(out_shape) >= 2 and out_shape[:2] == _shape(x)[:2] and not dims & {0, 1}:
                return xl
        elif fn in _RESHAPES and xl is not None:
            in_shape = _shape(x)
            if len(out_shape) >= 2 and out_shape[0] == in_shape[0]:
                if out_shape[1] == in_shape[1] and np.prod(out_shape[1:]) == np.prod(in_shape[1:]):
                    return xl
                if len(out_shape) == 2 and out_shape[1] == np.prod(in_shape[1:]):
                    return np.repeat(xl, int(np.prod(in_shape[2:])))
        elif fn in (torch.cat, torch.concat):
            return self._cat(node, env)
        self._pin_inputs(node, env)
        return self._fresh(node)

    def _split_channels(self, node: fx.Node, x, xl) -> np.ndarray | None:
        """Labels through the steps of a channel shuffle, or None when `node` is not one.

        unflatten/view/reshape [N, C, *rest] → [N, a, b, *rest] (a·b = C) gives a 2-D label array (a, b);
        transpose(1, 2) transposes it; flatten/view/reshape [N, a, b, *rest] → [N, a·b, *rest] flattens it back
        in row-major order: so shuffle(g) maps input channel i·k + j to output channel j·g + i, exactly.
        """
        if xl is None or node.op not in ("call_method", "call_function"):
            return None
        fn, in_shape, out_shape = node.target, _shape(x), _shape(node)
        if in_shape is None or out_shape is None or len(in_shape) < 2 or len(out_shape) < 2 or out_shape[0] != in_shape[0]:
            return None
        reshape = fn in _RESHAPES or fn in ("unflatten", torch.unflatten)
        if fn in ("unflatten", torch.unflatten) and not (isinstance(_arg(node, 1, "dim"), int) and _arg(node, 1, "dim") % len(in_shape) == 1):
            return None  # a spatial dimension split, not the channels
        if xl.ndim == 1 and reshape and len(out_shape) == len(in_shape) + 1 and out_shape[3:] == in_shape[2:] \
                and out_shape[1] * out_shape[2] == in_shape[1] and out_shape[1] > 1 and out_shape[2] > 1:
            grid = xl.reshape(out_shape[1], out_shape[2])
            fixed = self._fixed_factor(node)
            if fixed is None:  # both factors literal (the width cannot change) or neither known: pinned
                return None
            for k in range(1, grid.shape[0]) if fixed == 0 else ():  # g rows kept: row k loses row 0's positions
                self._uf.union(grid[0], grid[k])
            for k in range(1, grid.shape[1]) if fixed == 1 else ():  # k columns kept: whole rows go
                self._uf.union(grid[:, 0], grid[:, k])
            return grid
        if xl.ndim == 2 and reshape and len(out_shape) == len(in_shape) - 1 and out_shape[2:] == in_shape[3:] \
                and out_shape[1] == in_shape[1] * in_shape[2]:
            return xl.reshape(-1)
        if xl.ndim == 2 and fn in _TRANSPOSES:
            d0, d1 = _arg(node, 1, "dim0"), _arg(node, 2, "dim1")
            if isinstance(d0, int) and isinstance(d1, int) and {d0 % len(in_shape), d1 % len(in_shape)} == {1, 2}:
                return np.ascontiguousarray(xl.T)
        return None

    @staticmethod
    def _fixed_factor(node: fx.Node) -> int | None:
        """Which factor of a channel split [N, C] → [N, a, b] stays fixed when C shrinks: 0 (a, as in
        `x.unflatten(1, (groups, -1))` or `x.view(n, groups, c // groups, h, w)`), 1 (b), or None when both are
        literal integers (thinning would break the reshape) or neither is."""
        if node.target in ("unflatten", torch.unflatten):
            sizes = _arg(node, 2, "sizes")
        else:
            sizes = list(node.args[1:]) if len(node.args) > 2 else _arg(node, 1, "shape")
            sizes = sizes[1:3] if isinstance(sizes, (tuple, list)) and len(sizes) >= 3 else None
        if not isinstance(sizes, (tuple, list)) or len(sizes) != 2:
            return None
        literal = [isinstance(v, int) and v > 0 for v in sizes]
        if literal == [True, False]:
            return 0
        if literal == [False, True]:
            return 1
        return None

    def _visit_module(self, node: fx.Node, m: nn.Module, xl, env) -> np.ndarray | None:
        name = node.target
        if xl is None or len(node.all_input_nodes) != 1:
            self._pin_inputs(node, env)
            return self._fresh(node)
        in_shape = _shape(node.args[0])
        if isinstance(m, _CONVS) and m.groups == 1:
            self._record(name, "in", xl)
            if (name, "out") not in self._raw:
                self._raw[(name, "out")] = self._uf.new(m.out_channels)
            return self._raw[(name, "out")]
        if isinstance(m, _CONVS) and m.groups == m.in_channels == m.out_channels:
            self._record(name, "dw", xl)
            return xl
        if isinstance(m, _CONVS):  # grouped: conv-group k reads inputs [k·d_in, (k+1)·d_in), writes [k·d_out, ...)
            d_in, d_out = m.in_channels // m.groups, m.out_channels // m.groups
            if self.grouped == "positions" and d_in > 1:  # equally many inputs go from every conv-group (`_balance`)
                self.grouped_modes[name] = "positions"
                self._balanced.append(xl.reshape(m.groups, d_in))
                self._record(name, "gw_in", xl)
                if (name, "gw_out") not in self._raw:
                    self._raw[(name, "gw_out")] = np.tile(self._uf.new(d_out), m.groups)
                return self._raw[(name, "gw_out")]
            self.grouped_modes[name] = "whole"
            unit = xl[::d_in]
            for t in range(1, d_in):
                self._uf.union(unit, xl[t::d_in])
            self._record(name, "gw_in", xl)
            self._record(name, "gw_out", np.repeat(unit, d_out))
            return np.repeat(unit, d_out)
        if isinstance(m, nn.Linear) and len(in_shape) == 2:
            self._record(name, "in", xl)
            if (name, "out") not in self._raw:
                self._raw[(name, "out")] = self._uf.new(m.out_features)
            return self._raw[(name, "out")]
        if isinstance(m, _NORMS) and m.num_features == len(xl):
            self._record(name, "bn", xl)
            return xl
        if isinstance(m, _PASS_MODULES):
            return xl
        if isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
            return np.repeat(xl, int(np.prod(in_shape[2:])))
        self._pin_inputs(node, env)  # grouped convs, layer norms, custom leaves: left alone
        return self._fresh(node)

    def _elementwise(self, node: fx.Node, env) -> np.ndarray | None:
        out_shape = _shape(node)
        if len(out_shape) < 2:
            self._pin_inputs(node, env)
            return None
        merged = None
        for a in node.all_input_nodes:
            shape, ids = _shape(a), env.get(a)
            if shape is None or ids is None or (len(shape) == len(out_shape) and shape[1] == 1) or np.prod(shape) == 1:
                continue  # broadcasts along channels: does not couple them
            if len(shape) != len(out_shape) or shape[1] != out_shape[1]:
                self._pin_inputs(node, env)
                return self._fresh(node)
            if merged is None:
                merged = ids
            else:
                self._uf.union(merged, ids)
        return merged if merged is not None else self._fresh(node)

    def _cat(self, node: fx.Node, env) -> np.ndarray | None:
        tensors, dim = _arg(node, 0, "tensors"), _arg(node, 1, "dim", 0)
        out_shape = _shape(node)
        parts = [env.get(t) for t in tensors]
        if any(p is None for p in parts):
            self._pin_inputs(node, env)
            return self._fresh(node)
        if dim % len(out_shape) == 1:
            return np.concatenate(parts)
        if dim == 0 and len({len(p) for p in parts}) == 1:  # stacked along the batch: channels coupled
            for p in parts[1:]:
                self._uf.union(parts[0], p)
            return parts[0]
        self._pin_inputs(node, env)
        return self._fresh(node)

    def _couple_tied(self, model: nn.Module) -> None:
        """Layers holding one weight tensor (tied weights) lose the same channels, so the tie survives thinning.

        Their labels are merged role by role; when the roles do not line up (a holder that forward never calls,
        a transposed tie, different layer types) all their channels are pinned instead: never removed.
        """
        name_of = {id(m): n for n, m in self.modules.items()}
        for holders in weight_holders(model).values():
            names = [name_of[id(m)] for m in holders if id(m) in name_of]
            if len(names) < 2:
                continue
            roles = [{r: ids for (n, r), ids in self._raw.items() if n == name} for name in names]
            if all(r.keys() == roles[0].keys() and all(len(r[k]) == len(roles[0][k]) for k in r) for r in roles) and roles[0]:
                for r in roles[1:]:
                    for k, ids in r.items():
                        self._uf.union(roles[0][k], ids)
            else:
                for r in roles:
                    for ids in r.values():
                        self._uf.pin(ids)

    def _balance(self) -> None:
        """Merge channels so that every conv-group of every grouped conv loses equally many inputs.

        A conv-group's filters read its inputs by in-group position, so the groups may lose different positions
        but must lose as many as each other, or the layer cannot stay one conv with `groups` equal groups. For
        each grouped conv, count per conv-group how often each unit (union-find root) appears among its inputs:
          units with equal counts in every conv-group are fine alone;
          units inside one conv-group only, with count c, are merged one per conv-group (same c), in order:
            position p of every group when the inputs are plain channels (Torch-Pruning's rule), and across a
            channel shuffle (whose columns u_j sit at inputs j·g ... j·g + g − 1) one column from each group;
          the remaining units are merged into one (balanced, since the total and every other unit are).
        A unit unbalanced in two grouped convs at once cannot be split this way: those convs fall back to
        merging position p of every conv-group (always consistent, coarser). For ShuffleNet V1 (g = 3,
        k = 20 bottleneck channels per group) the bottleneck thus keeps 7 units (6 of 3 columns, 1 of 2)
        where same-position merging leaves one, which cannot be removed.
        """
        uf = self._uf
        pending = list({c.tobytes(): c for c in self._balanced}.values())  # a conv called twice: one constraint
        while True:
            counts, unbalanced_in = [], {}
            for ci, c in enumerate(pending):
                cnt: dict[int, np.ndarray] = {}
                for b, row in enumerate(uf.roots(c.ravel()).reshape(c.shape)):
                    for x in row.tolist():
                        cnt.setdefault(x, np.zeros(c.shape[0], dtype=np.int64))[b] += 1
                counts.append(cnt)
                for x, v in cnt.items():
                    if (v != v[0]).any():
                        unbalanced_in.setdefault(x, []).append(ci)
            shared = {ci for cis in unbalanced_in.values() if len(cis) > 1 for ci in cis}
            if not shared:
                break
            for ci in shared:  # fall back to the same positions in every conv-group
                for k in range(1, pending[ci].shape[0]):
                    uf.union(pending[ci][0], pending[ci][k])
            pending = [c for ci, c in enumerate(pending) if ci not in shared]
        for cnt in counts:
            buckets: dict[tuple[int, int], list[int]] = {}
            rest = []
            for x, v in cnt.items():  # dict order = first position of the unit in the conv's inputs
                if not (v != v[0]).any():
                    continue
                support = np.flatnonzero(v)
                if len(support) == 1:
                    buckets.setdefault((int(support[0]), int(v[support[0]])), []).append(x)
                else:
                    rest.append(x)
            g = len(next(iter(cnt.values())))
            for c in sorted({c for _, c in buckets}):
                lists = [buckets.get((b, c), []) for b in range(g)]
                n = min(len(lst) for lst in lists)
                for t in range(n):
                    uf.union(np.full(g - 1, lists[0][t]), np.array([lists[b][t] for b in range(1, g)]))
                rest.extend(x for lst in lists for x in lst[n:])
            if rest:
                uf.union(np.full(len(rest) - 1, rest[0]), np.array(rest[1:], dtype=np.int64))

    # --- groups ------------------------------------------------------------------------------------
    def _make_groups(self) -> list[ChannelGroup]:
        order = {name: i for i, name in enumerate(self.modules)}
        members: dict[int, set[tuple[str, str]]] = {}
        first_pos: dict[int, tuple[int, int]] = {}
        for (name, role), ids in sorted(self.labels.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
            for pos, c in enumerate(ids.tolist()):
                members.setdefault(c, set()).add((name, role))
                if role in ("out", "dw", "gw_out"):
                    first_pos.setdefault(c, (order[name], pos))
        def produces(n: str, r: str) -> bool:
            return r == "out" or (r == "gw_out" and self.grouped_modes.get(n) == "positions")

        by_signature: dict[frozenset, list[int]] = {}
        for c, sig in members.items():
            if c in self.pinned or not any(produces(n, r) for n, r in sig):
                continue
            by_signature.setdefault(frozenset(sig), []).append(c)
        groups, used = [], set()
        for sig, chans in by_signature.items():
            chans.sort(key=lambda c: first_pos[c])

            def role(r, sig=sig):
                return tuple(sorted((n for n, rr in sig if rr == r), key=order.__getitem__))

            positions = {n for n, r in sig if r in ("gw_in", "gw_out") and self.grouped_modes.get(n) == "positions"}
            producers = tuple(sorted({n for n, r in sig if produces(n, r)}, key=order.__getitem__))
            consumers = tuple(sorted(set(role("in")) | {n for n in positions if (n, "gw_in") in sig}, key=order.__getitem__))
            name = producers[0]
            k = 1
            while name in used:
                k += 1
                name = f"{producers[0]}#{k}"
            used.add(name)
            carriers = tuple(sorted(set(role("dw")) | (set(role("gw_out")) - positions), key=order.__getitem__))
            groups.append(ChannelGroup(name, np.array(chans, dtype=np.int64), producers, consumers, role("bn"), carriers))
        groups.sort(key=lambda g: first_pos[int(g.channels[0])])
        return groups

    def group(self, name: str) -> ChannelGroup:
        """The group called `name`, or the group one of whose producers is the layer `name` (under any of its names)."""
        name = self.aliases.get(name, name)
        for g in self.groups:
            if g.name == name:
                return g
        for g in self.groups:
            if name in g.producers:
                return g
        raise UserError(f"no prunable channel group '{name}': groups are {', '.join(g.name for g in self.groups)}")

    def group_of(self, module: str) -> ChannelGroup | None:
        """The group containing layer `module`'s output channels, if they are prunable."""
        module = self.aliases.get(module, module)
        for g in self.groups:
            if module in g.producers:
                return g
        return None


def build_dependency_graph(model: nn.Module, example_input: torch.Tensor, grouped: str = "positions") -> DependencyGraph:
    """Trace `model` on `example_input` (one batch, any size) and group its coupled channels; `grouped` says how
    grouped convs are pruned: "positions" (same in-group channels of every conv-group, groups kept) or "whole"."""
    return DependencyGraph(model, example_input, grouped)
