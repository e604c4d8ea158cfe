"""AWQ: activation-aware weight quantization (Lin, Tang, Tang, Yang, Chen, Wang, Xiao, Dang, Gan, Han,
"AWQ: Activation-aware Weight Quantization for On-Device LLM Compression and Acceleration", MLSys 2024).

A small fraction of weights matters most: those multiplying input channels with large activations. Instead of
keeping them in fp16, AWQ scales those input channels up before quantizing, which lowers their relative
rounding error, and divides the activation by the same scale:

    Y = Q(W·diag(s))·(diag(s)⁻¹·X),      s = s_X^α / √(max s_X^α · min s_X^α),   s_X,j = mean|X_j|

α ∈ [0, 1] is grid-searched (`grid` + 1 points) per layer group to minimise the output error
‖Q(W·diag(s))·(X/s) − W·X‖² on calibration activations (α = 0 is plain RTN, so the search never does worse
on its calibration set). Layers fed by the same norm output share one s, folded into the norm (γ/s, β/s);
other layers keep an explicit input scale (`InputScaled`), or fold it into a previous linear layer given in
`linear_pairs`. Then a clipping search per (row, group): the max-value shrink r from a grid minimising the
output error of that group, ‖(W_g − Q_r(W_g))·X_g‖². Statistics come from the dense model's activations.

Published figures (AWQ Table 4): Llama-2-7B INT4 g128 WikiText-2 perplexity fp16 5.47, RTN 5.73, GPTQ 5.69,
AWQ 5.60.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from nncompress.core.calibration_stats import calibration_layers, collect_stats, set_module, set_weight_matrix, weight_matrix
from nncompress.core.errors import UserError
from nncompress.quantization.weight_only import (
    WeightOnlyLinear,
    check_weight_bits,
    fake_quantize_group,
    quantize_rtn,
    resolve_group_size,
)


def fake_quantize_weight(w: torch.Tensor, bits: int, group_size: int, symmetric: bool, clip_ratio=1.0) -> torch.Tensor:
    """Ŵ for an (out, in) weight quantized per group (RTN)."""
    wg = w.reshape(w.shape[0], -1, group_size)
    return fake_quantize_group(wg, bits, symmetric, clip_ratio).reshape(w.shape)


def awq_scale_search(weights: Sequence[torch.Tensor], x: torch.Tensor, mean_abs: torch.Tensor, bits: int = 4,
                     group_size: int | None = 128, symmetric: bool = False, grid: int = 20) -> tuple[torch.Tensor, float, dict[float, float]]:
    """Grid-search α for one group of layers sharing input `x` (tokens, in); returns (s, best α, {α: output MSE})."""
    check_weight_bits(bits)
    if grid < 1:
        raise UserError(f"grid={grid} must be >= 1")
    x = x.float()
    ws = [w.detach().float() for w in weights]
    gs = resolve_group_size(ws[0].shape[1], group_size)
    refs = [x @ w.t() for w in ws]
    base = mean_abs.float().clamp(min=1e-4)
    errors: dict[float, float] = {}
    best_s, best_a, best_err = torch.ones_like(base), 0.0, float("inf")
    for i in range(grid + 1):
        a = i / grid
        s = base.pow(a)
        s = s / (s.max() * s.min()).sqrt()
        xs = x / s
        err = sum(float((xs @ fake_quantize_weight(w * s, bits, gs, symmetric).t() - r).pow(2).mean()) for w, r in zip(ws, refs))
        errors[a] = err
        if err < best_err:
            best_s, best_a, best_err = s, a, err
    return best_s, best_a, errors


def awq_clip_search(w: torch.Tensor, x: torch.Tensor, bits: int = 4, group_size: int | None = 128, symmetric: bool = False,
                    grid: int = 20, max_shrink: float = 0.5) -> torch.Tensor:
    """Clip ratio per (row, group) minimising the group's output error mean_t ((W_g − Q_r(W_g))·x_g)²; (out, G)."""
    if not 0 < max_shrink < 1:
        raise UserError(f"max_shrink={max_shrink} must be in (0, 1)")
    w, x = w.detach().float(), x.float()
    gs = resolve_group_size(w.shape[1], group_size)
    wg = w.reshape(w.shape[0], -1, gs)                     # (out, G, gs)
    xg = x.reshape(x.shape[0], -1, gs)                     # (T, G, gs)
    best = torch.full(wg.shape[:2], float("inf"))
    ratio = torch.ones(wg.shape[:2])
    for i in range(grid + 1):
        r = 1.0 - max_shrink * i / grid
        diff = wg - fake_quantize_group(wg, bits, symmetric, r)
        err = torch.einsum("tgk,ogk->tog", xg, diff).pow(2).mean(0)   # (out, G)
        better = err < best
        best = torch.where(better, err, best)
        ratio = torch.where(better, torch.full_like(ratio, r), ratio)
    return ratio


