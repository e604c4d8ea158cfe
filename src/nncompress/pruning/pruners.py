"""One-shot unstructured pruners: a plain constructor that stores the targets, and `prune(model)`.

Each pruner computes a keep-mask per layer and applies it with `apply_mask`, which intersects with any
mask already there, so pruning again never revives a weight and sparsity only grows. Only weights are
pruned; biases stay dense. Layers are `compressible_layers(model)` (Linear, Conv) unless a list of
names, or a dict of per-layer values, says otherwise.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from nncompress.core.errors import UserError
from nncompress.core.layers import COMPRESSIBLE_TYPES, compressible_layers
from nncompress.pruning.criteria import (
    check_nonnegative,
    check_sparsity,
    magnitude_threshold_mask,
    prune_count,
    sensitivity_mask,
    smallest_k_mask,
)
from nncompress.pruning.mask import apply_mask, dense_tensor, get_mask

PerLayer = float | Mapping[str, float]


def resolve_layers(model: nn.Module, layers: Sequence[str] | None = None) -> dict[str, nn.Module]:
    """Named layers to prune: all compressible ones, or `layers` checked to exist and be Linear/Conv."""
    if layers is None:
        found = compressible_layers(model)
        if not found:
            raise UserError(f"{type(model).__name__} has no Linear or Conv layers to prune")
        return found
    if isinstance(layers, str):
        layers = [layers]
    modules = dict(model.named_modules())
    unknown = [n for n in layers if n not in modules]
    if unknown:
        available = ", ".join(compressible_layers(model)) or "none"
        raise UserError(f"unknown layer(s) {', '.join(map(repr, unknown))}; prunable layers are: {available}")
    unsupported = [f"{n} ({type(modules[n]).__name__})" for n in layers if not isinstance(modules[n], COMPRESSIBLE_TYPES)]
    if unsupported:
        raise UserError(f"cannot prune {', '.join(unsupported)}: only Linear and Conv1d/2d/3d layers are supported")
    return {n: modules[n] for n in layers}


def _targets(model: nn.Module, values: PerLayer, layers: Sequence[str] | None, check) -> dict[str, tuple[nn.Module, float]]:
    """Pair each chosen layer with its value (a dict's keys choose the layers)."""
    if isinstance(values, Mapping):
        if layers is not None:
            raise UserError("give either per-layer values (a dict) or a list of layers, not both")
        chosen = resolve_layers(model, list(values))
        return {n: (m, check(values[n], f"value for layer '{n}'")) for n, m in chosen.items()}
    value = check(values, "value")
    return {n: (m, value) for n, m in resolve_layers(model, layers).items()}


def _scores(module: nn.Module) -> torch.Tensor:
    """|effective weight|, with already-masked entries at -inf so they are the first ones counted as removed."""
    w = module.weight.detach().abs()
    mask = get_mask(module)
    return w if mask is None else w.masked_fill(~mask, float("-inf"))


class MagnitudePruner:
    """Keep |w| > threshold, per layer (Han et al. 2015)."""

    def __init__(self, thresholds: PerLayer, layers: Sequence[str] | None = None):
        self.thresholds = thresholds
        self.layers = layers
        _validate(thresholds, check_nonnegative, "threshold")

    def prune(self, model: nn.Module) -> nn.Module:
        with torch.no_grad():
            for module, t in _targets(model, self.thresholds, self.layers, check_nonnegative).values():
                apply_mask(module, magnitude_threshold_mask(module.weight, t))
        return model


class SensitivityPruner:
    """Keep |w| > s·σ(w), σ over the layer's dense weights (Han et al. 2015; see `sensitivity_threshold`).

    One s for all layers prunes each layer in proportion to its spread; a dict gives per-layer s.
    """

    def __init__(self, s: PerLayer, layers: Sequence[str] | None = None):
        self.s = s
        self.layers = layers
        _validate(s, check_nonnegative, "sensitivity s")

    def prune(self, model: nn.Module) -> nn.Module:
        with torch.no_grad():
            for module, s in _targets(model, self.s, self.layers, check_nonnegative).values():
                apply_mask(module, sensitivity_mask(dense_tensor(module), s))
        return model


class LevelPruner:
    """Prune to an exact sparsity: remove the round(sparsity·n) smallest-|w| weights.

    scope="layer": each layer gets its own sparsity (a float for all, or a dict per layer).
    scope="global": one threshold across all chosen layers, i.e. the round(sparsity·N_total) smallest
    |w| of the union are removed, so layers end up with different sparsities (exact total count).
    Weights already masked count as removed first; a target below the current sparsity changes nothing.
    """

    def __init__(self, sparsity: PerLayer, scope: str = "layer", layers: Sequence[str] | None = None):
        self.sparsity = sparsity
        self.scope = scope
        self.layers = layers
        if scope not in ("layer", "global"):
            raise UserError(f"scope must be 'layer' or 'global', got {scope!r}")
        if scope == "global" and isinstance(sparsity, Mapping):
            raise UserError("scope='global' takes one sparsity for all layers, not a dict; use scope='layer' for per-layer targets")
        _validate(sparsity, check_sparsity, "sparsity")

    def prune(self, model: nn.Module) -> nn.Module:
        targets = _targets(model, self.sparsity, self.layers, check_sparsity)
        with torch.no_grad():
            if self.scope == "layer":
                for module, s in targets.values():
                    scores = _scores(module)
                    apply_mask(module, smallest_k_mask(scores, prune_count(s, scores.numel())))
            else:
                modules = [m for m, _ in targets.values()]
                scores = [_scores(m) for m in modules]
                flat = torch.cat([s.flatten() for s in scores])
                keep = smallest_k_mask(flat, prune_count(float(self.sparsity), flat.numel()))
                for module, part in zip(modules, torch.split(keep, [s.numel() for s in scores])):
                    apply_mask(module, part.view_as(module.weight))
        return model


def _validate(values: PerLayer, check, what: str) -> None:
    if isinstance(values, Mapping):
        for name, v in values.items():
            check(v, f"{what} for layer '{name}'")
    else:
        check(values, what)
