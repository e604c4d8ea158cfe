"""Quantized eager modules: integer codes, scales and zero points as registered buffers, real int8 kernels.

These are what the module-swap quantizer (`swap.quantize_`) puts in place of nn.Linear / nn.Conv1d / nn.Conv2d /
nn.Embedding, and what `backends.to_int8_kernels` lowers a simulated fx graph onto. No graph is needed and
no torch.ao module is used: everything a deployed layer holds is in `state_dict()` (so it saves to safetensors
and reloads bit-identically), and the matrix products run on `torch._int_mm` (int8 × int8 → int32; oneDNN's
VNNI kernels on x86; measured 2.8× faster than the fp32 matmul at 4096×384×1536 on one thread here).

Arithmetic (Jacob et al. 2018, eq. 4–7). Weights are symmetric signed codes q_w with scale s_w (per output
channel, per tensor, or per group of input columns); an activation x is quantized to codes q_x with (s_x, z_x):

    y_o = s_x · s_w,o · Σ_k (q_x,k − z_x) · q_w,o,k + b_o
        = s_x · s_w,o · (Σ_k q'_x,k · q_w,o,k − z'_x · Σ_k q_w,o,k) + b_o,        q' = q − c,  z' = z − c

where c shifts the activation codes into int8 (c = q_min + 128, e.g. 128 for uint8 codes). The first sum is
one `_int_mm`; the second is a per-channel constant (the weight codes' row sums) computed once. Every term is
an exact integer, so the kernel differs from the fake-quantized float simulation (`simulate`) only by the
float rounding of the simulation's own sum — checked in tests to stay within one output step.

Activation modes: "dynamic" — symmetric int8 codes from each input's own range at run time (per token for
Linear: one scale per row of the [tokens, features] matrix, as torchao's Int8DynamicActivationInt8Weight; per
sample for convolutions); "dynamic_tensor" — affine uint8 codes from the whole input's min/max at run time (what
the fx graph's dynamic mode simulates, and ONNX's DynamicQuantizeLinear computes); "static" — affine codes with
(s_x, z_x) fixed by calibration (observers attached by
hooks, see `swap`); "none" — weight-only: the weight is dequantized and the product runs in float (the storage
saving; int4 codes are packed two per byte).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nncompress.core.errors import UserError
from nncompress.quantization.quantizer import compute_qparams, fake_quantize, qrange
from nncompress.quantization.weight_only import pack_int4, unpack_int4

ACT_MODES = ("dynamic", "dynamic_tensor", "static", "none")
_DYN_QMAX = 127  # dynamic activations: symmetric narrow int8 codes ±127
_EPS = torch.finfo(torch.float32).tiny * 2**23  # compute_qparams' floor on a scale


# ---------------------------------------------------------------------------------------------------- int4 packing
def pack_signed_int4(codes: torch.Tensor) -> torch.Tensor:
    """Signed 4-bit codes in [−8, 7] along the last dimension → uint8, two per byte, stored as code + 8: the byte
    layout of `weight_only.pack_int4` (even index in the low nibble, an odd length padded) with zero point 8."""
    if codes.numel() and (int(codes.min()) < -8 or int(codes.max()) > 7):
        raise UserError(f"int4 packing needs codes in [-8, 7], got [{int(codes.min())}, {int(codes.max())}]")
    return pack_int4(codes.to(torch.int16) + 8)


def unpack_signed_int4(packed: torch.Tensor, last_dim: int) -> torch.Tensor:
    """Inverse of `pack_signed_int4`: int8 codes with `last_dim` entries along the last dimension."""
    return (unpack_int4(packed, last_dim).to(torch.int16) - 8).to(torch.int8)


# ---------------------------------------------------------------------------------------------------- weights
class QuantizedWeight(nn.Module):
    """A weight as symmetric signed integer codes and scales (buffers), w ≈ s · q, q ∈ [−(2^(b−1) − 1), 2^(b−1) − 1].

    granularity: "channel" (one scale per output row), "tensor" (one scale), or "group" (one scale per
    `group_size` consecutive input columns of each row, as GPTQ/AWQ-style int4 storage). Codes are stored as
    int8 of the weight's shape flattened to [out, K]; 4-bit codes (and below) are packed two per byte.
    One instance may be held by two modules (a tied embedding and output layer): both then read the same buffers.
    """

    def __init__(self, shape: tuple[int, ...], bits: int, granularity: str = "channel", group_size: int | None = None):
        super().__init__()
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
            raise UserError(f"weight bits={bits!r}: quantized modules store 1..8-bit codes (int8 containers)")
        if granularity not in ("channel", "tensor", "group"):
            raise UserError(f"unknown weight granularity '{granularity}': use channel, tensor or group")
        self.shape, self.bits, self.granularity = tuple(int(s) for s in shape), int(bits), granularity
        out, k = self.shape[0], math.prod(self.shape[1:])
        if granularity == "group":
            if not group_size or group_size < 1 or k % group_size:
                raise UserError(f"group_size={group_size} must be a positive divisor of the {k} input columns of a {list(shape)} weight")
            n_scales = (out, k // group_size)
        else:
            group_size = None
            n_scales = (out,) if granularity == "channel" else (1,)
        self.group_size = group_size
        self.qmin, self.qmax = qrange(self.bits, signed=True, narrow=True)
        code_shape = (out, (k + 1) // 2) if self.packed else (out, k)
        self.register_buffer("codes", torch.zeros(code_shape, dtype=torch.uint8 if self.packed else torch.int8))
        self.register_buffer("scale", torch.ones(n_scales))

    @property
    def packed(self) -> bool:
        return self.bits <= 4

    @property
    def in_columns(self) -> int:
        return math.prod(self.shape[1:])

    @classmethod
    def from_float(cls, w: torch.Tensor, bits: int, granularity: str = "channel", group_size: int | None = None) -> "QuantizedWeight":
        qw = cls(tuple(w.shape), bits, granularity, group_size)
        qw.set_from_float(w)
        return qw

    @torch.no_grad()
    def set_from_float(self, w: torch.Tensor) -> None:
        """Round-to-nearest codes with min-max (symmetric) scales: s = max|w| / (2^(b−1) − 1) per slice."""
        w2 = w.detach().float().reshape(self.shape[0], -1)
        if self.granularity == "group":
            g = w2.reshape(self.shape[0], -1, self.group_size)
            amax = g.abs().amax(-1)
        elif self.granularity == "channel":
            amax = w2.abs().amax(1)
        else:
            amax = w2.abs().amax().reshape(1)
        scale, _ = compute_qparams(-amax.cpu(), amax.cpu(), self.qmin, self.qmax, symmetric=True)
        scale = scale.to(w2.device).float()
        w3 = w2.reshape(self.shape[0], -1, self._cols_per_scale)
        codes = torch.clamp(torch.round(w3 / scale.reshape(scale.shape[0], -1, 1)), self.qmin, self.qmax)
        codes = codes.reshape(self.shape[0], -1).to(torch.int8)
        self.codes = pack_signed_int4(codes) if self.packed else codes
        self.scale = scale

    @property
    def _cols_per_scale(self) -> int:
        return self.group_size if self.granularity == "group" else self.in_columns

    def int_codes(self) -> torch.Tensor:
        """[out, K] int8 codes (unpacked)."""
        return unpack_signed_int4(self.codes, self.in_columns) if self.packed else self.codes

    def channel_scale(self) -> torch.Tensor:
        """[out] scales for the integer kernels (per-channel or per-tensor weights only)."""
        if self.granularity == "group":
            raise UserError("group-wise weights have no per-channel scale: integer kernels need channel or tensor granularity")
        return self.scale.expand(self.shape[0])

    def dequantize(self) -> torch.Tensor:
        """s · q in the weight's original shape (float32)."""
        q = self.int_codes().float()
        s = self.scale.reshape(self.scale.shape[0], -1, 1)
        return (q.reshape(self.shape[0], -1, self._cols_per_scale) * s).reshape(self.shape)

    def storage_bytes(self) -> int:
        return self.codes.numel() * self.codes.element_size() + self.scale.numel() * 4

    def spec(self) -> dict:
        return {"shape": list(self.shape), "bits": self.bits, "granularity": self.granularity, "group_size": self.group_size}

    def extra_repr(self) -> str:
        g = f", group_size={self.group_size}" if self.group_size else ""
        return f"shape={list(self.shape)}, bits={self.bits}, granularity={self.granularity}{g}"


