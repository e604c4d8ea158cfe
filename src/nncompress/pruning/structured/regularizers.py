"""Training that drives whole channels to zero before they are removed.

  group lasso   λ_g · Σ_channels ‖W_c‖₂, the norm taken over every weight that produces channel c in all
                coupled layers (Wen et al., "Learning Structured Sparsity in Deep Neural Networks", NeurIPS 2016)
  bn L1         λ_bn · Σ |γ|, over batch-norm scales (Liu et al., "Network Slimming", ICCV 2017)

The ℓ2 norm of a group is not differentiable at zero and its gradient pushes the whole group towards it
at once, which is why it zeroes filters where plain ℓ1 scatters zeros.
"""
from __future__ import annotations

import torch
from torch import nn

from nncompress.pruning.structured.criteria import member_positions
from nncompress.pruning.structured.graph import DependencyGraph, build_dependency_graph
from nncompress.training.callbacks import Callback
from nncompress.training.device import module_device

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _producer_slices(graph: DependencyGraph, device: torch.device) -> list[tuple[int, list[tuple[str, torch.Tensor, torch.Tensor]]]]:
    """Per group: (size, [(layer, positions, group channel of each position)]), computed once per graph and device
    (index tensors copied to a GPU every step would stall it)."""
    key = ("_producer_slices", str(device))
    cached = graph.__dict__.get(key)
    if cached is None:
        cached = []
        for g in graph.groups:
            parts = [(name, torch.from_numpy((js >= 0).nonzero()[0]).to(device), torch.from_numpy(js[js >= 0]).to(device))
                     for name, role, js in member_positions(graph, g) if role in ("out", "dw", "gw_out")]
            cached.append((g.size, parts))
        graph.__dict__[key] = cached
    return cached


def group_lasso(model: nn.Module, graph: DependencyGraph) -> torch.Tensor:
    """Σ over prunable channels c of sqrt(Σ_{producer filters f of c} ‖W_f‖²) (bias excluded), on the model's device."""
    device = module_device(model)
    total = torch.zeros((), device=device)
    for size, parts in _producer_slices(graph, device):
        sq = torch.zeros(size, device=device)
        for name, pos, chan in parts:
            w = model.get_submodule(name).weight.flatten(1)
            sq = sq.index_add(0, chan, w[pos].pow(2).sum(1))
        total = total + torch.sqrt(sq + 1e-16).sum()
    return total


def bn_l1(model: nn.Module) -> torch.Tensor:
    """Σ |γ| over all affine batch norms."""
    scales = [m.weight.abs().sum() for m in model.modules() if isinstance(m, _NORMS) and m.affine]
    return torch.stack(scales).sum() if scales else torch.zeros((), device=module_device(model))


class StructuredRegularizer(Callback):
    """Adds λ_g·group_lasso + λ_bn·bn_l1 to the training loss (`nncompress.training.train(..., callbacks=[...])`)."""

    def __init__(self, model: nn.Module, example_input: torch.Tensor, group_lasso: float = 0.0, bn_l1: float = 0.0):
        self.group_lasso_strength, self.bn_l1_strength = group_lasso, bn_l1
        self.graph = build_dependency_graph(model, example_input) if group_lasso else None

    def loss(self, model, x, y, output, loss):
        if self.graph is not None:
            loss = loss + self.group_lasso_strength * group_lasso(model, self.graph)
        if self.bn_l1_strength:
            loss = loss + self.bn_l1_strength * bn_l1(model)
        return loss
