"""One-shot unstructured pruners: a plain constructor that stores the targets, and `prune(model)`.

Each pruner computes a keep-mask per layer and applies it with `apply_mask`, which intersects with any
mask already there, so pruning again never revives a weight and sparsity only grows. Only weights are
pruned; biases stay dense. Layers are `compressible_layers(model)` (Linear, Conv) unless a list of
names, or a dict of per-layer values, says otherwise.

The unit of pruning is a weight *tensor*: a module registered under two names (`self.b = self.a`) is found
under either name and pruned once, and tied weights (`b.weight = a.weight`) get one mask shared by every
module that holds them, so no holder keeps using the dense tensor. Scores are computed in float32 or better
(float64 stays float64); masks never change the model's dtype.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from nncompress.core.errors import UserError
from nncompress.core.layers import COMPRESSIBLE_TYPES, compressible_layers
from nncompress.core.ties import tie_map, warn_tied
from nncompress.pruning.criteria import (
    check_nonnegative,
    check_sparsity,
    magnitude_threshold_mask,
    prune_count,
    score_view,
    sensitivity_mask,
    smallest_k_mask,
)
from nncompress.pruning.mask import apply_shared_mask, broken_parametrization, dense_tensor, get_mask

PerLayer = float | Mapping[str, float]
# Embeddings are pruned only when named: an embedding row is a token's whole representation, so a default
# "every layer at s %" would also thin the vocabulary table, which rarely is what the caller meant.
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (*COMPRESSIBLE_TYPES, nn.Embedding)


def _named(model: nn.Module, layers: Sequence[str]) -> list[tuple[str, nn.Module]]:
    """(name, module) for each requested name, checked to exist and be Linear/Conv; a module registered under
    two names (`self.b = self.a`) is found under either name."""
    modules = dict(model.named_modules(remove_duplicate=False))
    unknown = [n for n in layers if n not in modules]
    if unknown:
        available = ", ".join(compressible_layers(model)) or "none"
        raise UserError(f"unknown layer(s) {', '.join(map(repr, unknown))}; prunable layers are: {available}")
    unsupported = [f"{n} ({type(modules[n]).__name__})" for n in layers if not isinstance(modules[n], PRUNABLE_TYPES)]
    if unsupported:
        raise UserError(f"cannot prune {', '.join(unsupported)}: only Linear, Conv1d/2d/3d and (named explicitly) Embedding "
                        "layers are supported (LSTM/GRU/RNN: use nncompress.pruning.RNNPruner)")
    return [(n, modules[n]) for n in layers]


def resolve_layers(model: nn.Module, layers: Sequence[str] | None = None) -> dict[str, nn.Module]:
    """Named layers to prune: all compressible ones, or `layers` checked to exist and be Linear/Conv.

    A module reachable under two names appears once, under the first name given (one module, one mask).
    """
    if layers is None:
        found = compressible_layers(model)
        recurrent = [n for n, m in model.named_modules() if isinstance(m, (nn.LSTM, nn.GRU, nn.RNN))]
        if recurrent:  # never a silent skip: these pruners mask Linear/Conv only
            warnings.warn(f"{', '.join(recurrent)}: recurrent layers are not pruned by this pruner and stay dense; "
                          "prune them with nncompress.pruning.RNNPruner", UserWarning, stacklevel=3)
        if not found:
            raise UserError(f"{type(model).__name__} has no Linear or Conv layers to prune")
        for name, module in found.items():
            _dense_weight(name, module)
        return found
    if isinstance(layers, str):
        layers = [layers]
    out: dict[str, nn.Module] = {}
    seen: set[int] = set()
    for name, module in _named(model, list(layers)):
        if id(module) not in seen:
            seen.add(id(module))
            out[name] = module
            _dense_weight(name, module)
    return out


def _dense_weight(name: str, module: nn.Module) -> torch.Tensor:
    """The dense weight tensor a layer holds (under its mask, if any); a UserError for a broken parametrized copy.

    A module whose class says "parametrized" but whose parametrization is gone (what copying a masked layer by
    its class used to produce) raises a raw KeyError on `module.weight`; this names the layer instead.
    """
    plain = broken_parametrization(module)
    if plain is not None:
        raise UserError(f"layer '{name}' ({type(module).__name__}) has lost the parametrization its class declares (a broken copy "
                        f"of a masked layer): rebuild it as a plain {plain} with the effective weights, then prune again")
    return dense_tensor(module)


def weight_holders(model: nn.Module) -> dict[int, list[nn.Module]]:
    """Every module holding each weight tensor, keyed by id(dense tensor): tied weights (`b.weight = a.weight`,
    a tied embedding and output layer) list several modules; a module registered twice is listed once."""
    out: dict[int, list[nn.Module]] = {}
    for module in model.modules():  # modules() visits each module object once, whatever its names
        if parametrize.is_parametrized(module, "weight"):
            t = module.parametrizations["weight"].original
        else:
            t = module._parameters.get("weight")
        if isinstance(t, torch.Tensor):
            out.setdefault(id(t), []).append(module)
    return out


@dataclass
class _Unit:
    """One weight tensor to prune: `name` chose it; `modules` hold it (several when tied); `value` is its target."""

    name: str
    modules: list[nn.Module]
    value: float

    @property
    def module(self) -> nn.Module:
        return self.modules[0]


def _targets(model: nn.Module, values: PerLayer, layers: Sequence[str] | None, check) -> list[_Unit]:
    """Pair each chosen weight tensor with its value (a dict's keys choose the layers).

    Layers that hold one tensor (the same module under two names, or tied weights) form one unit pruned with
    one mask; given different values they are refused, naming both, since one tensor cannot have two sparsities.
    """
    if isinstance(values, Mapping):
        if layers is not None:
            raise UserError("give either per-layer values (a dict) or a list of layers, not both")
        pairs = _named(model, list(values))
        valued = [(n, m, check(values[n], f"value for layer '{n}'")) for n, m in pairs]
    else:
        value = check(values, "value")
        valued = [(n, m, value) for n, m in resolve_layers(model, layers).items()]
    holders = weight_holders(model)
    ties = tie_map(model)
    units: dict[int, list[tuple[str, nn.Module, float]]] = {}
    for name, module, v in valued:
        units.setdefault(id(_dense_weight(name, module)), []).append((name, module, v))
    out = []
    for key, members in units.items():
        given = sorted({v for _, _, v in members})
        if len(given) > 1:
            names = " and ".join(repr(n) for n, _, _ in members)
            raise UserError(f"layers {names} hold the same weight tensor (one module under two names, or tied weights) but were "
                            f"given different values {given}: give them one value (one tensor gets one mask)")
        first = members[0][1]
        others = [m for m in holders.get(key, []) if m is not first]
        if others:  # a tie between different modules: one mask for all of them, said out loud
            partners = ties.get(f"{members[0][0]}.weight", [])
            warn_tied(f"{members[0][0]}.weight", partners or [f"{len(others)} other module(s)"],
                      "pruned once, with one mask shared by every holder (the tie is kept)")
        out.append(_Unit(members[0][0], [first, *others], members[0][2]))
    return out


def _scores(unit: _Unit | nn.Module) -> torch.Tensor:
    """|dense weight| (float32 or better), with entries masked in any holder at -inf so they are counted as removed first."""
    modules = unit.modules if isinstance(unit, _Unit) else [unit]
    w = score_view(dense_tensor(modules[0])).abs()
    for m in modules:
        mask = get_mask(m)
        if mask is not None:
            w = w.masked_fill(~mask, float("-inf"))
    return w


class MagnitudePruner:
    """Keep |w| > threshold, per layer (Han et al. 2015)."""

    def __init__(self, thresholds: PerLayer, layers: Sequence[str] | None = None):
        self.thresholds = thresholds
        self.layers = layers
        _validate(thresholds, check_nonnegative, "threshold")

    def prune(self, model: nn.Module) -> nn.Module:
        with torch.no_grad():
            for u in _targets(model, self.thresholds, self.layers, check_nonnegative):
                apply_shared_mask(u.modules, magnitude_threshold_mask(u.module.weight, u.value))
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
            for u in _targets(model, self.s, self.layers, check_nonnegative):
                apply_shared_mask(u.modules, sensitivity_mask(dense_tensor(u.module), u.value))
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
                for u in targets:
                    scores = _scores(u)
                    apply_shared_mask(u.modules, smallest_k_mask(scores, prune_count(u.value, scores.numel())))
            else:  # a tied tensor is one unit, so its weights are counted once in N_total
                scores = [_scores(u) for u in targets]
                flat = torch.cat([s.flatten() for s in scores])
                keep = smallest_k_mask(flat, prune_count(float(self.sparsity), flat.numel()))
                for u, part, sc in zip(targets, torch.split(keep, [s.numel() for s in scores]), scores):
                    apply_shared_mask(u.modules, part.view(sc.shape))
        return model


_RADIX_BITS = 16
_CHUNK = 1 << 20  # elements per pass step: bounded temporaries (~20 MB) whatever the layer's size


def _abs_bits(flat) -> tuple[object, int, int]:
    """(unsigned view, magnitude mask, bit width) of a float32/float64 array: for x >= 0 (and NaN above
    +inf) the bit pattern of |x| orders exactly like |x|, so selection can work on integers."""
    import numpy as np

    if flat.dtype == np.float32:
        return flat.view(np.uint32), np.uint32(0x7FFFFFFF), 32
    return flat.view(np.uint64), np.uint64(0x7FFFFFFFFFFFFFFF), 64


def _prune_smallest_inplace(flat, k: int) -> None:
    """Zero exactly the k smallest |x| of a float32/float64 numpy array in place; among equal |x| the
    lower flat index goes first (LevelPruner's rule, `smallest_k_mask`).

    Radix selection, exact: a histogram of the top 16 bits of the |x| bit patterns finds the bin holding
    the k-th smallest, the next 16 bits within that bin refine it, and so on, giving the k-th smallest
    pattern t and the count below it; then everything below t and the first (k - count) entries equal
    to t are zeroed. Two (float32) or four (float64) histogram passes and one zeroing pass, each in
    chunks, instead of a stable argsort of the whole tensor (8 bytes of index per weight).
    """
    import numpy as np

    n = flat.size
    if k <= 0:
        return
    if k >= n:
        flat[:] = 0
        return
    bits_view, magnitude, width = _abs_bits(flat)
    prefix, below, rank = 0, 0, k  # find the rank-th smallest (1-based) among entries sharing `prefix`
    for level in range(width // _RADIX_BITS):
        shift = width - _RADIX_BITS * (level + 1)
        hist = np.zeros(1 << _RADIX_BITS, dtype=np.int64)
        for lo in range(0, n, _CHUNK):
            a = bits_view[lo : lo + _CHUNK] & magnitude
            if level:
                a = a[(a >> (shift + _RADIX_BITS)) == prefix]
            hist += np.bincount(((a >> shift) & ((1 << _RADIX_BITS) - 1)).astype(np.intp), minlength=1 << _RADIX_BITS)
        cum = np.cumsum(hist)
        digit = int(np.searchsorted(cum, rank, side="left"))
        before = int(cum[digit - 1]) if digit else 0
        below += before
        rank -= before
        prefix = (prefix << _RADIX_BITS) | digit
    t = bits_view.dtype.type(prefix)
    ties = k - below  # entries equal to t still to remove, lowest index first
    for lo in range(0, n, _CHUNK):
        a = bits_view[lo : lo + _CHUNK] & magnitude
        part = flat[lo : lo + _CHUNK]
        if ties:
            eq = np.flatnonzero(a == t)[:ties]
            part[eq] = 0
            ties -= eq.size
        part[a < t] = 0


def level_prune_inplace(model: nn.Module, sparsity: PerLayer, layers: Sequence[str] | None = None,
                        progress: bool | None = None) -> dict[str, int]:
    """LevelPruner(sparsity).prune(model) followed by finalize, without masks and without copies.

    Zeroes exactly round(sparsity·n) smallest-|w| weights of each layer in place (ties: lower flat index
    first, as `smallest_k_mask`), by exact radix selection on the weights' bit patterns (see
    `_prune_smallest_inplace`): no argsort, no mask, no parametrization, so pruning a 138 M-weight
    VGG16 needs tens of MB beyond the model. `sparsity` is a float or {layer: sparsity}; already-zero
    weights are the smallest and go first. Layers must be unmasked, on the CPU, in float32/float64.
    Returns {layer: weights kept}.
    """
    import numpy as np

    from nncompress.core.progress import track

    kept = {}
    with torch.no_grad():
        units = _targets(model, sparsity, layers, check_sparsity)
        for u in track(units, "level pruning (in place)", enabled=progress):
            if any(get_mask(m) is not None for m in u.modules):
                raise UserError(f"layer '{u.name}' already carries a pruning mask: call finalize(model) before level_prune_inplace")
            w = dense_tensor(u.module)
            if w.dtype not in (torch.float32, torch.float64) or w.device.type != "cpu" or not w.is_contiguous():
                raise UserError(f"level_prune_inplace: layer '{u.name}' must hold a contiguous float32/float64 CPU weight, "
                                f"got {w.dtype} on {w.device}; use LevelPruner instead")
            flat = w.detach().view(-1).numpy()
            _prune_smallest_inplace(flat, prune_count(u.value, flat.size))
            kept[u.name] = int(np.count_nonzero(flat))  # no bool tensor the size of the layer
    return kept


def _validate(values: PerLayer, check, what: str) -> None:
    if isinstance(values, Mapping):
        for name, v in values.items():
            check(v, f"{what} for layer '{name}'")
    else:
        check(values, what)
