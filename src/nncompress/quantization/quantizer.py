"""Uniform quantizer math as pure functions (Jacob et al. 2018, "Quantization and Training of Neural
Networks for Efficient Integer-Arithmetic-Only Inference"; Krishnamoorthi 2018 whitepaper).

A real value r maps to an integer q and back through a scale s > 0 and a zero point z:

    q = clamp(round(r / s) + z, q_min, q_max)        r̂ = s · (q − z)

Integer ranges for b bits: signed [−2^(b−1), 2^(b−1) − 1], unsigned [0, 2^b − 1]; `narrow` drops the
most negative code so a symmetric range is exactly ±(2^(b−1) − 1) (what int8 weight kernels expect).
Per-channel quantization gives each slice along `axis` its own (s, z).
"""
from __future__ import annotations

import torch

from nncompress.core.errors import UserError

MIN_BITS, MAX_BITS = 1, 16


def check_bits(bits: int, where: str = "bits") -> int:
    """Validate a bit width (1..16), raising a one-line UserError otherwise."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise UserError(f"{where}={bits!r} is not a supported bit width: use an integer from {MIN_BITS} to {MAX_BITS}")
    return bits


def qrange(bits: int, signed: bool, narrow: bool = False) -> tuple[int, int]:
    """Integer code range (q_min, q_max) for `bits`; e.g. 8 signed → (−128, 127), 8 unsigned → (0, 255)."""
    check_bits(bits)
    if signed:
        if bits == 1:  # one signed bit: the two codes {−1, +1} are handled by `binarize`, here {−1, 0}
            return (-1, 0)
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        return (lo + 1 if narrow else lo, hi)
    return (0, 2**bits - 1)


def _as_tensor(v, ref: torch.Tensor | None = None) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=torch.float32)
    return t.to(ref.device) if ref is not None else t


def compute_qparams(min_val, max_val, qmin: int, qmax: int, symmetric: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point that map the real range [min_val, max_val] onto [qmin, qmax].

    Affine:    the range is widened to contain 0 (so 0 is exact: padding, ReLU), then
               s = (max − min) / (q_max − q_min),  z = q_min − round(min / s)   (clamped to the range).
    Symmetric: s = max(|min|, |max|) / ((q_max − q_min) / 2),  z = 0 for a signed range, else the midpoint.
    Example: [−1, 2] to 8-bit unsigned: s = 3/255, z = 0 − round(−85) = 85.
    Works elementwise, so tensors of per-channel minima and maxima give per-channel (s, z).
    """
    lo = torch.clamp(_as_tensor(min_val), max=0.0)
    hi = torch.clamp(_as_tensor(max_val), min=0.0)
    eps = torch.finfo(torch.float32).tiny * 2**23  # keeps s > 0 for an all-zero range
    if symmetric:
        amax = torch.maximum(-lo, hi)
        scale = torch.clamp(amax / ((qmax - qmin) / 2), min=eps)
        zp = torch.full_like(scale, 0.0 if qmin < 0 else float((qmin + qmax + 1) // 2))
    else:
        scale = torch.clamp((hi - lo) / (qmax - qmin), min=eps)
        zp = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax)
    return scale, zp.to(torch.int32)


def _bcast(p: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """Reshape per-channel parameters [C] to broadcast along `axis` of x; scalars pass through."""
    p = torch.as_tensor(p, device=x.device)
    if axis is None or p.dim() == 0:
        return p
    shape = [1] * x.dim()
    shape[axis] = -1
    return p.reshape(shape)


def round_stochastic(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """floor(x + u), u ~ U[0, 1): unbiased, E[round(x)] = x (Gupta et al. 2015, "Deep Learning with Limited Numerical Precision")."""
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return torch.floor(x + u)


def quantize(x: torch.Tensor, scale, zero_point, qmin: int, qmax: int, axis: int | None = None,
             rounding: str = "nearest", generator: torch.Generator | None = None) -> torch.Tensor:
    """q = clamp(round(x / s) + z, q_min, q_max) as int32. `rounding`: "nearest" (ties to even) or "stochastic"."""
    s = _bcast(scale, x, axis).to(x.dtype)
    z = _bcast(zero_point, x, axis).to(x.dtype)
    if rounding == "nearest":
        r = torch.round(x / s)
    elif rounding == "stochastic":
        r = round_stochastic(x / s, generator)
    else:
        raise UserError(f"unknown rounding '{rounding}': use 'nearest' or 'stochastic'")
    return torch.clamp(r + z, qmin, qmax).to(torch.int32)


def dequantize(q: torch.Tensor, scale, zero_point, axis: int | None = None) -> torch.Tensor:
    """r̂ = s · (q − z)."""
    s = _bcast(scale, q, axis).to(torch.float32)
    z = _bcast(zero_point, q, axis).to(torch.float32)
    return s * (q.to(torch.float32) - z)


def fake_quantize(x: torch.Tensor, scale, zero_point, qmin: int, qmax: int, axis: int | None = None,
                  rounding: str = "nearest", generator: torch.Generator | None = None) -> torch.Tensor:
    """dequantize(quantize(x)): the float value an integer kernel would see (no gradient; see qat.py for STE)."""
    return dequantize(quantize(x, scale, zero_point, qmin, qmax, axis, rounding, generator), scale, zero_point, axis).to(x.dtype)


def minmax_qparams(x: torch.Tensor, bits: int = 8, signed: bool = True, symmetric: bool = False,
                   narrow: bool = False, axis: int | None = None) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(s, z, q_min, q_max) from the tensor's own range, per tensor or per channel along `axis`."""
    qmin, qmax = qrange(bits, signed, narrow)
    if axis is None:
        lo, hi = x.min(), x.max()
    else:
        flat = x.detach().transpose(0, axis).reshape(x.shape[axis], -1)
        lo, hi = flat.min(1).values, flat.max(1).values
    s, z = compute_qparams(lo.detach().cpu(), hi.detach().cpu(), qmin, qmax, symmetric)
    return s, z, qmin, qmax


def quantization_mse(x: torch.Tensor, bits: int = 8, signed: bool = True, symmetric: bool = False, axis: int | None = None) -> float:
    """Mean squared error of min-max fake quantization; per channel can only be lower or equal."""
    s, z, qmin, qmax = minmax_qparams(x, bits, signed, symmetric, axis=axis)
    return float(((fake_quantize(x, s, z, qmin, qmax, axis) - x) ** 2).mean())


def binarize(w: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """1 bit: α · sign(w) with α = mean |w| (per channel along `axis`), the L2-optimal scale
    (Rastegari et al. 2016, XNOR-Net). sign(0) is taken as +1 so every weight has one of two codes."""
    sign = torch.where(w >= 0, 1.0, -1.0).to(w.dtype)
    if axis is None:
        alpha = w.abs().mean()
    else:
        alpha = _bcast(w.abs().transpose(0, axis).reshape(w.shape[axis], -1).mean(1), w, axis)
    return alpha * sign


def ternarize(w: torch.Tensor, threshold_ratio: float = 0.7) -> torch.Tensor:
    """Ternary {−α, 0, +α} (Li & Liu 2016, Ternary Weight Networks): threshold Δ = 0.7 · mean |w|,
    α = mean of |w| over the weights with |w| > Δ."""
    delta = threshold_ratio * w.abs().mean()
    keep = w.abs() > delta
    alpha = w.abs()[keep].mean() if keep.any() else w.new_tensor(0.0)
    return alpha * torch.sign(w) * keep
