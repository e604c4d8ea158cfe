"""L1/L2 weight regularization λ·Σ|w|^p, the penalty Han et al. (2015, "Learning both Weights and Connections")
train with before magnitude pruning: L1 drives more weights near zero, L2 gives better accuracy after retraining.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nncompress.core.errors import UserError
from nncompress.core.layers import compressible_layers
from nncompress.training.callbacks import Callback
from nncompress.training.device import module_device


def weight_penalty(model: nn.Module, p: float = 1.0, layers: Sequence[str] | None = None) -> torch.Tensor:
    """Σ|w|^p over the weights (not biases) of the Linear/Conv layers, or of the named `layers`."""
    if p <= 0:
        raise UserError(f"the penalty exponent p must be positive (1 for L1, 2 for L2), got {p}")
    mods = compressible_layers(model)
    if layers is not None:
        missing = [n for n in layers if n not in mods]
        if missing:
            raise UserError(f"no Linear/Conv layer named {', '.join(missing)}: choose from {', '.join(mods)}")
        mods = {n: mods[n] for n in layers}
    total = torch.zeros((), device=module_device(model))
    for m in mods.values():
        w = m.weight
        total = total + (w.abs().sum() if p == 1 else w.abs().pow(p).sum())
    return total


class WeightRegularizer(Callback):
    """Adds λ·Σ|w|^p to the training loss (p = 1: L1, p = 2: L2)."""

    def __init__(self, lam: float, p: float = 1.0, layers: Sequence[str] | None = None):
        if lam < 0:
            raise UserError(f"regularization strength λ must be non-negative, got {lam}")
        self.lam, self.p, self.layers = lam, p, layers

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, output: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        return loss + self.lam * weight_penalty(model, self.p, self.layers)
