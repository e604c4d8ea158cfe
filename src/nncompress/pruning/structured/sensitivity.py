"""Structured sensitivity analysis: how much accuracy each channel group loses when pruned alone.

Li et al. (2017, Fig. 2/3) prune each layer by itself at growing ratios without retraining and give
sensitive layers smaller ratios (or none). `ratios_from_sensitivity` turns such a scan into per-group
ratios: the largest tested ratio whose top-1 drop stays within a tolerance.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from nncompress.core.errors import UserError
from nncompress.core.progress import track
from nncompress.pruning.structured.criteria import channel_scores
from nncompress.pruning.structured.graph import InModelDtype, build_dependency_graph
from nncompress.pruning.structured.prune import channels_to_remove
from nncompress.pruning.structured.thin import remove_channels
from nncompress.training import evaluate


def structured_sensitivity(
    model: nn.Module,
    example_input: torch.Tensor,
    loader: DataLoader,
    criterion: str = "l1",
    ratios: Sequence[float] = (0.25, 0.5, 0.75),
    groups: Sequence[str] | None = None,
    progress: bool | None = None,
) -> dict[str, dict[float, float]]:
    """Top-1 (percent) on `loader` after removing each ratio of each group's channels, one group at a time."""
    graph = build_dependency_graph(model, example_input)
    scores = channel_scores(model, graph, criterion)
    names = [graph.group(n).name for n in groups] if groups is not None else [g.name for g in graph.groups]
    out: dict[str, dict[float, float]] = {}
    for name in track(names, "sensitivity", enabled=progress):
        out[name] = {}
        for r in ratios:
            plan = channels_to_remove({name: scores[name]}, {name: r})
            out[name][float(r)] = evaluate(remove_channels(model, graph, plan), InModelDtype(loader, model))
    return out


def ratios_from_sensitivity(sensitivity: Mapping[str, Mapping[float, float]], baseline_top1: float, max_drop: float = 1.0) -> dict[str, float]:
    """Per group, the largest ratio whose top-1 is within `max_drop` percentage points of `baseline_top1`
    (0.0 when even the smallest tested ratio costs more)."""
    if max_drop < 0:
        raise UserError(f"max_drop is in percentage points and must be >= 0, got {max_drop}")
    return {name: max([r for r, top1 in curve.items() if baseline_top1 - top1 <= max_drop], default=0.0)
            for name, curve in sensitivity.items()}
