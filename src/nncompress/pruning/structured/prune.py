"""One call from a trained model to a thinner one: group channels, score them, drop the weakest, thin.

Per-group ratios (fraction of a group's channels removed) come from one uniform `ratio`, from a hand-set
`ratios` mapping (group or layer name → ratio), or from `sensitivity.ratios_from_sensitivity`; with
`remove_macs` the uniform ratio is found by bisection so that that fraction of the MACs is gone.

strategy (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017, Sec. 3.2): "independent" scores
every group on the original weights; "greedy" walks the groups in graph order and scores each after the
earlier groups' removals, so kernels acting on input channels already removed no longer count.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from nncompress.core.errors import UserError
from nncompress.pruning.mask import dense_tensor
from nncompress.pruning.structured.criteria import channel_scores, member_positions
from nncompress.pruning.structured.graph import DependencyGraph, build_dependency_graph
from nncompress.pruning.structured.measure import count_macs
from nncompress.pruning.structured.thin import remove_channels


def n_keep(size: int, ratio: float, round_to: int = 1) -> int:
    """Channels kept when removing `ratio` of `size`: round(size·(1−ratio)), at least 1, a multiple of
    `round_to` when the group is that wide (SIMD-friendly widths run faster)."""
    keep = max(1, round(size * (1.0 - ratio)))
    if round_to > 1 and size >= round_to:
        keep = max(round_to, int(round(keep / round_to)) * round_to)
    return min(size, keep)


def resolve_ratios(graph: DependencyGraph, ratio: float, ratios: Mapping[str, float] | None = None) -> dict[str, float]:
    """Ratio per group name: `ratios` keyed by group or layer name override the uniform `ratio`."""
    for r in [ratio, *(ratios or {}).values()]:
        if not 0.0 <= r < 1.0:
            raise UserError(f"pruning ratio must be in [0, 1) (the fraction of channels removed), got {r}")
    out = {g.name: ratio for g in graph.groups}
    for key, r in (ratios or {}).items():
        out[graph.group(key).name] = r
    return out


def channels_to_remove(scores: Mapping[str, np.ndarray], ratios: Mapping[str, float], round_to: int = 1) -> dict[str, list[int]]:
    """The lowest-scoring channels of each group (stable order: ties go to the lower index)."""
    out = {}
    for name, s in scores.items():
        n_remove = len(s) - n_keep(len(s), ratios.get(name, 0.0), round_to)
        out[name] = sorted(np.argsort(s, kind="stable")[:n_remove].tolist())
    return out


def greedy_channels_to_remove(model: nn.Module, graph: DependencyGraph, ratios: Mapping[str, float], criterion: str = "l1",
                              round_to: int = 1, scope: str = "group") -> dict[str, list[int]]:
    """Li et al. (2017, Sec. 3.2) greedy strategy: groups in graph order, each scored after the earlier removals.

    The independent strategy scores a filter by all its kernels, including those over input channels an
    earlier layer already lost; greedy does not count them. After each group's choice, the input slices
    of the removed channels in its consumers are zeroed (on a copy), so the next groups' filter norms run
    over the remaining input channels only. Norm criteria only (l1, l2): the others do not sum kernels.
    """
    if criterion not in ("l1", "l2"):
        raise UserError(f"strategy 'greedy' needs a norm criterion (l1 or l2), got '{criterion}'")
    work = copy.deepcopy(model)
    wgraph = copy.copy(graph)
    wgraph.modules = dict(work.named_modules())
    plan: dict[str, list[int]] = {}
    for g in graph.groups:
        s = channel_scores(work, wgraph, criterion, scope=scope)[g.name]
        removed = channels_to_remove({g.name: s}, ratios, round_to)[g.name]
        plan[g.name] = removed
        gone = np.isin(np.arange(g.size), removed)
        with torch.no_grad():
            for name, role, js in member_positions(wgraph, g):
                w = dense_tensor(wgraph.modules[name])
                hit = (js >= 0) & gone[np.maximum(js, 0)]
                if role == "in" and w.dim() >= 2 and w.shape[1] == len(js):
                    w.index_fill_(1, torch.from_numpy(np.flatnonzero(hit)).to(w.device), 0)
                elif role == "gw_in" and wgraph.grouped_modes.get(name) == "positions":  # input k·d_in + p: w[k·d_out:(k+1)·d_out, p]
                    groups = wgraph.modules[name].groups
                    d_out, d_in = w.shape[0] // groups, w.shape[1]
                    for q in np.flatnonzero(hit).tolist():
                        w[(q // d_in) * d_out:(q // d_in + 1) * d_out, q % d_in] = 0
    return plan


def _uniform_ratio_for_macs(model, graph, scores, example_input, remove_macs: float, round_to: int) -> float:
    """Smallest uniform ratio removing at least `remove_macs` of the MACs (bisection; MACs fall as ratio grows)."""
    target = (1.0 - remove_macs) * count_macs(model, example_input)

    def macs(r: float) -> int:
        plan = channels_to_remove(scores, {g.name: r for g in graph.groups}, round_to)
        return count_macs(remove_channels(model, graph, plan), example_input)

    lo, hi = 0.0, 0.99
    if macs(hi) > target:
        raise UserError(f"cannot remove {remove_macs:.0%} of the MACs by pruning channels: the unprunable layers alone cost more")
    for _ in range(14):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if macs(mid) <= target else (mid, hi)
    return hi


def prune_channels(
    model: nn.Module,
    example_input: torch.Tensor,
    criterion: str = "l1",
    ratio: float = 0.5,
    *,
    ratios: Mapping[str, float] | None = None,
    remove_macs: float | None = None,
    data: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    round_to: int = 1,
    seed: int = 0,
    scope: str = "group",
    strategy: str = "independent",
    grouped: str = "positions",
) -> nn.Module:
    """A thinned copy of `model` with `ratio` of every group's channels removed by `criterion`.

    ratio: fraction of each group's channels removed (uniform); ratios: per group/layer overrides;
    remove_macs: instead of `ratio`, the fraction of MACs to remove (uniform ratio found by bisection);
    data: (inputs, labels) batches, needed by the taylor criterion; scope: see `channel_scores`;
    strategy: "independent" or "greedy" (l1/l2 only, see `greedy_channels_to_remove`; Li et al. 2017, Sec. 3.2);
    grouped: how grouped convs lose channels, "positions" (the same in-group channels of every conv-group, so
    `groups` is kept; Torch-Pruning's rule) or "whole" (whole conv-groups; see `graph`).
    """
    if strategy not in ("independent", "greedy"):
        raise UserError(f"unknown strategy '{strategy}': use 'independent' or 'greedy'")
    if strategy == "greedy" and remove_macs is not None:
        raise UserError("strategy 'greedy' takes ratio or ratios, not remove_macs")
    if remove_macs is not None and (ratios or not 0.0 < remove_macs < 1.0):
        raise UserError("remove_macs must be in (0, 1) and cannot be combined with per-layer ratios")
    graph = build_dependency_graph(model, example_input, grouped)
    if not graph.groups:
        raise UserError(f"{type(model).__name__} has no prunable channels (every channel reaches the input, output or an unsupported op)")
    if strategy == "greedy":
        plan = greedy_channels_to_remove(model, graph, resolve_ratios(graph, ratio, ratios), criterion, round_to, scope)
        return remove_channels(model, graph, plan, example_input)
    scores = channel_scores(model, graph, criterion, data=data, loss_fn=loss_fn, seed=seed, scope=scope)
    if remove_macs is not None:
        ratio = _uniform_ratio_for_macs(model, graph, scores, example_input, remove_macs, round_to)
    plan = channels_to_remove(scores, resolve_ratios(graph, ratio, ratios), round_to)
    return remove_channels(model, graph, plan, example_input)
