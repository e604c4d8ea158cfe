"""Accumulator overflow: how wide must the integer accumulator be?

A dot product of K = c·k² terms (c input channels per group, k×k kernel) between n_w-bit weights and
n_a-bit activations needs, in the worst case,

    bits = n_w + n_a + ⌈log2 K⌉          (= 2n + ⌈log2(c·k²)⌉ for n-bit operands)

e.g. 8-bit LeNet-5 conv2 (c = 20, k = 5): 16 + ⌈log2 500⌉ = 25 bits, so int32 is safe and int16 is not.
`simulate_accumulator` runs a layer with a narrow accumulator (wrap-around or saturation, or x86 AVX2's
int16 pair sums) to show the error that a too-narrow choice produces on real data.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from nncompress.core.errors import UserError
from nncompress.core.layers import compressible_layers
from nncompress.quantization.quantizer import minmax_qparams, quantize

ACC_MODES = ("wrap", "saturate", "pairs16")


def accumulator_bits(weight_bits: int, act_bits: int, fan_in: int) -> int:
    """Worst-case accumulator width: n_w + n_a + ⌈log2 K⌉ bits for K products."""
    if fan_in < 1:
        raise UserError(f"fan_in={fan_in} must be at least 1")
    return weight_bits + act_bits + math.ceil(math.log2(fan_in))


def fan_in(layer: nn.Module) -> int:
    """Products summed per output: in_features, or (in_channels / groups) · ∏ kernel_size."""
    if isinstance(layer, nn.Linear):
        return layer.in_features
    if isinstance(layer, nn.modules.conv._ConvNd):
        return layer.in_channels // layer.groups * math.prod(layer.kernel_size)
    raise UserError(f"no fan-in for {type(layer).__name__}: only Linear and Conv layers accumulate products")


def accumulator_report(model: nn.Module, weight_bits: int = 8, act_bits: int = 8, acc_bits: int = 32,
                       layer_bits: dict[str, int] | None = None) -> list[dict]:
    """Per layer: fan-in, the accumulator width it needs, and whether `acc_bits` suffices (warns if not)."""
    rows = []
    for name, layer in compressible_layers(model).items():
        wb = (layer_bits or {}).get(name, weight_bits)
        k = fan_in(layer)
        need = accumulator_bits(wb, act_bits, k)
        rows.append({"layer": name, "fan_in": k, "weight_bits": wb, "act_bits": act_bits, "needed_bits": need,
                     "acc_bits": acc_bits, "fits": need <= acc_bits})
        if need > acc_bits:
            warnings.warn(f"layer '{name}': a {acc_bits}-bit accumulator can overflow; {wb}-bit × {act_bits}-bit over "
                          f"{k} products needs {need} bits", stacklevel=2)
    return rows


def integer_matmul(x_codes: torch.Tensor, w_codes: torch.Tensor, acc_bits: int = 32, mode: str = "wrap") -> torch.Tensor:
    """Σ_k x[n, k] · w[o, k] over integer codes with an `acc_bits` accumulator: [N, K] × [O, K] → [N, O].

    wrap: two's-complement wrap-around of the exact sum (what plain int adds do);
    saturate: clamp after every addition, in order k = 0, 1, …;
    pairs16: adjacent products summed in int16 with saturation, then accumulated exactly (x86 AVX2
             vpmaddubsw + vpmaddwd, how fbgemm runs u8·s8 without VNNI)."""
    if mode not in ACC_MODES:
        raise UserError(f"unknown accumulator mode '{mode}': use one of {', '.join(ACC_MODES)}")
    x, w = x_codes.to(torch.int64), w_codes.to(torch.int64)
    lo, hi = -(2 ** (acc_bits - 1)), 2 ** (acc_bits - 1) - 1
    if mode == "wrap":
        exact = x @ w.T
        return exact if acc_bits >= 63 else (exact - lo) % 2**acc_bits + lo
    if mode == "pairs16":
        k = x.shape[1] + x.shape[1] % 2
        x, w = F.pad(x, (0, k - x.shape[1])), F.pad(w, (0, k - w.shape[1]))
        prods = x[:, None, :] * w[None, :, :]  # [N, O, K]
        pairs = (prods[..., 0::2] + prods[..., 1::2]).clamp(-(2**15), 2**15 - 1)
        return pairs.sum(-1)
    acc = torch.zeros(x.shape[0], w.shape[0], dtype=torch.int64)
    for i in range(x.shape[1]):
        acc = (acc + x[:, i : i + 1] * w[:, i][None, :]).clamp(lo, hi)
    return acc


def simulate_accumulator(layer: nn.Module, x: torch.Tensor, weight_bits: int = 8, act_bits: int = 8, acc_bits: int = 16,
                         mode: str = "wrap") -> dict[str, float]:
    """Run `layer` on `x` in integers with a wide (int64) and a narrow accumulator; report the error the narrow
    one adds, in the layer's output units, and how often it overflowed. Bias is left out (added after)."""
    if isinstance(layer, nn.Linear):
        cols = x.flatten(1)
        w = layer.weight.detach()
    elif isinstance(layer, nn.Conv2d):
        cols = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride).transpose(1, 2).reshape(-1, fan_in(layer))
        if layer.groups != 1:
            raise UserError("simulate_accumulator supports grouped convolutions only through accumulator_report")
        w = layer.weight.detach().flatten(1)
    else:
        raise UserError(f"simulate_accumulator supports Linear and Conv2d, not {type(layer).__name__}")
    signed = bool(cols.min() < 0)  # ReLU outputs use unsigned codes with zero point 0
    sx, zx, qmin, qmax = minmax_qparams(cols, act_bits, signed=signed, symmetric=signed)
    sw, zw, wmin, wmax = minmax_qparams(w, weight_bits, signed=True, symmetric=True, narrow=True, axis=0)
    xq = quantize(cols, sx, zx, qmin, qmax)
    wq = quantize(w, sw, zw, wmin, wmax, axis=0)
    exact = integer_matmul(xq, wq, 64, "wrap")
    narrow = integer_matmul(xq, wq, acc_bits, mode)
    to_real = float(sx) * sw.reshape(1, -1)
    err = ((narrow - exact).double() * to_real).abs()
    ref = (exact.double() * to_real).abs().max()
    return {"acc_bits": acc_bits, "mode": mode, "needed_bits": accumulator_bits(weight_bits, act_bits, fan_in(layer)),
            "max_abs_error": float(err.max()), "relative_error": float(err.max() / ref) if ref > 0 else 0.0,
            "overflow_fraction": float((narrow != exact).double().mean()),
            "max_abs_accumulator": int(exact.abs().max())}
