"""How important is each channel of a group? Higher score = keep.

  l1        Σ|W_j| over the filter producing channel j (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017);
            by default averaged with the other slices removed with channel j (see `scope`)
  l2        ‖W_j‖₂ of the same slices (same paper; NetAdapt uses it too)
  bn_scale  |γ_j| of the batch norm after it (Liu et al., "Learning Efficient ConvNets through Network Slimming", ICCV 2017)
  taylor    (Σ_{w in channel j} g·w)², averaged over batches: first-order estimate of the loss change when the
            channel is removed (Molchanov et al., "Importance Estimation for Neural Network Pruning", CVPR 2019)
  random    uniform scores, seeded (ablation)
  largest   −l1: removes the largest filters first (ablation; Li et al. show it is the worst choice)

A group couples several layers (residual branches, depthwise convs); a channel's score is the mean of its
per-layer scores (taylor: the sum of g·w over all its parameters, squared). A grouped conv pruned by in-group
position couples position p of all its conv-groups into one channel of the group, so that channel's score is
the mean over every conv-group (Torch-Pruning's group reduction for grouped convs).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from nncompress.core.errors import UserError
from nncompress.pruning.criteria import score_view
from nncompress.pruning.mask import dense_tensor
from nncompress.pruning.structured.graph import ChannelGroup, DependencyGraph, model_input
from nncompress.training.device import module_device

CRITERIA = ("l1", "l2", "bn_scale", "taylor", "random", "largest")


def member_positions(graph: DependencyGraph, group: ChannelGroup) -> list[tuple[str, str, np.ndarray]]:
    """(module, role, j) for every layer touching `group`: j[p] = group channel at position p, or -1."""
    index = {int(c): j for j, c in enumerate(group.channels)}
    out = []
    for (name, role), labels in graph.labels.items():
        js = np.array([index.get(int(c), -1) for c in labels], dtype=np.int64)
        if (js >= 0).any():
            out.append((name, role, js))
    return out


def _reduce(group: ChannelGroup, members, vectors: dict[tuple[str, str], np.ndarray], mean: bool) -> np.ndarray:
    total, count = np.zeros(group.size), np.zeros(group.size)
    for name, role, js in members:
        if (name, role) in vectors:
            ok = js >= 0
            np.add.at(total, js[ok], vectors[(name, role)][ok])
            np.add.at(count, js[ok], 1)
    return total / np.maximum(count, 1) if mean else total


def _norms(graph: DependencyGraph, p: int, scope: str) -> dict[tuple[str, str], np.ndarray]:
    """Per-position norms: filters ("out", "dw") always; with scope "group" also the consumers' input slices
    and the batch-norm scales, each a norm of a slice of the parameters that vanish with the channel."""
    vecs = {}
    for (name, role) in graph.labels:
        m = graph.modules[name]
        if role in ("out", "dw", "gw_out"):
            w = score_view(m.weight).flatten(1)
        elif scope == "group" and role == "in":
            w = score_view(m.weight).transpose(0, 1).flatten(1)
        elif scope == "group" and role == "gw_in" and graph.grouped_modes.get(name) == "positions":
            w = grouped_input_slices(score_view(m.weight), m.groups)
        elif scope == "group" and role == "bn" and m.affine:
            w = score_view(m.weight)[:, None]
        else:
            continue
        vecs[(name, role)] = (w.abs().sum(1) if p == 1 else w.norm(dim=1)).cpu().numpy()
    return vecs


def grouped_input_slices(w: torch.Tensor, groups: int) -> torch.Tensor:
    """Rows = input channels of a grouped conv: input k·d_in + p is read by conv-group k's d_out filters at
    position p, so its slice is w[k·d_out:(k+1)·d_out, p] (weight [g·d_out, d_in, *kernel])."""
    d_out, d_in = w.shape[0] // groups, w.shape[1]
    return w.reshape(groups, d_out, d_in, -1).transpose(1, 2).reshape(groups * d_in, -1)


def _bn_scales(graph: DependencyGraph, group: ChannelGroup) -> dict[tuple[str, str], np.ndarray]:
    if not group.norms:
        raise UserError(f"criterion bn_scale needs a batch norm after layer '{group.name}', which has none; use l1 or l2")
    return {(n, "bn"): score_view(graph.modules[n].weight).abs().cpu().numpy() for n in group.norms if graph.modules[n].affine}


def _taylor(graph: DependencyGraph, model: nn.Module, data, loss_fn, max_batches: int | None) -> list[dict[tuple[str, str], np.ndarray]]:
    """Per-batch Σ g·w of every filter / bn entry (signed: summed over a group before squaring), on the model's device."""
    if data is None:
        raise UserError("criterion taylor needs data: pass batches of (inputs, labels) to compute gradients")
    was_training = model.training
    model.eval()  # gradients without touching batch-norm running statistics
    batches, device = [], module_device(model)
    try:
        for b, (x, y) in enumerate(data):
            if max_batches is not None and b >= max_batches:
                break
            model.zero_grad(set_to_none=True)
            loss_fn(model(model_input(model, x)), y.to(device)).backward()
            vecs = {}
            for (name, role) in graph.labels:
                m = graph.modules[name]
                gw = _grad_times(m, "weight") if role in ("out", "dw", "gw_out", "bn") else None
                if gw is not None:
                    gw = gw.flatten(1).sum(1) if role != "bn" else gw
                    gb = _grad_times(m, "bias")
                    if gb is not None:
                        gw = gw + gb
                    vecs[(name, role)] = gw.cpu().numpy()
            batches.append(vecs)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if not batches:
        raise UserError("criterion taylor got no batches of data")
    return batches


