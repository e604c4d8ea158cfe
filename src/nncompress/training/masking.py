"""Minimal magnitude masks for training-time methods (DSD, lottery tickets) that need weights held at zero.

A mask is a bool tensor per layer (True = keep). `MaskCallback` keeps masked weights at zero through training:
gradients are masked after backward and weights re-masked after every optimizer step (so momentum and weight
decay cannot revive them).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nncompress.core.errors import UserError
from nncompress.core.layers import compressible_layers
from nncompress.training.callbacks import Callback

Masks = dict[str, torch.Tensor]


def _layers(model: nn.Module, layers: Sequence[str] | None) -> dict[str, nn.Module]:
    found = compressible_layers(model)
    if layers is None:
        return found
    missing = [n for n in layers if n not in found]
    if missing:
        raise UserError(f"no Linear/Conv layer named {', '.join(missing)}: choose from {', '.join(found)}")
    return {n: found[n] for n in layers}


@torch.no_grad()
def magnitude_masks(model: nn.Module, sparsity: float, layers: Sequence[str] | None = None, scope: str = "layer",
                    current: Masks | None = None) -> Masks:
    """Masks that zero the `sparsity` fraction of smallest-|w| weights, per layer or over all layers ("global").

    Weights already masked in `current` stay masked (they are ranked first), so iterating with a growing
    sparsity prunes a fraction of what remains, as iterative magnitude pruning does.
    """
    if not 0.0 <= sparsity < 1.0:
        raise UserError(f"sparsity must be in [0, 1), got {sparsity}")
    if scope not in ("layer", "global"):
        raise UserError(f"scope must be 'layer' or 'global', got '{scope}'")
    mods = _layers(model, layers)
    scores = {}
    for name, m in mods.items():
        s = m.weight.detach().abs().flatten().clone()
        if current is not None and name in current:
            s[~current[name].flatten()] = -1.0  # already pruned: rank below every live weight
        scores[name] = s
    masks: Masks = {}
    if scope == "layer":
        for name, s in scores.items():
            keep = torch.ones_like(s, dtype=torch.bool)
            keep[torch.argsort(s, stable=True)[: round(sparsity * s.numel())]] = False
            masks[name] = keep.view_as(mods[name].weight)
        return masks
    allscores = torch.cat(list(scores.values()))
    keep_all = torch.ones_like(allscores, dtype=torch.bool)
    keep_all[torch.argsort(allscores, stable=True)[: round(sparsity * allscores.numel())]] = False
    for (name, s), keep in zip(scores.items(), torch.split(keep_all, [s.numel() for s in scores.values()])):
        masks[name] = keep.view_as(mods[name].weight)
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Zero the masked weights in place."""
    mods = compressible_layers(model)
    for name, keep in masks.items():
        mods[name].weight.mul_(keep.to(mods[name].weight))  # the weight's dtype and device


def mask_sparsity(masks: Masks) -> float:
    """Fraction of masked (zeroed) weights over all masked layers."""
    total = sum(m.numel() for m in masks.values())
    return 1.0 - sum(int(m.sum()) for m in masks.values()) / max(total, 1)


class MaskCallback(Callback):
    """Hold masked weights at zero for a whole training run.

    The masks are copied once, at the start, to each weight's dtype and device (the model may train on a GPU
    while `masks` stay where they were made), rather than on every step.
    """

    def __init__(self, masks: Masks):
        self.masks = masks
        self._live: Masks = {}

    def on_train_begin(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        mods = compressible_layers(model)
        self._live = {name: keep.to(mods[name].weight) for name, keep in self.masks.items()}
        apply_masks(model, self._live)

    def on_after_backward(self, model: nn.Module) -> None:
        mods = compressible_layers(model)
        for name, keep in self._live.items():
            g = mods[name].weight.grad
            if g is not None:
                g.mul_(keep)

    def on_step_end(self, step: int, model: nn.Module) -> None:
        apply_masks(model, self._live)

    def on_train_end(self, model: nn.Module) -> None:
        self._live = {}
