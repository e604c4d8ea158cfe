"""Physical channel removal ("thinning"): a smaller dense model with the kept weights copied over.

Every conv, linear and batch norm touched by a removed channel is replaced by a narrower module of the same
type; the model's own forward keeps working because it never hard-codes channel counts (checked on the
example input). If the removed channels were already zero (weights, bias and bn shift), the thinned model
computes exactly what the original did.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from nncompress.core.errors import UserError
from nncompress.pruning.structured.graph import DependencyGraph
from nncompress.training.device import module_device

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _idx(mask: np.ndarray | None, n: int, device: torch.device) -> torch.Tensor:
    return torch.arange(n, device=device) if mask is None else torch.from_numpy(np.flatnonzero(mask)).to(device)


def _thin_module(m: nn.Module, keep: dict[str, np.ndarray]) -> nn.Module:
    """A copy of `m` narrowed to the kept positions of each role ('out', 'in', 'bn', 'dw'), on `m`'s device."""
    device = module_device(m)
    if isinstance(m, _NORMS):
        k = _idx(keep.get("bn"), m.num_features, device)
        new = type(m)(len(k), m.eps, m.momentum, m.affine, m.track_running_stats, device=device)
        if m.affine:
            new.weight.data, new.bias.data = m.weight.data[k].clone(), m.bias.data[k].clone()
        if m.track_running_stats:
            new.running_mean.copy_(m.running_mean[k])
            new.running_var.copy_(m.running_var[k])
            new.num_batches_tracked.copy_(m.num_batches_tracked)
        return new.train(m.training)
    if isinstance(m, nn.Linear):
        o, i = _idx(keep.get("out"), m.out_features, device), _idx(keep.get("in"), m.in_features, device)
        new = nn.Linear(len(i), len(o), bias=m.bias is not None, dtype=m.weight.dtype, device=device)
        new.weight.data = m.weight.data[o][:, i].clone()
    elif "gw_in" in keep or "gw_out" in keep:  # grouped: whole conv-groups go, each keeps its width
        o, i = _idx(keep.get("gw_out"), m.out_channels, device), _idx(keep.get("gw_in"), m.in_channels, device)
        groups = len(o) // (m.out_channels // m.groups)
        new = type(m)(len(i), len(o), m.kernel_size, m.stride, m.padding, m.dilation, groups, m.bias is not None,
                      m.padding_mode, dtype=m.weight.dtype, device=device)
        new.weight.data = m.weight.data[o].clone()
    elif "dw" in keep:  # depthwise: one filter per channel
        o = i = _idx(keep["dw"], m.out_channels, device)
        new = type(m)(len(o), len(o), m.kernel_size, m.stride, m.padding, m.dilation, len(o), m.bias is not None,
                      m.padding_mode, dtype=m.weight.dtype, device=device)
        new.weight.data = m.weight.data[o].clone()
    else:
        o, i = _idx(keep.get("out"), m.out_channels, device), _idx(keep.get("in"), m.in_channels, device)
        new = type(m)(len(i), len(o), m.kernel_size, m.stride, m.padding, m.dilation, 1, m.bias is not None,
                      m.padding_mode, dtype=m.weight.dtype, device=device)
        new.weight.data = m.weight.data[o][:, i].clone()
    if m.bias is not None:
        new.bias.data = m.bias.data[o].clone()
    new.weight.requires_grad_(m.weight.requires_grad)
    return new.train(m.training)


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
    for name, roles in keep.items():
        new_model.set_submodule(name, _thin_module(new_model.get_submodule(name), roles))
    if example_input is not None:
        check_runs(new_model, example_input)
    return new_model


def check_runs(model: nn.Module, example_input: torch.Tensor) -> None:
    """Run the thinned model once; a forward that hard-codes channel counts fails here with a clear message."""
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(example_input.to(module_device(model)))
    except RuntimeError as e:
        raise UserError(
            f"the thinned {type(model).__name__} no longer runs ({str(e).splitlines()[0][:160]}): its forward likely "
            "hard-codes a channel count (e.g. x.view(-1, 800)); use torch.flatten(x, 1) instead"
        ) from None
    finally:
        model.train(was_training)


def resize_to_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Narrow `model`'s conv/linear/bn layers in place to the shapes in `state_dict`, so a thinned model's saved
    weights load into a freshly built (full-width) architecture."""
    for name, m in list(model.named_modules()):
        w = state_dict.get(f"{name}.weight" if name else "weight")
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
            elif m.groups > 1:
                roles = {"gw_out": np.arange(m.out_channels) < out_n,
                         "gw_in": np.arange(m.in_channels) < out_n // (m.out_channels // m.groups) * (m.in_channels // m.groups)}
            else:
                roles = {"out": np.arange(m.out_channels) < out_n, "in": np.arange(m.in_channels) < w.shape[1]}
            model.set_submodule(name, _thin_module(m, roles))
    return model