def _grad_times(m: nn.Module, name: str) -> torch.Tensor | None:
    """g·w for `m.<name>` in float32 or better, or None without a gradient.

    A masked layer's `weight` is recomputed from `parametrizations.weight.original` on every access, so its
    gradient lives on that dense tensor; the product with the effective (masked) weight is the same either way.
    """
    dense = dense_tensor(m, name) if getattr(m, name, None) is not None else None
    if dense is None or dense.grad is None:
        return None
    return score_view(dense.grad) * score_view(getattr(m, name))


def channel_scores(
    model: nn.Module,
    graph: DependencyGraph,
    criterion: str = "l1",
    *,
    data: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    max_batches: int | None = 8,
    seed: int = 0,
    scope: str = "group",
) -> dict[str, np.ndarray]:
    """Score of every channel of every prunable group, by group name. `graph` must be built on `model`.

    scope (l1, l2, largest): "filters" scores a channel by the filters producing it (Li et al.); "group"
    (default) by every parameter slice removed with it: filters, the next layers' input weights and the
    batch-norm scales, averaged (the group norm of DepGraph). Behind a batch norm a filter's norm says
    little (BN undoes its scale), so the group view ranks channels of BN networks better.
    """
    if criterion not in CRITERIA:
        raise UserError(f"unknown criterion '{criterion}': choose one of {', '.join(CRITERIA)}")
    if scope not in ("group", "filters"):
        raise UserError(f"unknown scope '{scope}': use 'group' or 'filters'")
    if criterion == "random":
        rng = np.random.default_rng(seed)
        return {g.name: rng.random(g.size) for g in graph.groups}
    norms = _norms(graph, 2 if criterion == "l2" else 1, scope) if criterion in ("l1", "l2", "largest") else {}
    taylor = _taylor(graph, model, data, loss_fn, max_batches) if criterion == "taylor" else []
    scores = {}
    for g in graph.groups:
        members = member_positions(graph, g)
        if criterion == "taylor":
            s = np.mean([_reduce(g, members, b, mean=False) ** 2 for b in taylor], axis=0)
        elif criterion == "bn_scale":
            s = _reduce(g, members, _bn_scales(graph, g), mean=True)
        else:
            s = _reduce(g, members, norms, mean=True)
        scores[g.name] = -s if criterion == "largest" else s
    return scores
