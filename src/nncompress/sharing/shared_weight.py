"""Weight sharing as a parametrization: weight = centroids[codes] · mask (Deep Compression §3, Han et al. 2016).

Each layer keeps a codebook of k = 2^bits shared values (an nn.Parameter) and, per weight, the index of its
centroid. Because the forward pass gathers centroids[codes], autograd gives each centroid the sum of the
gradients of the weights in its cluster (the paper's eq. 3: ∂L/∂C_k = Σ_ij ∂L/∂W_ij · 1(I_ij = k));
the mask zeroes that gradient for pruned weights, so they stay exactly zero during fine-tuning.
The original dense weight is frozen (requires_grad=False) so an optimizer built from trainable
parameters updates only centroids and biases. Share after pruning: the zeros of the effective weight
at sharing time become the mask. `finalize_sharing` bakes the shared values into a plain weight.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from nncompress.core.errors import UserError
from nncompress.core.layers import COMPRESSIBLE_TYPES, compressible_layers
from nncompress.core.ties import warn_tied, weight_holders_by_name
from nncompress.sharing.kmeans import check_bits, kmeans_1d

DEFAULT_BITS: dict[str, int] = {"conv": 8, "linear": 5}  # the paper's choice for LeNet/AlexNet/VGG
_CENTROIDS_KEY = re.compile(r"^(?:(?P<layer>.+)\.)?parametrizations\.weight\.(?P<index>\d+)\.centroids$")


class SharedWeight(nn.Module):
    """Parametrization returning centroids[codes] · mask; ignores the original tensor it is given."""

    def __init__(self, centroids: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor):
        super().__init__()
        if codes.shape != mask.shape:
            raise UserError(f"codes {tuple(codes.shape)} and mask {tuple(mask.shape)} must have the same shape")
        k = centroids.numel()
        if k == 0 or (codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= k)):
            raise UserError(f"every code must index one of the {k} centroids (0..{k - 1}); pruned positions may use any valid code")
        self.centroids = nn.Parameter(centroids.detach().clone().float().reshape(-1))
        self.register_buffer("codes", codes.detach().clone().long())
        self.register_buffer("mask", mask.detach().clone().bool())

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return (self.centroids[self.codes] * self.mask).to(original.dtype)

    def extra_repr(self) -> str:
        return f"k={self.centroids.numel()}, shape={tuple(self.codes.shape)}, nnz={int(self.mask.sum())}"


@dataclass(frozen=True)
class SharingInfo:
    name: str
    bits: int
    num_centroids: int  # k ≤ 2^bits (fewer when the layer has fewer distinct non-zero values)
    nnz: int
    numel: int
    mse: float  # mean squared error between the non-zero weights and their centroids


def _kind(module: nn.Module) -> str:
    if isinstance(module, nn.Embedding):
        return "embedding"
    return "linear" if isinstance(module, nn.Linear) else "conv"


def _shared(module: nn.Module) -> SharedWeight | None:
    if not parametrize.is_parametrized(module, "weight"):
        return None
    found = [p for p in module.parametrizations.weight if isinstance(p, SharedWeight)]
    return found[-1] if found else None


def shared_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Layers whose weight is currently shared, by qualified name."""
    return {name: m for name, m in model.named_modules() if _shared(m) is not None}


def _resolve_bits(bits: int | dict[str, int], layers: dict[str, nn.Module], explicit: bool) -> dict[str, int]:
    if not isinstance(bits, dict):
        b = check_bits(bits)
        return {name: b for name in layers}
    unknown = [k for k in bits if k not in layers and k not in (*DEFAULT_BITS, "embedding")]
    if unknown:
        raise UserError(f"bits has keys that are neither a layer nor 'conv'/'linear'/'embedding': {', '.join(unknown)}; "
                        f"layers: {', '.join(layers)}")
    out = {}
    for name, m in layers.items():
        b = bits.get(name, bits.get(_kind(m)))
        if b is None:
            if explicit:
                raise UserError(f"no bits given for layer '{name}': add it (or '{_kind(m)}') to the bits dict")
            continue
        out[name] = check_bits(b)
    return out


