"""Physical channel removal ("thinning"): a smaller dense model with the kept weights copied over.

Every conv, linear and batch norm touched by a removed channel is replaced by a narrower module of the same
type; the model's own forward keeps working because it never hard-codes channel counts (checked on the
example input). If the removed channels were already zero (weights, bias and bn shift), the thinned model
computes exactly what the original did.

Unstructured pruning masks ride along: a masked layer's dense tensor and its mask are sliced with the same
indices and the mask is re-attached, so pruned weights stay pruned and later pruners keep working. The new
layers keep the model's dtype; a module registered under two names is replaced under both; tied weights stay
tied (the dependency graph removes the same channels from every holder) or the call is refused.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from torch.nn.utils import parametrize

from nncompress.core.errors import UserError
from nncompress.pruning.mask import Mask, apply_mask, apply_shared_mask, broken_parametrization
from nncompress.pruning.pruners import weight_holders
from nncompress.pruning.structured.graph import GROUPED_MODES, DependencyGraph, model_input
from nncompress.training.device import module_device

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _idx(mask: np.ndarray | None, n: int, device: torch.device) -> torch.Tensor:
    return torch.arange(n, device=device) if mask is None else torch.from_numpy(np.flatnonzero(mask)).to(device)


def _dense_parts(m: nn.Module, where: str) -> dict[str, tuple[torch.Tensor, torch.Tensor | None, bool]]:
    """{tensor name: (dense tensor, keep-mask or None, straight_through)} for the weight and bias of `m`.

    A masked layer keeps its dense tensor under `parametrizations.<name>.original`; thinning must slice that
    and the mask alike, or the pruned weights would come back. Any other parametrization (weight sharing,
    a user's own) cannot be sliced without knowing what it computes, so it is refused, naming the layer.
    """
    plain = broken_parametrization(m)
    if plain is not None:
        raise UserError(f"layer '{where}' ({type(m).__name__}) has lost the parametrization its class declares (a broken copy of a "
                        f"masked layer): rebuild it as a plain {plain} with the effective weights, then prune again")
    parts = {}
    if parametrize.is_parametrized(m):
        for tname, plist in m.parametrizations.items():
            others = [type(q).__name__ for q in plist if not isinstance(q, Mask)]
            if others or tname not in ("weight", "bias"):
                what = f"a {others[0]}" if others else "a"
                raise UserError(f"layer '{where}' has {what} parametrization on its {tname}, which channel removal cannot slice: "
                                "bake it in first (torch.nn.utils.parametrize.remove_parametrizations, or remove channels before applying it)")
            keep = plist[0].mask
            for q in list(plist)[1:]:
                keep = keep & q.mask
            parts[tname] = (plist.original, keep, any(q.straight_through for q in plist))
    for tname in ("weight", "bias"):
        t = m._parameters.get(tname)
        if tname not in parts and t is not None:
            parts[tname] = (t, None, False)
    return parts


def _balanced_slices(m: nn.Module, keep: dict[str, np.ndarray], where: str, device) -> tuple[int, int, object]:
    """(kept inputs, kept outputs, weight slicer) of a grouped conv that loses channels inside its conv-groups.

    Conv-group k's filters w[k·d_out:(k+1)·d_out] read its inputs by in-group position, so the new filters of
    group k are its kept filters at its kept in-group input positions; the groups may keep different positions
    but must keep as many inputs, and as many outputs, as each other, or the layer cannot stay one conv with
    `groups` groups."""
    g, d_in, d_out = m.groups, m.in_channels // m.groups, m.out_channels // m.groups
    rows_in = keep.get("gw_in", np.ones(m.in_channels, dtype=bool)).reshape(g, d_in)
    rows_out = keep.get("gw_out", np.ones(m.out_channels, dtype=bool)).reshape(g, d_out)
    n_in, n_out = rows_in.sum(1), rows_out.sum(1)
    if (n_in != n_in[0]).any() or (n_out != n_out[0]).any():
        raise UserError(f"grouped conv '{where}' would keep {n_in.tolist()} inputs and {n_out.tolist()} outputs in its conv-groups: "
                        "each must lose as many as the others (prune through the dependency graph) or use grouped='whole'")
    pos_in = [torch.from_numpy(np.flatnonzero(r)).to(device) for r in rows_in]
    pos_out = [torch.from_numpy(np.flatnonzero(r) + k * d_out).to(device) for k, r in enumerate(rows_out)]

    def weight(t):
        return torch.cat([t[o][:, i] for o, i in zip(pos_out, pos_in)])

    return int(n_in.sum()), int(n_out.sum()), weight


def _thin_module(m: nn.Module, keep: dict[str, np.ndarray], where: str = "", grouped: str = "whole") -> nn.Module:
    """A copy of `m` narrowed to the kept positions of each role ('out', 'in', 'bn', 'dw', 'gw_in', 'gw_out'), on
    `m`'s device, in `m`'s dtype, as the plain layer class (never a copy of a Parametrized* class, which would lack
    its parametrizations); pruning masks on weight or bias are sliced with the same indices and re-attached.
    `grouped` says how a grouped conv's 'gw_*' roles were labelled: "whole" conv-groups or "positions" (channels
    inside every conv-group, equally many per group)."""
    device = module_device(m)
    cls = parametrize.type_before_parametrizations(m)
    parts = _dense_parts(m, where or type(m).__name__)
    dtype = parts["weight"][0].dtype if "weight" in parts else None
    if issubclass(cls, _NORMS):
        k = _idx(keep.get("bn"), m.num_features, device)
        new = cls(len(k), m.eps, m.momentum, m.affine, m.track_running_stats, device=device,
                  dtype=dtype if dtype is not None else (m.running_mean.dtype if m.running_mean is not None else None))
        slices = {"weight": lambda t: t[k], "bias": lambda t: t[k]}
        if m.track_running_stats:
            new.running_mean.copy_(m.running_mean[k])
            new.running_var.copy_(m.running_var[k])
            new.num_batches_tracked.copy_(m.num_batches_tracked)
    elif issubclass(cls, nn.Linear):
        o, i = _idx(keep.get("out"), m.out_features, device), _idx(keep.get("in"), m.in_features, device)
        new = nn.Linear(len(i), len(o), bias="bias" in parts, dtype=dtype, device=device)
        slices = {"weight": lambda t: t[o][:, i], "bias": lambda t: t[o]}
    elif ("gw_in" in keep or "gw_out" in keep) and grouped == "positions":  # equally many channels go from every group
        n_in, n_out, weight = _balanced_slices(m, keep, where or type(m).__name__, device)
        o = _idx(keep.get("gw_out"), m.out_channels, device)
        new = cls(n_in, n_out, m.kernel_size, m.stride, m.padding, m.dilation, m.groups, "bias" in parts,
                  m.padding_mode, dtype=dtype, device=device)
        slices = {"weight": weight, "bias": lambda t: t[o]}
    elif "gw_in" in keep or "gw_out" in keep:  # grouped: whole conv-groups go, each keeps its width
        o, i = _idx(keep.get("gw_out"), m.out_channels, device), _idx(keep.get("gw_in"), m.in_channels, device)
        groups = len(o) // (m.out_channels // m.groups)
        new = cls(len(i), len(o), m.kernel_size, m.stride, m.padding, m.dilation, groups, "bias" in parts,
                  m.padding_mode, dtype=dtype, device=device)
        slices = {"weight": lambda t: t[o], "bias": lambda t: t[o]}
    elif "dw" in keep:  # depthwise: one filter per channel
        o = _idx(keep["dw"], m.out_channels, device)
        new = cls(len(o), len(o), m.kernel_size, m.stride, m.padding, m.dilation, len(o), "bias" in parts,
                  m.padding_mode, dtype=dtype, device=device)
        slices = {"weight": lambda t: t[o], "bias": lambda t: t[o]}
    else:
        o, i = _idx(keep.get("out"), m.out_channels, device), _idx(keep.get("in"), m.in_channels, device)
        new = cls(len(i), len(o), m.kernel_size, m.stride, m.padding, m.dilation, 1, "bias" in parts,
                  m.padding_mode, dtype=dtype, device=device)
        slices = {"weight": lambda t: t[o][:, i], "bias": lambda t: t[o]}
    for tname, (dense, mask, straight_through) in parts.items():
        target = getattr(new, tname)
        target.data = slices[tname](dense.data).clone()
        target.requires_grad_(dense.requires_grad)
        if mask is not None:
            apply_mask(new, slices[tname](mask), tname, straight_through=straight_through)
    return new.train(m.training)


def _aliases(model: nn.Module) -> dict[int, list[str]]:
    """Every name each module is registered under (`self.b = self.a` gives one module two names)."""
    out: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if name:
            out.setdefault(id(module), []).append(name)
    return out


def _retie(old_model: nn.Module, new_model: nn.Module, thinned: dict[str, nn.Module], keep: dict[str, dict[str, np.ndarray]]) -> None:
    """Layers that shared one weight tensor share one again after thinning, or the call is refused naming them.

    Thinning builds a new tensor per layer; left alone, tied layers would silently drift apart in training.
    The dependency graph removes the same channels from tied layers, so their slices match and the first
    layer's new tensor (and mask) is given to the others; a tie the graph could not couple is refused.
    """
    name_of = {id(m): n for n, m in old_model.named_modules()}
    for holders in weight_holders(old_model).values():
        names = [name_of[id(m)] for m in holders]
        touched = [n for n in names if n in thinned]
        if len(names) < 2 or not touched:
            continue
        first = keep.get(names[0], {})
        same = len(touched) == len(names) and all(
            keep[n].keys() == first.keys() and all(np.array_equal(keep[n][r], first[r]) for r in first) for n in names)
        if not same:
            raise UserError(f"layers '{names[0]}' and '{names[1]}' share one weight tensor (tied) but would lose different channels: "
                            "untie them (e.g. b.weight = nn.Parameter(a.weight.clone())) or keep those channels (pin the group)")
        lead = thinned[names[0]]
        for n in names[1:]:
            other = thinned[n]
            if parametrize.is_parametrized(lead, "weight"):
                if parametrize.is_parametrized(other, "weight"):
                    parametrize.remove_parametrizations(other, "weight", leave_parametrized=False)
                other.weight = lead.parametrizations["weight"].original
                apply_shared_mask([lead, other], lead.parametrizations["weight"][0].mask)
            else:
                other.weight = lead.weight


def remove_channels(
    model: nn.Module, graph: DependencyGraph, remove: Mapping[str, Sequence[int]], example_input: torch.Tensor | None = None
) -> nn.Module:
    """A thinned deep copy of `model` without the channels `remove[group_name]` (indices 0..size-1 in the group).

    `graph` must have been built on `model`. The original model is left untouched.
    """
    removed: set[int] = set()
    for name, idx in remove.items():
        g = graph.group(name)
        idx = sorted({int(i) for i in idx})
        if idx and (idx[0] < 0 or idx[-1] >= g.size):
            raise UserError(f"group '{g.name}' has {g.size} channels; cannot remove channel {idx[-1] if idx[-1] >= g.size else idx[0]}")
        if len(idx) >= g.size:
            raise UserError(f"cannot remove all {g.size} channels of group '{g.name}': keep at least one")
        removed.update(int(g.channels[i]) for i in idx)
    if not removed:
        return copy.deepcopy(model)
    keep: dict[str, dict[str, np.ndarray]] = {}
    removed_arr = np.fromiter(removed, dtype=np.int64)
    for (name, role), labels in graph.labels.items():
        mask = ~np.isin(labels, removed_arr)
        if not mask.all():
            keep.setdefault(name, {})[role] = mask
    new_model = copy.deepcopy(model)
    aliases = _aliases(new_model)
    thinned: dict[str, nn.Module] = {}
    for name, roles in keep.items():
        old = new_model.get_submodule(name)
        thinned[name] = _thin_module(old, roles, name, graph.grouped_modes.get(name, "whole"))
        for alias in aliases.get(id(old), [name]):  # a module registered twice is replaced under both names
            new_model.set_submodule(alias, thinned[name])
    _retie(model, new_model, thinned, keep)
    if example_input is not None:
        check_runs(new_model, example_input)
    return new_model


def check_runs(model: nn.Module, example_input: torch.Tensor) -> None:
    """Run the thinned model once; a forward that hard-codes channel counts fails here with a clear message."""
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(model_input(model, example_input))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        shape_error = any(k in first for k in ("shape", "size", "channels", "mat1 and mat2", "dimension"))
        hint = ("its forward likely hard-codes a channel count (e.g. x.view(-1, 800)); use torch.flatten(x, 1) instead"
                if shape_error else "report this with the model's class: channel removal left it unable to run")
        raise UserError(f"the thinned {type(model).__name__} no longer runs ({first}): {hint}") from None
    finally:
        model.train(was_training)


def resize_to_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], grouped: str = "positions") -> nn.Module:
    """Narrow `model`'s conv/linear/bn layers in place to the shapes in `state_dict`, so a thinned model's saved
    weights load into a freshly built (full-width) architecture; a masked layer's shape is read from its dense
    tensor, so a thinned-and-masked state dict then loads with `load_masked_state_dict`.

    `grouped` must be the mode the model was pruned with (a weight's shape alone cannot tell them apart):
    "positions" keeps each grouped conv's `groups` (weight [g·d_out', d_in', ...]); "whole" keeps d_in and
    divides the conv-groups (weight [g'·d_out, d_in, ...]). Convs with one input per group always use "whole"."""
    if grouped not in GROUPED_MODES:
        raise UserError(f"unknown grouped-conv mode '{grouped}': use 'positions' or 'whole'")
    for name, m in list(model.named_modules()):
        prefix = f"{name}." if name else ""
        w = state_dict.get(f"{prefix}weight", state_dict.get(f"{prefix}parametrizations.weight.original"))  # masked: dense tensor
        if isinstance(m, _NORMS):
            key = f"{name}.running_mean"
            n = state_dict[key].shape[0] if key in state_dict else (w.shape[0] if w is not None else m.num_features)
            if n != m.num_features:
                model.set_submodule(name, _thin_module(m, {"bn": np.arange(m.num_features) < n}))
        elif isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and w is not None and w.shape != m.weight.shape:
            out_n = w.shape[0]
            if isinstance(m, nn.Linear):
                roles = {"out": np.arange(m.out_features) < out_n, "in": np.arange(m.in_features) < w.shape[1]}
            elif m.groups == m.in_channels == m.out_channels and m.groups > 1:
                roles = {"dw": np.arange(m.out_channels) < out_n}
            elif m.groups > 1 and grouped == "positions" and m.in_channels // m.groups > 1:
                if out_n % m.groups:
                    raise UserError(f"'{name}.weight' has {out_n} filters, not a multiple of the conv's {m.groups} groups: "
                                    "it was not pruned with grouped='positions' (try grouped='whole')")
                d_in, d_out = m.in_channels // m.groups, m.out_channels // m.groups
                roles = {"gw_out": np.arange(m.out_channels) % d_out < out_n // m.groups,
                         "gw_in": np.arange(m.in_channels) % d_in < w.shape[1]}
                model.set_submodule(name, _thin_module(m, roles, name, "positions"))
                continue
            elif m.groups > 1:
                roles = {"gw_out": np.arange(m.out_channels) < out_n,
                         "gw_in": np.arange(m.in_channels) < out_n // (m.out_channels // m.groups) * (m.in_channels // m.groups)}
            else:
                roles = {"out": np.arange(m.out_channels) < out_n, "in": np.arange(m.in_channels) < w.shape[1]}
            model.set_submodule(name, _thin_module(m, roles))
    return model