class InputScaled(nn.Module):
    """y = inner(x / s): an explicit per-input-channel scale for a layer whose input has no foldable producer."""

    def __init__(self, inner: nn.Module, scale: torch.Tensor):
        super().__init__()
        self.inner = inner
        self.register_buffer("scale", scale.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x / self.scale.to(x.dtype))


def awq(model: nn.Module, batches, bits: int = 4, group_size: int | None = 128, symmetric: bool = False, grid: int = 20,
        clip: bool = True, layers=None, linear_pairs: Mapping[str, str] | None = None, keep_tokens: int = 2048,
        kernel: str = "dequant") -> dict[str, float]:
    """AWQ-quantize every linear layer (not the embedding-tied head) in place; layers become WeightOnlyLinear
    (wrapped in InputScaled when the scale could not be folded). Returns the chosen α per layer."""
    check_weight_bits(bits)
    stats = collect_stats(model, batches, layers, hessian=False, keep_tokens=keep_tokens)
    modules = dict(model.named_modules())
    chosen = calibration_layers(model, layers)
    groups: dict[tuple[str, str], list[str]] = {}
    for name, st in stats.items():
        if linear_pairs and name in linear_pairs:
            groups.setdefault(("linear", linear_pairs[name]), []).append(name)
        elif st.source is not None:
            groups.setdefault(("norm", st.source), []).append(name)
        else:
            groups.setdefault(("explicit", name), []).append(name)
    alphas: dict[str, float] = {}
    # fold into previous linear layers first, so a previous layer that is itself quantized later is read scaled
    for (kind, src), names in sorted(groups.items(), key=lambda kv: kv[0][0] != "linear"):
        if kind != "explicit" and src not in modules:
            raise UserError(f"linear_pairs names '{src}', which the model does not have")
        x = stats[names[0]].inputs
        ws = [weight_matrix(chosen[n]).detach().float() for n in names]
        s, a, _ = awq_scale_search(ws, x, stats[names[0]].mean_abs, bits, group_size, symmetric, grid)
        if kind == "norm":
            norm = modules[src]
            with torch.no_grad():
                norm.weight.div_(s.to(norm.weight))
                if isinstance(getattr(norm, "bias", None), torch.Tensor):
                    norm.bias.div_(s.to(norm.bias))
        elif kind == "linear":
            prev = modules[src]
            pw = weight_matrix(prev).detach().float()
            set_weight_matrix(prev, pw / s.unsqueeze(1))
            if isinstance(getattr(prev, "bias", None), torch.Tensor):
                with torch.no_grad():
                    prev.bias.div_(s.to(prev.bias))
        xs = x / s
        for n, w in zip(names, ws):
            ws_scaled = w * s
            ratio = awq_clip_search(ws_scaled, xs, bits, group_size, symmetric, grid) if clip else 1.0
            qw = quantize_rtn(ws_scaled, bits, group_size, symmetric, ratio)
            bias = getattr(chosen[n], "bias", None)
            new: nn.Module = WeightOnlyLinear(qw, bias if isinstance(bias, torch.Tensor) else None, kernel=kernel)
            if kind == "explicit":
                new = InputScaled(new, s)
            set_module(model, n, new)
            alphas[n] = a
    return alphas