@torch.no_grad()
def share_weights(model: nn.Module, bits: int | dict[str, int] | None = None, init: str = "linear",
                  layers: list[str] | None = None, seed: int = 0, max_iter: int = 100) -> dict[str, SharingInfo]:
    """Replace each layer's weight by k-means shared values; returns what was done per layer.

    bits: an int for every layer, or a dict keyed by layer name and/or 'conv' / 'linear' (a layer name wins);
    default {'conv': 8, 'linear': 5}. layers: which Linear/Conv layers (default: all that the bits dict covers).
    """
    # Embeddings join when named (layers, or a bits dict keyed by their name or 'embedding'): a vocabulary
    # table shares as well as a linear layer (its rows are vectors like any other), but only on request.
    available = compressible_layers(model, (*COMPRESSIBLE_TYPES, nn.Embedding))
    if layers is None and not (isinstance(bits, dict) and ("embedding" in bits or any(
            k in bits and isinstance(m, nn.Embedding) for k, m in available.items()))):
        available = {n: m for n, m in available.items() if not isinstance(m, nn.Embedding)}
    if layers is not None:
        missing = [n for n in layers if n not in available]
        if missing:
            raise UserError(f"no Linear/Conv layer named {', '.join(missing)}; the model has: {', '.join(available)}")
        available = {n: available[n] for n in layers}
    per_layer = _resolve_bits(DEFAULT_BITS if bits is None else bits, available, explicit=layers is not None)
    already = [n for n in per_layer if _shared(available[n]) is not None]
    if already:
        raise UserError(f"layer(s) {', '.join(already)} already shared: call finalize_sharing(model) before sharing again")
    infos = {}
    holders = weight_holders_by_name(model)
    done: set[int] = set()
    for name, b in per_layer.items():
        module = available[name]
        key = id(_original_weight(module))
        if key in done:  # the other holder of a tied tensor, already shared with it
            continue
        done.add(key)
        others = [(n, m) for n, m in holders.get(key, []) if m is not module]
        w = module.weight.detach()
        mask = w != 0
        centroids, nz_codes = kmeans_1d(w, b, init=init, max_iter=max_iter, seed=seed)
        if centroids.numel() == 0:  # nothing left after pruning: one zero centroid keeps forward valid
            centroids = torch.zeros(1)
        codes = torch.zeros(w.shape, dtype=torch.int64, device=w.device)
        codes[mask] = nz_codes.to(w.device)
        centroids = centroids.to(w.device)
        nz = w[mask].float()
        mse = float(((centroids[nz_codes.to(w.device)] - nz) ** 2).mean()) if nz.numel() else 0.0
        shared = SharedWeight(centroids, codes, mask)
        for holder in [module, *(m for _, m in others)]:  # one codebook for every holder keeps a tie intact
            parametrize.register_parametrization(holder, "weight", shared)
            holder.parametrizations.weight.original.requires_grad_(False)
        if others:
            warn_tied(f"{name}.weight", [f"{n}.weight" for n, _ in others],
                      f"shared once with one {b}-bit codebook for every holder (the tie is kept)")
        infos[name] = SharingInfo(name, b, centroids.numel(), int(mask.sum()), w.numel(), mse)
    return infos


def _original_weight(module: nn.Module) -> torch.Tensor:
    """The tensor a module holds as `weight`, looking through a parametrization (a pruning mask)."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


def get_codebook(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(centroids [k], codes [weight shape], mask [weight shape]) of a shared layer, detached."""
    p = _shared(module)
    if p is None:
        raise UserError(f"{type(module).__name__} layer is not weight-shared: call share_weights first")
    return p.centroids.detach(), p.codes, p.mask


