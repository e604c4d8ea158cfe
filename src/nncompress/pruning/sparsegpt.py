"""SparseGPT: one-shot pruning with OBS weight reconstruction (Frantar & Alistarh, "SparseGPT: Massive
Language Models Can Be Accurately Pruned in One-Shot", ICML 2023).

For one linear layer with calibration inputs X and Hessian H = 2·XᵀX/n (+ λI, λ = 1 % of mean diag), SparseGPT
removes weights and updates the remaining ones to keep ‖WX − ŴX‖² small. With U the upper Cholesky factor of
H⁻¹, columns are processed left to right; when column j is pruned (entry set to 0), its error is spread over
the columns to its right, exactly as in GPTQ:

    δ_j = (w_j − ŵ_j) / U_jj,      W[:, j+1:] −= δ_j · U[j, j+1:]

Adaptive mask selection: at the start of each block of `block_size` (128) columns the mask for the block is
chosen from the OBS saliency of the current (already updated) weights,  w_ij² / U_jj²  — the smallest are
pruned. Here the selection is made per output row inside each block, so every row ends with exactly
⌊in·sparsity⌋ pruned weights (the reference chooses over the whole block; per row is Wanda's comparison
group and gives an exact, checkable per-row sparsity). N:M: at every m-th column, the n lowest saliencies of
the next m columns (n:m here means *keep* n of m, e.g. 2:4) are pruned, row by row.

Lazy batch updates as in GPTQ: inside a block immediately, to the rest once per block. The pruned mask is
attached with `nncompress.pruning.mask.apply_mask`, so fine-tuning keeps the sparsity.

Published figure (Wanda's Table 3, same protocol): LLaMA-2-7B at 50 % unstructured, WikiText-2 perplexity
dense 5.12, magnitude 14.89, SparseGPT 6.51, Wanda 6.42.
"""
from __future__ import annotations

import torch
from torch import nn

from nncompress.core.calibration_stats import (
    LayerStats,
    damped_hessian,
    inverse_cholesky_upper,
    sequential_apply,
    set_weight_matrix,
    weight_matrix,
)
from nncompress.core.errors import UserError
from nncompress.pruning.mask import apply_shared_mask, dense_tensor
from nncompress.pruning.pruners import weight_holders


def _check(sparsity, n, m, cols: int) -> None:
    if n is not None or m is not None:
        if n is None or m is None or isinstance(n, bool) or not isinstance(n, int) or not isinstance(m, int) or not 0 < n < m:
            raise UserError(f"N:M sparsity needs integers 0 < n < m (keep n of every m), got {n}:{m}")
        if cols % m:
            raise UserError(f"N:M sparsity needs the input features ({cols}) to be a multiple of m={m}")
        return
    if sparsity is None or isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise UserError(f"sparsity={sparsity!r} must be a number in [0, 1) (e.g. 0.5), or give n and m")


def sparsegpt_prune_weight(w: torch.Tensor, hessian: torch.Tensor, sparsity: float | None = 0.5, n: int | None = None,
                           m: int | None = None, block_size: int = 128, damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune an (out, in) weight with SparseGPT; returns (updated weight with zeros, keep-mask)."""
    if w.dim() != 2:
        raise UserError(f"SparseGPT takes an (out, in) weight matrix, got shape {list(w.shape)}")
    rows, cols = w.shape
    if not bool(torch.isfinite(w).all()):
        raise UserError("the weight holds NaN or inf values: fix the model before compressing it")
    _check(sparsity, n, m, cols)
    if block_size < 1 or (n is not None and block_size % m):
        raise UserError(f"block_size={block_size} must be >= 1 (and a multiple of m for N:M); SparseGPT uses 128")
    h, W, _ = damped_hessian(hessian, w.detach().to(torch.float64), damp)
    U = inverse_cholesky_upper(h)
    keep = torch.ones(rows, cols, dtype=torch.bool, device=w.device)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].clone()
        E1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        d = torch.diag(U1).unsqueeze(0)
        prune1 = torch.zeros_like(W1, dtype=torch.bool)
        if n is None:
            k = int(i2 * sparsity) - int(i1 * sparsity)  # cumulative rule: each row ends with ⌊in·sparsity⌋ pruned
            if k > 0:
                sal = W1.pow(2) / d.pow(2)
                order = torch.sort(sal, dim=1, stable=True).indices[:, :k]
                prune1.scatter_(1, order, True)
        for i in range(i2 - i1):
            if n is not None and i % m == 0:
                sal = W1[:, i:i + m].pow(2) / d[:, i:i + m].pow(2)
                order = torch.sort(sal, dim=1, stable=True).indices[:, : m - n]
                prune1[:, i:i + m] = torch.zeros_like(sal, dtype=torch.bool).scatter_(1, order, True)
            col = W1[:, i]
            new = torch.where(prune1[:, i], torch.zeros_like(col), col)
            err = (col - new) / U1[i, i]
            W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
            W1[:, i] = new
            E1[:, i] = err
        W[:, i1:i2] = W1
        keep[:, i1:i2] = ~prune1
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    W = W * keep
    return W.to(w.dtype), keep


def sparsegpt(model: nn.Module, batches, sparsity: float | None = 0.5, n: int | None = None, m: int | None = None,
              layers=None, block_size: int = 128, damp: float = 0.01, sequential: bool = True) -> dict[str, torch.Tensor]:
    """SparseGPT-prune every linear layer (not the embedding-tied head) in place: weights updated, keep-masks
    attached (parametrizations) and returned as (out, in) masks.

    `sequential=True` prunes layers in execution order, each on inputs from the already-pruned layers (the
    paper's scheme); False takes every Hessian from the dense model in one pass."""
    if n is not None:
        sparsity = None
    masks: dict[str, torch.Tensor] = {}

    def apply(name: str, layer: nn.Module, stats: LayerStats) -> None:
        w = weight_matrix(layer).detach().float()
        new, keep = sparsegpt_prune_weight(w, stats.hessian, sparsity, n, m, block_size, damp)
        set_weight_matrix(layer, new)
        mask = keep if isinstance(layer, nn.Linear) else keep.t()
        holders = weight_holders(model).get(id(dense_tensor(layer)), [layer])
        apply_shared_mask([layer, *[h for h in holders if h is not layer]], mask.contiguous())
        masks[name] = keep

    sequential_apply(model, batches, apply, layers=layers, sequential=sequential, hessian=True)
    return masks
