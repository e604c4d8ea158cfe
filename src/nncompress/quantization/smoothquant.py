"""SmoothQuant: W8A8 for LLMs by migrating activation outliers into the weights (Xiao, Lin, Seznec, Wu,
Demouth, Han, "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large Language Models",
ICML 2023).

LLM activations have a few input channels with outliers 10–100× the others, which per-tensor or per-token
int8 cannot represent; weights are easy. A per-input-channel scale s moves the difficulty:

    Y = X·Wᵀ = (X·diag(s)⁻¹)·(diag(s)·W)ᵀ ,     s_j = max|X_j|^α / max|W_j|^(1−α)

with α (migration strength, 0.5 by default, searched on validation data by `search_alpha`). diag(s)⁻¹ is
folded into the preceding LayerNorm/RMSNorm (γ ← γ/s, β ← β/s) when the linear layer's input is that norm's
output (found during calibration), so the fp32 model is unchanged and inference pays nothing; optional
explicit `linear_pairs` fold it into the previous linear layer's output rows instead (e.g. v_proj → o_proj).

W8A8 (`W8A8Linear`): weights int8 symmetric per output channel (static), activations int8 symmetric per token
(dynamic: s_t = max_j |x_tj| / 127). The product is simulated in float (exact for int8 codes up to in ≈ 1040,
within float32 rounding beyond) or computed by `torch._int_mm` (int8 × int8 → int32) with `int_mm=True`.

KV-cache int8 (`kv_cache_int8`): the key/value projections' outputs are quantized per token and per head
(symmetric int8, dynamic), simulating an int8 KV cache in the decoder.

Published figure (SmoothQuant repository, Llama-2-7B WikiText-2): fp16 5.474 → W8A8 SmoothQuant 5.515.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from nncompress.core.calibration_stats import (
    calibration_layers,
    call_model,
    is_linear_like,
    collect_stats,
    set_module,
    set_weight_matrix,
    weight_matrix,
)
from nncompress.core.errors import UserError


def smoothing_scales(act_absmax: torch.Tensor, weight_absmax: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """s_j = max|X_j|^α / max|W_j|^(1−α) (both clamped to ≥ 1e-5, as in the reference code)."""
    if not 0 <= alpha <= 1:
        raise UserError(f"alpha={alpha} must be in [0, 1] (SmoothQuant's migration strength, 0.5 by default)")
    a = act_absmax.float().clamp(min=1e-5)
    w = weight_absmax.float().clamp(min=1e-5)
    return (a.pow(alpha) / w.pow(1 - alpha)).clamp(min=1e-5)


def scale_input_channels(layer: nn.Module, s: torch.Tensor) -> None:
    """W ← W·diag(s): multiply input column j of a linear-like layer by s_j, in place."""
    w = weight_matrix(layer).detach().float()
    set_weight_matrix(layer, w * s.to(w.device).unsqueeze(0))


def fold_into_norm(norm: nn.Module, s: torch.Tensor) -> None:
    """γ ← γ/s, β ← β/s: the norm now outputs y/s."""
    with torch.no_grad():
        norm.weight.div_(s.to(norm.weight))
        bias = getattr(norm, "bias", None)
        if isinstance(bias, torch.Tensor):
            bias.div_(s.to(bias))


def fold_into_previous_linear(prev: nn.Module, s: torch.Tensor) -> None:
    """Output row j of `prev` (and its bias) divided by s_j: the previous layer now outputs y/s."""
    w = weight_matrix(prev).detach().float()
    if w.shape[0] != s.numel():
        raise UserError(f"cannot fold a {s.numel()}-channel scale into a layer with {w.shape[0]} outputs")
    set_weight_matrix(prev, w / s.to(w.device).unsqueeze(1))
    bias = getattr(prev, "bias", None)
    if isinstance(bias, torch.Tensor):
        with torch.no_grad():
            bias.div_(s.to(bias))


def _output_tensor(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, Mapping):
        return next(v for v in out.values() if isinstance(v, torch.Tensor))
    if isinstance(out, (tuple, list)):
        return _output_tensor(out[0])
    raise UserError(f"cannot find a tensor in the model output of type {type(out).__name__}")


def smooth(model: nn.Module, batches, alpha: float = 0.5, layers: Sequence[str] | None = None,
           linear_pairs: Mapping[str, str] | None = None, stats=None) -> dict[str, torch.Tensor]:
    """Apply SmoothQuant's scales in place (fp32 function unchanged); returns s per smoothed layer.

    Layers fed by the same norm share one s (computed from their concatenated weights) folded into the norm;
    `linear_pairs` {next_layer: previous_layer} folds s into the previous layer instead. Other layers are left
    unsmoothed, as in the paper (their inputs have no outlier-prone norm output)."""
    stats = stats if stats is not None else collect_stats(model, batches, layers, hessian=False)
    modules = dict(model.named_modules())
    groups: dict[tuple[str, str], list[str]] = {}
    for name, st in stats.items():
        if linear_pairs and name in linear_pairs:
            groups.setdefault(("linear", linear_pairs[name]), []).append(name)
        elif st.source is not None:
            groups.setdefault(("norm", st.source), []).append(name)
    scales: dict[str, torch.Tensor] = {}
    for (kind, src), names in groups.items():
        if src not in modules:
            raise UserError(f"linear_pairs names '{src}', which the model does not have")
        w_absmax = torch.stack([weight_matrix(modules[n]).detach().float().abs().amax(0) for n in names]).amax(0)
        s = smoothing_scales(stats[names[0]].abs_max, w_absmax, alpha)
        if kind == "norm":
            fold_into_norm(modules[src], s)
        else:
            fold_into_previous_linear(modules[src], s)
        for n in names:
            scale_input_channels(modules[n], s)
            scales[n] = s
    return scales


# ---------------------------------------------------------------------------------------------- W8A8
def quantize_per_token(x: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric dynamic per-token codes: s_t = max_j|x_tj| / (2^(b−1) − 1), q = round(x/s_t) in ±(2^(b−1) − 1)."""
    qmax = 2 ** (bits - 1) - 1
    scale = (x.detach().abs().amax(-1, keepdim=True) / qmax).clamp(min=1e-8)
    return torch.clamp(torch.round(x / scale), -qmax, qmax), scale


