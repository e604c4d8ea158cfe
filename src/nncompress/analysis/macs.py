"""Multiply-accumulate counts by tracing one forward pass (batch of 1) with forward hooks.

Per call of a layer (output y, input x, effective weight W):
  Linear:           in_features · y.numel()          (= in·out per sample; extra leading dims multiply)
  ConvNd:           y.numel() · (C_in/groups) · Πk   (depthwise: groups = C_in, so Πk per output)
  ConvTransposeNd:  x.numel() · (C_out/groups) · Πk  (each input element scatters into C_out/groups · Πk outputs)
Every other leaf module that runs (BatchNorm, ReLU, pooling, ...) is listed with 0 MACs.
With count_sparse=True only non-zero weights count (the effective MACs after unstructured pruning):
each weight is used once per output position (ConvNd, Linear) or per input position (ConvTransposeNd),
so MACs = nnz(W) · positions. Functional calls (torch.relu, F.max_pool2d) are not modules and are not listed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from nncompress.analysis.counts import is_parametrization_internal, nnz

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@dataclass
class LayerMacs:
    name: str
    type: str
    output_shape: tuple[int, ...]
    macs: int = 0
    calls: int = 0


@dataclass
class MacsReport:
    """MACs per leaf module that ran (in call order) for one sample of `input_shape`."""

    input_shape: tuple[int, ...]
    count_sparse: bool
    layers: dict[str, LayerMacs] = field(default_factory=dict)

    @property
    def total_macs(self) -> int:
        return sum(l.macs for l in self.layers.values())


def module_macs(module: nn.Module, x: torch.Tensor, y: torch.Tensor, count_sparse: bool = False) -> int:
    """MACs of one call of `module` with input `x` and output `y` (0 for modules without multiplies)."""
    if isinstance(module, nn.Linear):
        positions = y.numel() // module.out_features
    elif isinstance(module, _CONV):
        positions = y.numel() // module.out_channels
    elif isinstance(module, _CONV_T):
        positions = x.numel() // module.in_channels
    else:
        return 0
    w = module.weight  # effective weight when parametrized
    return (nnz(w) if count_sparse else w.numel()) * positions


def _is_leaf(module: nn.Module) -> bool:
    return all(name == "parametrizations" for name, _ in module.named_children())


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...], count_sparse: bool = False) -> MacsReport:
    """Trace `model` on one zero input of shape (1, *input_shape) and count MACs per layer."""
    report = MacsReport(tuple(input_shape), count_sparse)
    p = next(model.parameters(), None)
    x0 = torch.zeros((1, *input_shape), dtype=p.dtype if p is not None and p.is_floating_point() else torch.float32,
                     device=p.device if p is not None else "cpu")

    def hook(name: str):
        def fn(module, inputs, output):
            row = report.layers.get(name)
            out_shape = tuple(output.shape) if isinstance(output, torch.Tensor) else ()
            if row is None:
                row = report.layers[name] = LayerMacs(name, type(module).__name__, out_shape)
            x = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
            if x is not None and isinstance(output, torch.Tensor):
                row.macs += module_macs(module, x, output, count_sparse)
            row.calls += 1
        return fn

    handles = [m.register_forward_hook(hook(name)) for name, m in model.named_modules()
               if not is_parametrization_internal(name) and _is_leaf(m)]  # name "" = the model itself is a leaf
    was_training = model.training
    model.eval()
    try:
        model(x0)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return report
