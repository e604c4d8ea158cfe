"""GPTQ: one-shot weight quantization with second-order error feedback (Frantar, Ashkboos, Hoefler, Alistarh,
"GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers", ICLR 2023).

For one linear layer with calibration inputs X, GPTQ minimises the layer reconstruction error ‖WX − ŴX‖²
row by row. Its Hessian is shared by all rows: H = 2·XᵀX/n (+ λI, λ = `damp`·mean diag(H), 1 % by default).
Columns are quantized one at a time (Optimal Brain Quantization with a fixed order); the error of column j
is spread over the columns not yet quantized:

    δ_j = (w_j − q(w_j)) / [U]_jj,      W[:, j+1:] −= δ_j · U[j, j+1:]

where U is the upper Cholesky factor of H⁻¹ (numerically stable form of the OBS update). Lazy batch updates
apply the updates inside a block of `block_size` (128) columns immediately and to the rest of the matrix once
per block (E·U[block, rest]). `act_order` processes columns by descending diag(H) (largest activations first);
with groups, each group's (scale, zero) is computed from the current (error-updated) weights when the column
pointer enters the group, and the group index of every original column is stored (`g_idx`).

Equal to round-to-nearest when H is diagonal (U diagonal: no error reaches other columns) — a property the
tests check. Published figure (Table 3): LLaMA-7B 4-bit WikiText-2 perplexity fp16 5.68, RTN 6.29, GPTQ 6.09.
"""
from __future__ import annotations

import torch
from torch import nn

from nncompress.core.calibration_stats import LayerStats, damped_hessian, inverse_cholesky_upper, sequential_apply, weight_matrix
from nncompress.core.errors import UserError
from nncompress.quantization.weight_only import (
    GroupQuantizedWeight,
    check_weight_bits,
    group_qparams,
    quantize_group,
    replace_with_weight_only,
    resolve_group_size,
)


def gptq_quantize(w: torch.Tensor, hessian: torch.Tensor, bits: int = 4, group_size: int | None = 128, symmetric: bool = False,
                  act_order: bool = False, block_size: int = 128, damp: float = 0.01) -> GroupQuantizedWeight:
    """GPTQ-quantize an (out, in) weight given its input Hessian (e.g. `LayerStats.hessian`).

    Returns a `GroupQuantizedWeight` in `weight_only`'s format (codes in the original column order; a group index
    when act-order and groups are both on)."""
    check_weight_bits(bits)
    if w.dim() != 2:
        raise UserError(f"GPTQ takes an (out, in) weight matrix, got shape {list(w.shape)}")
    if block_size < 1:
        raise UserError(f"block_size={block_size} must be >= 1 (GPTQ uses 128)")
    rows, cols = w.shape
    if not bool(torch.isfinite(w).all()):
        raise UserError("the weight holds NaN or inf values: fix the model before compressing it")
    gs = resolve_group_size(cols, group_size)
    h, W, _ = damped_hessian(hessian, w.detach().to(torch.float64), damp)
    perm = torch.argsort(torch.diag(h), descending=True, stable=True) if act_order else torch.arange(cols, device=w.device)
    W = W[:, perm].clone()
    h = h[perm][:, perm]
    U = inverse_cholesky_upper(h)

    n_groups = cols // gs
    scales = torch.zeros(rows, n_groups, dtype=torch.float32, device=w.device)
    zeros = torch.zeros(rows, n_groups, dtype=torch.float32, device=w.device)
    codes = torch.zeros(rows, cols, dtype=torch.float32, device=w.device)
    scale = zero = None
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].clone()
        E1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            j = i1 + i                                          # position in the (permuted) processing order
            if j % gs == 0:                                     # entering a group: params from the current weights
                # the group's current weights: inside this block they carry every update so far; a group
                # reaching past the block (group_size > block_size) reads the rest before this block's lazy update
                ahead = W1[:, i:i + gs]
                if ahead.shape[1] < gs:
                    ahead = torch.cat([ahead, W[:, i2:i2 + gs - ahead.shape[1]]], dim=1)
                scale, zero = group_qparams(ahead.float(), bits, symmetric)
                scales[:, j // gs], zeros[:, j // gs] = scale, zero
            col = W1[:, i]
            q = quantize_group(col.float().unsqueeze(-1), scale, zero, bits).squeeze(-1)
            codes[:, j] = q
            deq = ((q - zero) * scale).to(torch.float64)
            err = (col - deq) / U1[i, i]
            W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
            E1[:, i] = err
        W[:, i2:] -= E1 @ U[i1:i2, i2:]

    inv = torch.argsort(perm)
    codes = codes[:, inv]
    g_idx = None
    if act_order and gs < cols:  # with one group per row the order does not change which scale a column uses
        g_idx = (torch.arange(cols, device=w.device) // gs)[inv].to(torch.int32)   # group of each original column
    return GroupQuantizedWeight(codes.to(torch.uint8), scales.half(), None if symmetric else zeros.to(torch.uint8), bits, gs, g_idx)


def gptq(model: nn.Module, batches, bits: int = 4, group_size: int | None = 128, symmetric: bool = False,
         act_order: bool = True, block_size: int = 128, damp: float = 0.01, layers=None, sequential: bool = True,
         kernel: str = "dequant") -> nn.Module:
    """GPTQ-quantize every linear layer of `model` (not the embedding-tied head) in place; returns `model`.

    `batches`: calibration batches (tensors or tokenizer dicts). `sequential=True` quantizes layers in execution
    order, each on inputs produced by the already-quantized layers (the paper's scheme); False takes every
    Hessian from the dense model in one pass. Layers become `WeightOnlyLinear`."""
    def apply(name: str, layer: nn.Module, stats: LayerStats) -> None:
        w = weight_matrix(layer).detach().float()
        qw = gptq_quantize(w, stats.hessian, bits, group_size, symmetric, act_order, block_size, damp)
        replace_with_weight_only(model, name, qw, kernel=kernel)

    sequential_apply(model, batches, apply, layers=layers, sequential=sequential, hessian=True)
    return model