# ---------------------------------------------------------------------------------------------------- kernels
def int8_matmul(q_x: torch.Tensor, q_w: torch.Tensor) -> torch.Tensor:
    """[M, K] int8 × [N, K] int8 → [M, N] int32, exact (`torch._int_mm`). Where the kernel refuses the shapes
    (CUDA wants M > 16 and K, N multiples of 8) the product runs in float64 on the codes, still exact (< 2^53)."""
    if q_x.shape[0] == 0:
        return torch.zeros(0, q_w.shape[0], dtype=torch.int32, device=q_x.device)
    if q_x.device.type == "cpu":
        return torch._int_mm(q_x.contiguous(), q_w.t())
    try:
        return torch._int_mm(q_x.contiguous(), q_w.t())
    except RuntimeError:
        return (q_x.double() @ q_w.double().t()).round().to(torch.int32)


def dynamic_act_qparams(x2d: torch.Tensor) -> torch.Tensor:
    """Per-row symmetric scale max|x_row| / 127 (the smallest positive float32 scale for an all-zero row)."""
    amax = x2d.detach().abs().amax(1).float()
    return torch.clamp(amax / _DYN_QMAX, min=_EPS)  # = compute_qparams(−amax, amax, −127, 127, symmetric=True)


def quantize_rows(x2d: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.round(x2d / scale[:, None]), -_DYN_QMAX, _DYN_QMAX).to(torch.int8)