@torch.no_grad()
def finalize_sharing(model: nn.Module) -> nn.Module:
    """Bake centroids[codes] · mask into a plain trainable `weight` on every shared layer (removes its parametrizations)."""
    for module in shared_layers(model).values():
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        module.weight.requires_grad_(True)
    return model


@torch.no_grad()
def load_shared_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], strict: bool = True) -> nn.Module:
    """Load a state dict saved from a weight-shared model (e.g. via save_weights) into a fresh, unshared `model`.

    Each `<layer>.parametrizations.weight.<i>.centroids/codes/mask` triple becomes a SharedWeight on that
    layer and `...original` its frozen dense tensor. Other parametrizations saved on the same weight
    (e.g. a pruning mask before the sharing) are dropped: SharedWeight ignores its input, so they do not
    change the weight. Every remaining key loads as usual.
    """
    state, loaded_prefixes = dict(state_dict), []
    for key in [k for k in state_dict if _CENTROIDS_KEY.match(k)]:
        layer = _CENTROIDS_KEY.match(key).group("layer") or ""
        prefix = f"{layer}.parametrizations.weight." if layer else "parametrizations.weight."
        try:
            module = model.get_submodule(layer)
            codes, mask = state[key[: -len("centroids")] + "codes"], state[key[: -len("centroids")] + "mask"]
            original = state[prefix + "original"]
        except (AttributeError, KeyError) as e:
            raise UserError(f"weights do not fit the model: shared layer '{layer}' is incomplete or missing ({e})") from None
        if parametrize.is_parametrized(module, "weight"):
            raise UserError(f"layer '{layer}' of the model is already parametrized: load into a fresh model")
        if tuple(original.shape) != tuple(module.weight.shape) or tuple(codes.shape) != tuple(original.shape):
            raise UserError(f"weights do not fit the model: layer '{layer}' has weight {tuple(module.weight.shape)}, "
                            f"the file {tuple(original.shape)}")
        module.weight.copy_(original)
        parametrize.register_parametrization(module, "weight", SharedWeight(state[key], codes, mask).to(module.weight.device))
        module.parametrizations.weight.original.requires_grad_(False)
        state = {k: v for k, v in state.items() if not k.startswith(prefix)}
        loaded_prefixes.append(prefix)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise UserError(f"weights do not fit the model: {str(e).splitlines()[0][:300]}") from None
    missing = [k for k in result.missing_keys if not k.startswith(tuple(loaded_prefixes))]
    if strict and (missing or result.unexpected_keys):
        raise UserError(f"weights do not fit the model: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")
    return model