class W8A8Linear(nn.Module):
    """int8 weights (symmetric, per output channel) × int8 activations (symmetric, dynamic per token)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, int_mm: bool = False):
        super().__init__()
        w = weight.detach().float()
        self.out_features, self.in_features = w.shape
        scale = (w.abs().amax(1) / 127).clamp(min=1e-8)
        self.register_buffer("weight_codes", torch.clamp(torch.round(w / scale.unsqueeze(1)), -127, 127).to(torch.int8))
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.int_mm = int_mm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        xq, xs = quantize_per_token(x.reshape(-1, self.in_features).float())
        if self.int_mm and xq.shape[0] > 16 and self.in_features % 8 == 0 and self.out_features % 8 == 0:
            acc = torch._int_mm(xq.to(torch.int8), self.weight_codes.t().contiguous()).float()
        else:
            acc = xq @ self.weight_codes.float().t()
        y = acc * xs * self.weight_scale.unsqueeze(0)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    @property
    def nbytes(self) -> int:
        return self.weight_codes.numel() + self.weight_scale.numel() * 4 + (0 if self.bias is None else self.bias.numel() * 4)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int_mm={self.int_mm}"


def quantize_w8a8(model: nn.Module, layers: Sequence[str] | None = None, int_mm: bool = False) -> nn.Module:
    """Swap every linear layer (not the embedding-tied head) for a W8A8Linear, in place; returns `model`."""
    for name, layer in list(calibration_layers(model, layers).items()):
        bias = getattr(layer, "bias", None)
        set_module(model, name, W8A8Linear(weight_matrix(layer), bias if isinstance(bias, torch.Tensor) else None, int_mm))
    return model


def smoothquant(model: nn.Module, batches, alpha: float = 0.5, layers: Sequence[str] | None = None,
                linear_pairs: Mapping[str, str] | None = None, quantize: bool = True, int_mm: bool = False,
                check_tol: float | None = 1e-3) -> nn.Module:
    """Smooth with strength α (folding into norms), check the fp32 output on the first batch did not move by
    more than `check_tol` (relative; a norm feeding something besides the smoothed layers would break it), then
    swap the layers for W8A8Linear. In place; returns `model`."""
    batches = list(batches) if not isinstance(batches, (torch.Tensor, Mapping)) else [batches]
    if not batches:
        raise UserError("no calibration batches: give at least one batch")
    was = model.training
    model.eval()
    with torch.no_grad():
        before = _output_tensor(call_model(model, batches[0])).float().clone() if check_tol is not None else None
        smooth(model, batches, alpha, layers, linear_pairs)
        if before is not None:
            after = _output_tensor(call_model(model, batches[0])).float()
            rel = float((after - before).norm() / before.norm().clamp(min=1e-12))
            if not math.isfinite(rel) or rel > check_tol:
                raise UserError(f"smoothing changed the fp32 output by {rel:.2e} (relative): a smoothed norm feeds more than "
                                "the linear layers after it; pass layers= to smooth only the norm → linear pairs")
    model.train(was)
    if quantize:
        quantize_w8a8(model, layers, int_mm)
    return model


def search_alpha(model: nn.Module, calib_batches, evaluate: Callable[[nn.Module], float],
                 alphas: Sequence[float] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), **kwargs) -> tuple[float, dict[float, float]]:
    """Pick α minimising `evaluate(quantized copy)` (e.g. validation perplexity or output error, lower is better)
    over `alphas`; each trial runs on a deep copy. Returns (best α, {α: score}); `model` is not modified."""
    if not alphas:
        raise UserError("search_alpha needs at least one alpha")
    calib = list(calib_batches) if not isinstance(calib_batches, (torch.Tensor, Mapping)) else [calib_batches]
    scores: dict[float, float] = {}
    for a in alphas:
        trial = smoothquant(copy.deepcopy(model), calib, float(a), **kwargs)
        scores[float(a)] = float(evaluate(trial))
    finite = {a: v for a, v in scores.items() if math.isfinite(v)}
    if not finite:
        raise UserError(f"every alpha gave a non-finite validation score ({scores}): check the evaluate function and data")
    best = min(finite, key=finite.get)
    return best, scores


# ---------------------------------------------------------------------------------------------- KV cache
class KVCacheInt8(nn.Module):
    """Wraps a key/value projection: its output slices [start, end) are quantized to int8 per token and per
    head (symmetric, dynamic), simulating an int8 KV cache. Other outputs (a fused query) pass unchanged."""

    def __init__(self, inner: nn.Module, n_heads: int, slices: Sequence[tuple[int, int]]):
        super().__init__()
        self.inner, self.n_heads, self.slices = inner, int(n_heads), [tuple(map(int, s)) for s in slices]
        for a, b in self.slices:
            if b <= a or (b - a) % self.n_heads:
                raise UserError(f"KV slice [{a}, {b}) does not split into {self.n_heads} heads")

    def forward(self, *args, **kwargs):
        y = self.inner(*args, **kwargs)
        parts, last = [], 0
        for a, b in self.slices:
            parts.append(y[..., last:a])
            seg = y[..., a:b]
            heads = seg.reshape(*seg.shape[:-1], self.n_heads, (b - a) // self.n_heads)
            q, s = quantize_per_token(heads)
            parts.append((q * s).reshape(seg.shape).to(y.dtype))
            last = b
        parts.append(y[..., last:])
        return torch.cat(parts, dim=-1)


def _out_features(mod: nn.Module) -> int | None:
    """Output features of a linear-like or already-quantized projection (W8A8Linear, WeightOnlyLinear), else None."""
    if is_linear_like(mod):
        return int(weight_matrix(mod).shape[0])
    out = getattr(mod, "out_features", None)
    return int(out) if isinstance(out, int) else None


def kv_cache_int8(model: nn.Module, n_heads: int, layers: Mapping[str, str] | None = None) -> nn.Module:
    """Wrap key/value projections with KVCacheInt8, in place. `layers` {name: "kv" | "fused_qkv"}: "kv" quantizes
    the whole output (separate k_proj / v_proj), "fused_qkv" its last two thirds (GPT-2's c_attn: [q | k | v]).
    Default: layers named *k_proj / *v_proj, and *c_attn (fused)."""
    if isinstance(n_heads, bool) or not isinstance(n_heads, int) or n_heads < 1:
        raise UserError(f"n_heads={n_heads!r} must be a positive integer (the model's attention heads)")
    every = dict(model.named_modules())
    if layers is None:
        layers = {}
        for name, mod in every.items():
            if _out_features(mod) is None:
                continue
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("k_proj", "v_proj", "key", "value"):
                layers[name] = "kv"
            elif leaf in ("c_attn", "qkv_proj", "query_key_value", "Wqkv"):
                layers[name] = "fused_qkv"
        if not layers:
            raise UserError("no key/value projections found (k_proj, v_proj, c_attn, ...): pass layers={name: 'kv'|'fused_qkv'}")
    for name, kind in layers.items():
        if name not in every:
            raise UserError(f"no layer named '{name}' for the int8 KV cache")
        out = _out_features(every[name])
        if out is None:
            raise UserError(f"'{name}' ({type(every[name]).__name__}) is not a linear projection")
        if kind == "kv":
            slices = [(0, out)]
        elif kind == "fused_qkv":
            if out % 3:
                raise UserError(f"'{name}' has {out} outputs, not a fused [q | k | v] projection (a multiple of 3)")
            e = out // 3
            slices = [(e, 2 * e), (2 * e, out)]  # k and v separately, so heads never straddle them
        else:
            raise UserError(f"KV layer kind {kind!r}: use 'kv' or 'fused_qkv'")
        set_module(model, name, KVCacheInt8(every[name], n_heads, slices))
    return model