class _QuantizedLayer(nn.Module):
    """Shared state of QuantizedLinear / QuantizedConv: weight codes, float bias, activation mode and qparams."""

    def __init__(self, weight: QuantizedWeight, bias: torch.Tensor | None, act_mode: str, relu: bool = False,
                 act_qrange: tuple[int, int] = (0, 255)):
        super().__init__()
        if act_mode not in ACT_MODES:
            raise UserError(f"unknown activation mode '{act_mode}': use one of {', '.join(ACT_MODES)}")
        if act_mode != "none" and (weight.bits > 8 or weight.granularity == "group"):
            raise UserError(f"{act_mode} int8 kernels need per-channel or per-tensor weights of at most 8 bits "
                            f"(got {weight.bits}-bit {weight.granularity}); use weight-only for group-wise weights")
        self.weight_q, self.act_mode, self.relu = weight, act_mode, bool(relu)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.act_qmin, self.act_qmax = int(act_qrange[0]), int(act_qrange[1])
        if act_mode in ("static", "dynamic_tensor") and self.act_qmax - self.act_qmin > 255:
            raise UserError(f"int8 kernels need activations of at most 8 bits, got codes [{self.act_qmin}, {self.act_qmax}]")
        self.register_buffer("act_scale", torch.ones(()) if act_mode == "static" else None)
        self.register_buffer("act_zero_point", torch.zeros((), dtype=torch.int32) if act_mode == "static" else None)

    def set_act_qparams(self, scale, zero_point) -> None:
        self.act_scale = torch.as_tensor(scale, dtype=torch.float32).reshape(()).clone().to(self.weight_q.scale.device)
        self.act_zero_point = torch.as_tensor(zero_point, dtype=torch.int32).reshape(()).clone().to(self.weight_q.scale.device)

    @property
    def _shift(self) -> int:
        """c: subtracting it moves the activation codes [q_min, q_max] into int8."""
        return self.act_qmin + 128

    def _col_sums(self) -> torch.Tensor:
        """Σ_k q_w,o,k per output channel, cached until the codes change (load_state_dict, .to())."""
        codes = self.weight_q.codes
        key = (codes.data_ptr(), codes._version, str(codes.device))
        if getattr(self, "_col_sums_key", None) != key:
            self._col_sums_cache = self.weight_q.int_codes().sum(1, dtype=torch.int32)
            self._col_sums_key = key
        return self._col_sums_cache

    def _act_qparams(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(s_x, z_x) of an affine activation: calibrated (static) or this input's own min/max (dynamic_tensor)."""
        if self.act_mode == "static":
            return self.act_scale, self.act_zero_point
        lo, hi = x.detach().min().float().cpu(), x.detach().max().float().cpu()
        s, z = compute_qparams(lo, hi, self.act_qmin, self.act_qmax)
        return s.to(x.device), z.to(x.device)

    def _static_codes(self, x: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Affine codes of x (float tensor of any shape), shifted into int8."""
        q = torch.clamp(torch.round(x / s) + z, self.act_qmin, self.act_qmax)
        return (q - self._shift).to(torch.int8)

    def _finish(self, y: torch.Tensor) -> torch.Tensor:
        return torch.relu(y) if self.relu else y

    def _sim_input(self, x: torch.Tensor, dyn_axis_rows: bool) -> torch.Tensor:
        """The fake-quantized float input the simulation multiplies (the reference for the kernels)."""
        if self.act_mode in ("static", "dynamic_tensor"):
            s, z = self._act_qparams(x)
            return fake_quantize(x, s, z, self.act_qmin, self.act_qmax)
        if self.act_mode == "dynamic":
            rows = x.reshape(-1, x.shape[-1]) if dyn_axis_rows else x.reshape(x.shape[0], -1)
            s = dynamic_act_qparams(rows)
            return fake_quantize(rows, s, torch.zeros_like(s, dtype=torch.int32), -_DYN_QMAX, _DYN_QMAX, axis=0).reshape(x.shape)
        return x

    def extra_repr(self) -> str:
        return f"act_mode={self.act_mode}, relu={self.relu}"

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized float weight s · q (read-only, computed on access): for code that inspects a layer's
        `weight` — its dtype, device or shape (Hugging Face ViT casts its pixels to `projection.weight.dtype`) —
        and for parameter counts. Stored are the codes and scales of `weight_q`."""
        return self.weight_q.dequantize()


class QuantizedLinear(_QuantizedLayer):
    """nn.Linear on int8 codes. Dynamic: per-token symmetric activations; static: calibrated affine
    activations; none: weight-only (dequantize, float GEMM)."""

    def __init__(self, in_features: int, out_features: int, weight: QuantizedWeight, bias: torch.Tensor | None,
                 act_mode: str = "dynamic", relu: bool = False, act_qrange: tuple[int, int] = (0, 255)):
        super().__init__(weight, bias, act_mode, relu, act_qrange)
        self.in_features, self.out_features = int(in_features), int(out_features)

    @classmethod
    def from_float(cls, layer: nn.Linear, act_mode: str, bits: int = 8, granularity: str = "channel",
                   group_size: int | None = None, weight: QuantizedWeight | None = None, **kw) -> "QuantizedLinear":
        w = weight if weight is not None else QuantizedWeight.from_float(layer.weight, bits, granularity, group_size)
        return cls(layer.in_features, layer.out_features, w, layer.bias, act_mode, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_mode == "none":
            return self._finish(F.linear(x, self.weight_q.dequantize().to(x.dtype), self.bias))
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).float()
        w_codes, s_w = self.weight_q.int_codes(), self.weight_q.channel_scale()
        if self.act_mode == "dynamic":
            s_x = dynamic_act_qparams(x2)
            y = int8_matmul(quantize_rows(x2, s_x), w_codes).float().mul_(s_x[:, None]).mul_(s_w)
        else:
            s_x, z_x = self._act_qparams(x2)
            acc = int8_matmul(self._static_codes(x2, s_x, z_x), w_codes)
            z_shift = int(z_x) - self._shift
            if z_shift:
                acc.sub_(self._col_sums() * z_shift)
            y = acc.float().mul_(s_x * s_w)
        if self.bias is not None:
            y.add_(self.bias)
        return self._finish(y.reshape(*lead, self.out_features).to(x.dtype))

    @torch.no_grad()
    def simulate(self, x: torch.Tensor) -> torch.Tensor:
        """The fake-quantized float reference: F.linear(Q(x), s_w · q_w) + b."""
        return self._finish(F.linear(self._sim_input(x.float(), True), self.weight_q.dequantize(), self.bias))


class QuantizedConv(_QuantizedLayer):
    """nn.Conv1d / nn.Conv2d on int8 codes: the input codes, padded with the zero point's code, are cut into
    patches and multiplied by the weight codes with `_int_mm` (groups = 1); grouped and depthwise convolutions
    run the convolution on the codes in float64, which is exact for integer sums below 2^53. On one thread the
    small convolutions of LeNet-5-sized nets stay slower than oneDNN's fp32 convolution (no fused int8 conv
    kernel here): ONNX Runtime's QLinearConv (`onnx_qdq`) is the fast engine for convolutional nets."""

    def __init__(self, dim: int, in_channels: int, out_channels: int, kernel_size, stride, padding, dilation, groups: int,
                 weight: QuantizedWeight, bias: torch.Tensor | None, act_mode: str = "static", relu: bool = False,
                 act_qrange: tuple[int, int] = (0, 255)):
        super().__init__(weight, bias, act_mode, relu, act_qrange)
        if dim not in (1, 2):
            raise UserError(f"quantized convolutions are 1-d or 2-d, got {dim}-d")
        tup = lambda v: tuple(int(a) for a in v) if isinstance(v, (tuple, list)) else (int(v),) * dim  # noqa: E731
        self.dim, self.in_channels, self.out_channels, self.groups = dim, int(in_channels), int(out_channels), int(groups)
        self.kernel_size, self.stride, self.padding, self.dilation = tup(kernel_size), tup(stride), tup(padding), tup(dilation)

    @classmethod
    def from_float(cls, layer: nn.Module, act_mode: str, bits: int = 8, granularity: str = "channel",
                   group_size: int | None = None, weight: QuantizedWeight | None = None, name: str = "", **kw) -> "QuantizedConv":
        where = f"layer '{name}' ({type(layer).__name__})" if name else type(layer).__name__
        if not isinstance(layer, (nn.Conv1d, nn.Conv2d)):
            raise UserError(f"{where}: only Conv1d and Conv2d have quantized modules")
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise UserError(f"{where}: padding_mode='{layer.padding_mode}' / padding={layer.padding!r} is not supported by the "
                            "int8 convolution (zero padding with explicit sizes only); skip this layer")
        w = weight if weight is not None else QuantizedWeight.from_float(layer.weight, bits, granularity, group_size)
        dim = 1 if isinstance(layer, nn.Conv1d) else 2
        return cls(dim, layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                   layer.groups, w, layer.bias, act_mode, **kw)

    def _conv(self, x: torch.Tensor, w: torch.Tensor, padding) -> torch.Tensor:
        conv = F.conv1d if self.dim == 1 else F.conv2d
        return conv(x, w, None, self.stride, padding, self.dilation, self.groups)

    def _pad(self, codes: torch.Tensor, value: int) -> torch.Tensor:
        pads = [p for p in reversed(self.padding) for _ in (0, 1)]
        return F.pad(codes, pads, value=value) if any(pads) else codes

    def _int_conv(self, codes: torch.Tensor) -> torch.Tensor:
        """Exact integer convolution of padded int8 codes [N, C, *in] with the weight codes → int32 [N, O, *out].

        groups = 1, dilation 1: patches are cut from the channels-last int8 codes with `Tensor.unfold` (views) and
        copied once, in (kh, kw, C) order so runs of C bytes move together, into the [N·H'·W', kh·kw·C] int8 matrix
        `_int_mm` takes (the weight codes permuted to match, cached). Measured at batch 32, 1 thread: LeNet-5's conv2
        (20→50, 5×5) 0.74 ms vs fp32 oneDNN 2.2 ms; 16→32 3×3 at 14×14 0.75 vs 0.60; im2col on float-held codes
        (F.unfold has no int8 kernel) took 12–15 ms. Dilated: F.unfold on the codes held in float (exact).
        Grouped / depthwise: the convolution on the codes in float64 (exact below 2^53)."""
        w_codes = self.weight_q.int_codes()
        n = codes.shape[0]
        if self.groups != 1:
            w = w_codes.double().reshape(self.weight_q.shape)
            return self._conv(codes.double(), w, 0).round().to(torch.int32)
        x4 = codes if self.dim == 2 else codes.unsqueeze(2)
        k = self.kernel_size if self.dim == 2 else (1, *self.kernel_size)
        st = self.stride if self.dim == 2 else (1, *self.stride)
        di = self.dilation if self.dim == 2 else (1, *self.dilation)
        out_hw = [(x4.shape[2 + i] - di[i] * (k[i] - 1) - 1) // st[i] + 1 for i in range(2)]
        if di == (1, 1):
            xh = x4.permute(0, 2, 3, 1).contiguous()  # channels-last, so the patch copy below moves runs of C bytes
            patches = xh.unfold(1, k[0], st[0]).unfold(2, k[1], st[1]).permute(0, 1, 2, 4, 5, 3)  # [N, H', W', kh, kw, C] view
            cols = patches.reshape(-1, x4.shape[1] * k[0] * k[1])
            w_codes = self._codes_khkwc(w_codes, k)
        else:
            p = F.unfold(x4.float(), k, dilation=di, stride=st)  # [N, C·kh·kw, H'·W']
            cols = p.transpose(1, 2).reshape(-1, p.shape[1]).to(torch.int8)
        acc = int8_matmul(cols, w_codes).reshape(n, *out_hw, self.out_channels).permute(0, 3, 1, 2)
        return acc if self.dim == 2 else acc.squeeze(2)

    def _codes_khkwc(self, w_codes: torch.Tensor, k: tuple[int, int]) -> torch.Tensor:
        """Weight codes as [O, kh·kw·C] (the patch order above), cached until the codes change."""
        codes = self.weight_q.codes
        key = (codes.data_ptr(), codes._version, str(codes.device))
        if getattr(self, "_khkwc_key", None) != key:
            w4 = w_codes.reshape(self.out_channels, -1, k[0], k[1])
            self._khkwc_cache = w4.permute(0, 2, 3, 1).reshape(self.out_channels, -1).contiguous()
            self._khkwc_key = key
        return self._khkwc_cache

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bshape = [1, -1] + [1] * self.dim
        if self.act_mode == "none":
            w = self.weight_q.dequantize().to(x.dtype)
            y = self._conv(x, w, self.padding)
            return self._finish(y if self.bias is None else y + self.bias.reshape(bshape).to(x.dtype))
        xf = x.float()
        s_w = self.weight_q.channel_scale().reshape(bshape)
        if self.act_mode == "dynamic":
            s_x = dynamic_act_qparams(xf.reshape(xf.shape[0], -1))
            codes = quantize_rows(xf.reshape(xf.shape[0], -1), s_x).reshape(xf.shape)
            acc = self._int_conv(self._pad(codes, 0))
            y = acc.float() * (s_x.reshape([-1] + [1] * (self.dim + 1)) * s_w)
        else:
            s_x, z_x = self._act_qparams(xf)
            z_shift = int(z_x) - self._shift
            codes = self._static_codes(xf, s_x, z_x)
            acc = self._int_conv(self._pad(codes, z_shift))
            if z_shift:
                acc = acc - z_shift * self._col_sums().reshape(bshape)
            y = acc.float() * (s_x * s_w)
        if self.bias is not None:
            y = y + self.bias.reshape(bshape)
        return self._finish(y.to(x.dtype))

    @torch.no_grad()
    def simulate(self, x: torch.Tensor) -> torch.Tensor:
        """The fake-quantized float reference: conv(Q(x), s_w · q_w) + b (zero padding in the real domain)."""
        bshape = [1, -1] + [1] * self.dim
        y = self._conv(self._sim_input(x.float(), False), self.weight_q.dequantize(), self.padding)
        return self._finish(y if self.bias is None else y + self.bias.reshape(bshape))


class QuantizedEmbedding(nn.Module):
    """nn.Embedding with row-wise int8 or int4 weights (one scale per row, or per group of a row): a lookup
    gathers the codes of the asked rows and dequantizes only those."""

    def __init__(self, num_embeddings: int, embedding_dim: int, weight: QuantizedWeight, padding_idx: int | None = None):
        super().__init__()
        if weight.granularity == "tensor":
            raise UserError("embeddings are quantized row-wise (granularity channel or group), not per tensor")
        self.num_embeddings, self.embedding_dim, self.padding_idx = int(num_embeddings), int(embedding_dim), padding_idx
        self.weight_q = weight

    @classmethod
    def from_float(cls, emb: nn.Embedding, bits: int = 8, group_size: int | None = None, weight: QuantizedWeight | None = None,
                   name: str = "") -> "QuantizedEmbedding":
        if emb.max_norm is not None or emb.sparse:
            raise UserError(f"embedding '{name or type(emb).__name__}': max_norm / sparse embeddings are not supported; skip this layer")
        w = weight if weight is not None else QuantizedWeight.from_float(emb.weight, bits, "group" if group_size else "channel",
                                                                        group_size)
        return cls(emb.num_embeddings, emb.embedding_dim, w, emb.padding_idx)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        wq = self.weight_q
        flat = ids.reshape(-1)
        codes = wq.codes.index_select(0, flat)
        q = unpack_signed_int4(codes, self.embedding_dim) if wq.packed else codes
        s = wq.scale.index_select(0, flat) if wq.scale.shape[0] > 1 else wq.scale.expand(flat.shape[0])
        per = wq.group_size or self.embedding_dim
        rows = (q.float().reshape(flat.shape[0], -1, per) * s.reshape(flat.shape[0], -1, 1)).reshape(flat.shape[0], self.embedding_dim)
        return rows.reshape(*ids.shape, self.embedding_dim)

    def simulate(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight_q.dequantize(), self.padding_idx)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


QUANTIZED_MODULES = (QuantizedLinear, QuantizedConv, QuantizedEmbedding)