@torch.no_grad()
def share_weights_inplace(model: nn.Module, bits: int | dict[str, int] | None = None, init: str = "linear",
                          layers: list[str] | None = None, seed: int = 0, max_iter: int = 100,
                          progress: bool | None = None) -> dict[str, torch.Tensor]:
    """Weight sharing without a second copy of the model: each layer's non-zero weights are overwritten,
    in place, by their k-means centroid; returns {layer: codebook (float32, ascending)}.

    The same clustering as `share_weights` (Deep Compression §3: 1-D k-means over the non-zero weights,
    zeros stay pruned), run on the layer's distinct values with their counts (`kmeans_1d_weighted`), one
    layer at a time. Unlike `share_weights` nothing is attached to the model (no SharedWeight
    parametrization with its per-weight int64 codes, mask and frozen original, ~11 bytes per weight on
    top of the weight itself), so centroids cannot be fine-tuned afterwards; use it to compress a model
    for storage (`export.nnc.save_compressed(model, path, metadata, codebooks=...)`). Weights must be
    float32 on the CPU. A centroid that is exactly 0.0 would turn its weights into pruned ones; a
    codebook never contains one unless a layer's non-zeros average to exactly zero in a cluster.
    """
    from nncompress.core.progress import track
    from nncompress.sharing.kmeans import kmeans_1d_weighted

    available = compressible_layers(model)
    if layers is not None:
        missing = [n for n in layers if n not in available]
        if missing:
            raise UserError(f"no Linear/Conv layer named {', '.join(missing)}; the model has: {', '.join(available)}")
        available = {n: available[n] for n in layers}
    per_layer = _resolve_bits(DEFAULT_BITS if bits is None else bits, available, explicit=layers is not None)
    out: dict[str, torch.Tensor] = {}
    for name, b in track(list(per_layer.items()), "k-means (in place)", enabled=progress):
        module = available[name]
        if parametrize.is_parametrized(module, "weight"):
            raise UserError(f"layer '{name}' is parametrized (masked or shared): call finalize / finalize_sharing first")
        w = module.weight.detach()
        if w.dtype != torch.float32 or w.device.type != "cpu" or not w.is_contiguous():
            raise UserError(f"share_weights_inplace: layer '{name}' must hold a contiguous float32 CPU weight, got {w.dtype} on {w.device}")
        flat = w.view(-1).numpy()  # shares memory with the parameter
        values, counts = _distinct_nonzeros(flat)
        centroids, labels = kmeans_1d_weighted(values, counts, b, init=init, max_iter=max_iter, seed=seed)
        cb = centroids.astype(np.float32)
        if cb.size == 0:
            cb = np.zeros(1, dtype=np.float32)  # nothing left after pruning: one zero centroid, as share_weights
        else:
            _assign_inplace(flat, values, labels, cb)
        out[name] = torch.from_numpy(cb)
        del values, counts, labels
    return out


_CHUNK = 1 << 20  # weights per step of the in-place loops: a few MB of scratch however large the layer


def _distinct_nonzeros(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ascending distinct non-zero values, their counts) of a float32 array: `np.unique(flat[flat != 0],
    return_counts=True)` without its inverse index or argsort (int64 per weight): the non-zeros are gathered
    a chunk at a time into one float32 array, sorted in place, and the runs of equal values counted. For a
    67 M-weight layer at 10 % density that is 27 MB of float32 plus a bool per non-zero, not ~250 MB."""
    nz = np.empty(int(np.count_nonzero(flat)), dtype=flat.dtype)
    done = 0
    for lo in range(0, flat.size, _CHUNK):
        part = flat[lo : lo + _CHUNK]
        kept = part[part != 0]
        nz[done : done + kept.size] = kept
        done += kept.size
    nz.sort()
    if not nz.size:
        return nz, np.zeros(0, dtype=np.int64)
    starts = np.empty(nz.size, dtype=bool)
    starts[0] = True
    np.not_equal(nz[1:], nz[:-1], out=starts[1:])  # NaNs stay distinct (k-means refuses them)
    first = np.flatnonzero(starts)
    del starts
    values = nz[first]
    counts = np.diff(first, append=nz.size)
    return values, counts


def _assign_inplace(flat: np.ndarray, values: np.ndarray, labels: np.ndarray, cb: np.ndarray) -> None:
    """Overwrite each non-zero of `flat` by cb[label of its value], a chunk at a time.

    1-D k-means clusters are runs of the sorted distinct values (`kmeans_1d_weighted`: labels ascend), so
    cluster j >= 1 starts at the value thresholds[j - 1] = values[first index with label >= j] (+inf when
    the cluster is empty at the top), and a value's label is the number of thresholds <= it: one
    searchsorted over 2^bits - 1 thresholds per weight instead of an int64 inverse index per weight.
    """
    starts = np.searchsorted(labels, np.arange(1, cb.size), side="left")  # labels are non-decreasing
    thresholds = np.where(starts < values.size, values[np.minimum(starts, values.size - 1)], np.inf).astype(values.dtype)
    for lo in range(0, flat.size, _CHUNK):
        part = flat[lo : lo + _CHUNK]
        nonzero = part != 0
        part[nonzero] = cb[np.searchsorted(thresholds, part[nonzero], side="right")]
