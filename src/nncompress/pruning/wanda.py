"""Wanda: pruning LLMs by Weights AND Activations (Sun, Liu, Bair, Kolter, "A Simple and Effective Pruning
Approach for Large Language Models", ICLR 2024), and the per-row magnitude baseline it is compared with.

Score of weight W_ij (output i, input j):   S_ij = |W_ij| · ‖X_j‖₂
where ‖X_j‖₂ is the 2-norm of input feature j over all calibration tokens. No weight update, no Hessian:
one forward pass for the norms, then a sort. Weights are compared **per output row** (the paper's
comparison group, which it finds much better than per layer for LLMs): each row keeps its largest scores.

Sparsity patterns: unstructured (`sparsity`, e.g. 0.5: ⌊in·sparsity⌋ pruned in every row) or N:M
(`n`, `m`: keep n of every m consecutive inputs, e.g. 2:4, 4:8). Masks are attached with
`nncompress.pruning.mask.apply_mask`, so fine-tuning keeps them; `finalize` bakes them in.

`magnitude_prune_llm` is the same selection with S_ij = |W_ij| (‖X‖ ≡ 1), per row or per layer.

Published figure (Wanda Table 3; SparseGPT and magnitude from the same table): LLaMA-2-7B at 50 %
unstructured, WikiText-2 perplexity dense 5.12, magnitude 14.89, SparseGPT 6.51, Wanda 6.42.
"""
from __future__ import annotations

import torch
from torch import nn

from nncompress.core.calibration_stats import calibration_layers, sequential_apply, weight_matrix
from nncompress.core.errors import UserError
from nncompress.pruning.mask import apply_shared_mask, dense_tensor
from nncompress.pruning.pruners import weight_holders


def check_pattern(sparsity: float | None, n: int | None, m: int | None, in_features: int | None = None) -> None:
    """One of: a sparsity in [0, 1) or an N:M pattern with 0 < n < m dividing the input features."""
    if (n is None) != (m is None):
        raise UserError("give both n and m for N:M sparsity (e.g. n=2, m=4), or neither")
    if n is not None:
        if sparsity is not None:
            raise UserError("give either sparsity (unstructured) or n:m, not both")
        if isinstance(n, bool) or isinstance(m, bool) or not isinstance(n, int) or not isinstance(m, int) or not 0 < n < m:
            raise UserError(f"N:M sparsity needs integers 0 < n < m, got {n}:{m} (e.g. 2:4 or 4:8)")
        if in_features is not None and in_features % m:
            raise UserError(f"N:M sparsity needs the input features ({in_features}) to be a multiple of m={m}")
        return
    if sparsity is None or isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise UserError(f"sparsity={sparsity!r} must be a number in [0, 1) (e.g. 0.5), or give n and m")


def prune_count(cols: int, sparsity: float) -> int:
    """Weights pruned in a row of `cols`: ⌊cols·sparsity⌋ (the Wanda reference's rule)."""
    return int(cols * sparsity)


def score_mask(scores: torch.Tensor, sparsity: float | None = None, n: int | None = None, m: int | None = None,
               group: str = "row") -> torch.Tensor:
    """Keep-mask (True = keep) that removes the lowest scores of an (out, in) score matrix.

    Unstructured: ⌊in·sparsity⌋ lowest per row (`group="row"`) or ⌊numel·sparsity⌋ over the whole layer
    (`group="layer"`). N:M: the n highest of every m consecutive inputs. Ties: the lower index is pruned first
    (stable sort), so masks are deterministic."""
    if scores.dim() != 2:
        raise UserError(f"scores must be an (out, in) matrix, got shape {list(scores.shape)}")
    check_pattern(sparsity, n, m, scores.shape[1])
    s = scores.detach().float()
    if n is not None:
        g = s.reshape(-1, m)
        order = torch.sort(g, dim=1, descending=True, stable=True).indices[:, :n]
        return torch.zeros_like(g, dtype=torch.bool).scatter_(1, order, True).reshape(s.shape)
    if group == "row":
        k = prune_count(s.shape[1], sparsity)
        order = torch.sort(s, dim=1, stable=True).indices[:, :k]
        return torch.ones_like(s, dtype=torch.bool).scatter_(1, order, False)
    if group == "layer":
        k = prune_count(s.numel(), sparsity)
        order = torch.sort(s.reshape(-1), stable=True).indices[:k]
        return torch.ones(s.numel(), dtype=torch.bool, device=s.device).scatter_(0, order, False).reshape(s.shape)
    raise UserError(f"group={group!r}: use 'row' (per output, Wanda's choice) or 'layer'")


def wanda_scores(weight: torch.Tensor, input_norm: torch.Tensor) -> torch.Tensor:
    """S_ij = |W_ij| · ‖X_j‖₂ for an (out, in) weight and the (in,) input-feature norms."""
    if input_norm.shape != (weight.shape[1],):
        raise UserError(f"input norms have shape {list(input_norm.shape)}, the weight has {weight.shape[1]} inputs")
    return weight.detach().float().abs() * input_norm.float().unsqueeze(0)


def attach_layer_mask(model: nn.Module, layer: nn.Module, keep: torch.Tensor) -> None:
    """Attach an (out, in) keep-mask to a linear-like layer in its own layout (Conv1D stores (in, out)),
    shared by every module holding the same weight tensor."""
    mask = keep if isinstance(layer, nn.Linear) else keep.t()
    holders = weight_holders(model).get(id(dense_tensor(layer)), [layer])
    apply_shared_mask([layer, *[h for h in holders if h is not layer]], mask.contiguous())


def wanda_prune(model: nn.Module, batches, sparsity: float | None = 0.5, n: int | None = None, m: int | None = None,
                layers=None, group: str = "row", sequential: bool = False) -> dict[str, torch.Tensor]:
    """Wanda-prune every linear layer (not the embedding-tied head): masks attached, returned as (out, in) keep-masks.

    `sequential=False`: every input norm from the dense model in one pass. `sequential=True`: layers in execution
    order, each scored on inputs from the layers already pruned (what the reference code does block by block)."""
    if n is not None:
        sparsity = None
    check_pattern(sparsity, n, m)
    masks = {}

    def apply(name: str, layer: nn.Module, stats) -> None:
        keep = score_mask(wanda_scores(weight_matrix(layer), stats.norm), sparsity, n, m, group)
        attach_layer_mask(model, layer, keep)
        masks[name] = keep

    sequential_apply(model, batches, apply, layers=layers, sequential=sequential, hessian=False)
    return masks


def magnitude_prune_llm(model: nn.Module, sparsity: float | None = 0.5, n: int | None = None, m: int | None = None,
                        layers=None, group: str = "row") -> dict[str, torch.Tensor]:
    """Magnitude baseline for the LLM comparison: keep the largest |W_ij| per row (or per layer), or N:M."""
    if n is not None:
        sparsity = None
    check_pattern(sparsity, n, m)
    masks = {}
    for name, layer in calibration_layers(model, layers).items():
        keep = score_mask(weight_matrix(layer).detach().float().abs(), sparsity, n, m, group)
        attach_layer_mask(model, layer, keep)
        masks[name] = keep
    return masks
