"""Weight-only quantization of linear layers for LLMs: round-to-nearest (RTN) per channel or per group,
MSE-optimal clipping, packed int4 storage counted exactly in bytes, and real int4 CPU kernels.

Each row w (one output channel) is cut into groups of `group_size` consecutive input weights (per-channel:
one group of the whole row). Every group g gets a scale s_g and an integer zero point z_g (b bits):

    asymmetric:  lo = min(w_g, 0), hi = max(w_g, 0),  s = (hi − lo)/(2^b − 1),  z = round(−lo/s)
    symmetric:   s = max|w_g| / (2^(b−1) − 1),  z = 2^(b−1)      (codes 1 … 2^b − 1, zero exact)
    code q = clamp(round(w/s) + z, 0, 2^b − 1),    ŵ = s·(q − z)

Scales are stored in fp16 (codes are computed with the fp16-rounded scale, so what is stored is what is
used). Storage per (out × in) layer, exactly:  out·⌈in·b/8⌉ bytes of codes (4-bit: two codes per byte, the
lower nibble first — ONNX Runtime `MatMulNBits`' layout), 2 bytes per scale, and for asymmetric groups the
zero points packed at b bits (out·⌈G·b/8⌉ bytes); act-order GPTQ adds a group index per input column (int32).

MSE clipping (`mse_clip_ratios`) shrinks each group's range by a ratio r from a grid and keeps the r that
minimises ‖w_g − Q_r(w_g)‖_p (the `mse=True` search of the GPTQ reference code).

Published figure (GPTQ, Frantar et al. 2023, Table 3): LLaMA-7B 4-bit RTN perplexity 6.29 vs fp16 5.68 on
WikiText-2 — RTN is the baseline that GPTQ (6.09) and AWQ improve on.

Kernels: `matmul_nbits_model` builds a one-node ONNX graph with ONNX Runtime's `com.microsoft.MatMulNBits` from
the same packed bytes, and `WeightOnlyLinear(kernel="ort")` runs it inside a torch model (faster than fp32 at
batch 1 here, see benchmarks/weight_only_kernels.py). `kernel="int4"` runs PyTorch's CPU int4 matmul
(`aten._weight_int4pack_mm_for_cpu`, the kernel behind torchao's Int4CPULayout: ŵ = (q − 8)·s + m with
m = (8 − z)·s); on the project's CPU it is slower than fp32 (a reference path), so it is opt-in only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from nncompress.core.calibration_stats import calibration_layers, set_module, weight_matrix
from nncompress.core.errors import UserError

SUPPORTED_BITS = (2, 3, 4, 5, 6, 7, 8)


def check_weight_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in SUPPORTED_BITS:
        raise UserError(f"weight-only bits={bits!r} is not supported: use an integer from 2 to 8 (e.g. 8, 4 or 3)")
    return bits


def resolve_group_size(in_features: int, group_size: int | None) -> int:
    """The group length: `group_size`, or the whole row for per-channel (None, 0 or −1)."""
    if group_size in (None, 0, -1):
        return in_features
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise UserError(f"group_size={group_size!r} must be a positive integer (e.g. 32, 64, 128) or None for per-channel")
    if in_features % group_size:
        raise UserError(f"group_size={group_size} does not divide the layer's {in_features} input features: "
                        "choose a divisor (32, 64, 128 for LLM widths) or None for per-channel")
    return group_size


def _grouped(w: torch.Tensor, group_size: int) -> torch.Tensor:
    return w.reshape(w.shape[0], w.shape[1] // group_size, group_size)


def group_qparams(wg: torch.Tensor, bits: int, symmetric: bool, clip_ratio=1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (fp16-rounded, float32) and integer zero point for each group; `wg` is (..., group_size).

    `clip_ratio` (a number or a tensor shaped like wg[..., 0]) shrinks the range: [r·lo, r·hi]."""
    wg = wg.detach().float()
    r = torch.as_tensor(clip_ratio, dtype=torch.float32, device=wg.device)
    qmax = 2**bits - 1
    tiny = 1e-8
    if symmetric:
        amax = wg.abs().amax(-1) * r
        scale = (amax / (2 ** (bits - 1) - 1)).clamp(min=tiny)
        scale = scale.half().float().clamp(min=6e-8)
        zero = torch.full_like(scale, float(2 ** (bits - 1)))
    else:
        lo = wg.amin(-1).clamp(max=0) * r
        hi = wg.amax(-1).clamp(min=0) * r
        scale = ((hi - lo) / qmax).clamp(min=tiny)
        scale = scale.half().float().clamp(min=6e-8)
        zero = torch.clamp(torch.round(-lo / scale), 0, qmax)
    return scale, zero


def quantize_group(wg: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes of `wg` (..., n) with per-group (scale, zero) shaped (...,): clamp(round(w/s) + z, 0, 2^b − 1)."""
    return torch.clamp(torch.round(wg / scale.unsqueeze(-1)) + zero.unsqueeze(-1), 0, 2**bits - 1)


def fake_quantize_group(wg: torch.Tensor, bits: int, symmetric: bool, clip_ratio=1.0) -> torch.Tensor:
    """ŵ = s·(q − z) for each group of `wg` (..., group_size)."""
    scale, zero = group_qparams(wg, bits, symmetric, clip_ratio)
    q = quantize_group(wg.float(), scale, zero, bits)
    return (q - zero.unsqueeze(-1)) * scale.unsqueeze(-1)


def mse_clip_ratios(w: torch.Tensor, bits: int = 4, group_size: int | None = 128, symmetric: bool = False,
                    grid: int = 20, max_shrink: float = 0.5, norm: float = 2.0) -> torch.Tensor:
    """Per-group clip ratio r ∈ {1, 1 − max_shrink/grid, …, 1 − max_shrink} minimising Σ|w − Q_r(w)|^norm; (out, G)."""
    check_weight_bits(bits)
    if not 0 < max_shrink < 1 or grid < 1:
        raise UserError(f"clip search needs 0 < max_shrink < 1 and grid >= 1, got max_shrink={max_shrink}, grid={grid}")
    w = w.detach().float()
    gs = resolve_group_size(w.shape[1], group_size)
    wg = _grouped(w, gs)
    best = torch.full(wg.shape[:2], float("inf"), device=w.device)
    ratio = torch.ones(wg.shape[:2], device=w.device)
    for i in range(grid + 1):
        r = 1.0 - max_shrink * i / grid
        err = (fake_quantize_group(wg, bits, symmetric, r) - wg).abs().pow(norm).sum(-1)
        better = err < best
        best = torch.where(better, err, best)
        ratio = torch.where(better, torch.full_like(ratio, r), ratio)
    return ratio


# ---------------------------------------------------------------------------------------------- packing
def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte along the last axis, the even-index code in the lower nibble (an odd length is
    padded with one zero code). (…, n) integer codes in 0..15 → (…, ⌈n/2⌉) uint8."""
    c = codes.to(torch.int16)
    if c.numel() and (int(c.min()) < 0 or int(c.max()) > 15):
        raise UserError("pack_int4 needs codes in 0..15: quantize to 4 bits (unsigned codes with a zero point) first")
    if c.shape[-1] % 2:
        c = F.pad(c, (0, 1))
    return (c[..., 0::2] | (c[..., 1::2] << 4)).to(torch.uint8)


def unpack_int4(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of `pack_int4`: (…, ⌈n/2⌉) uint8 → (…, n) uint8 codes."""
    p = packed.to(torch.int16)
    out = torch.stack([p & 0xF, p >> 4], dim=-1).reshape(*p.shape[:-1], -1)
    return out[..., :n].to(torch.uint8)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """b-bit codes packed as a little-endian bit stream along the last axis: (…, n) → (…, ⌈n·b/8⌉) uint8.
    4 bits gives exactly `pack_int4`'s layout; 8 bits is a plain uint8 copy."""
    check_weight_bits(bits)
    if bits == 8:
        return codes.to(torch.uint8).clone()
    if bits == 4:
        return pack_int4(codes)
    c = codes.to(torch.int64)
    n = c.shape[-1]
    planes = (c.unsqueeze(-1) >> torch.arange(bits, device=c.device)) & 1        # (…, n, b), LSB first
    stream = planes.reshape(*c.shape[:-1], n * bits)
    stream = F.pad(stream, (0, (-stream.shape[-1]) % 8))
    weights = 1 << torch.arange(8, device=c.device)
    return (stream.reshape(*c.shape[:-1], -1, 8) * weights).sum(-1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of `pack_codes`: (…, ⌈n·b/8⌉) uint8 → (…, n) uint8 codes."""
    check_weight_bits(bits)
    if bits == 8:
        return packed[..., :n].clone()
    if bits == 4:
        return unpack_int4(packed, n)
    p = packed.to(torch.int64)
    stream = ((p.unsqueeze(-1) >> torch.arange(8, device=p.device)) & 1).reshape(*p.shape[:-1], -1)[..., : n * bits]
    planes = stream.reshape(*p.shape[:-1], n, bits)
    return (planes << torch.arange(bits, device=p.device)).sum(-1).to(torch.uint8)


def packed_bytes(rows: int, cols: int, bits: int) -> int:
    """Bytes of `rows` rows of `cols` b-bit codes, each row packed to a whole number of bytes."""
    return rows * math.ceil(cols * bits / 8)


# ---------------------------------------------------------------------------------------------- format
@dataclass
class GroupQuantizedWeight:
    """A quantized (out, in) weight: codes (uint8, unpacked), scales (fp16, (out, G)), zeros (uint8 (out, G),
    None = symmetric, implicit 2^(b−1)), and `g_idx` (int32 (in,), the group of each input column; None =
    column j in group j // group_size)."""

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None
    bits: int
    group_size: int
    g_idx: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)

    def column_groups(self) -> torch.Tensor:
        if self.g_idx is not None:
            return self.g_idx.long()
        return torch.arange(self.codes.shape[1], device=self.codes.device) // self.group_size

    def zero_points(self) -> torch.Tensor:
        if self.zeros is None:
            return torch.full(self.scales.shape, float(2 ** (self.bits - 1)), device=self.scales.device)
        return self.zeros.float()

    def dequantize(self) -> torch.Tensor:
        """ŵ_ij = s_{i,g(j)}·(q_ij − z_{i,g(j)}), float32 (out, in)."""
        s, z = self.scales.float(), self.zero_points()
        if self.g_idx is None:  # contiguous groups: broadcast over a (out, G, group) view, no gather
            out, cols = self.codes.shape
            q = self.codes.float().reshape(out, -1, self.group_size)
            return ((q - z.unsqueeze(-1)) * s.unsqueeze(-1)).reshape(out, cols)
        g = self.g_idx.long()
        return (self.codes.float() - z.index_select(1, g)) * s.index_select(1, g)

    @property
    def nbytes(self) -> int:
        """Exact storage: packed codes + fp16 scales + packed zero points + group index."""
        out, cols = self.shape
        total = packed_bytes(out, cols, self.bits) + self.scales.numel() * 2
        if self.zeros is not None:
            total += packed_bytes(out, self.zeros.shape[1], self.bits)
        if self.g_idx is not None:
            total += self.g_idx.numel() * self.g_idx.element_size()
        return total


def quantize_rtn(w: torch.Tensor, bits: int = 4, group_size: int | None = 128, symmetric: bool = False,
                 clip_ratio=1.0) -> GroupQuantizedWeight:
    """Round-to-nearest quantization of an (out, in) weight, per group (or per channel with group_size=None).

    `clip_ratio`: a number, an (out, G) tensor (e.g. from `mse_clip_ratios`), or "mse" to search it."""
    check_weight_bits(bits)
    if w.dim() != 2:
        raise UserError(f"weight-only quantization takes an (out, in) matrix, got shape {list(w.shape)}")
    w = w.detach().float()
    if not torch.isfinite(w).all():
        raise UserError("the weight holds NaN or inf values: fix the model before quantizing")
    gs = resolve_group_size(w.shape[1], group_size)
    if isinstance(clip_ratio, str):
        if clip_ratio != "mse":
            raise UserError(f"clip_ratio={clip_ratio!r}: use a number in (0, 1], a tensor of ratios, or 'mse'")
        clip_ratio = mse_clip_ratios(w, bits, gs, symmetric)
    wg = _grouped(w, gs)
    scale, zero = group_qparams(wg, bits, symmetric, clip_ratio)
    codes = quantize_group(wg, scale, zero, bits).reshape(w.shape).to(torch.uint8)
    return GroupQuantizedWeight(codes, scale.half(), None if symmetric else zero.to(torch.uint8), bits, gs)


# ---------------------------------------------------------------------------------------------- module
def _int4_kernel_available() -> bool:
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") and hasattr(torch.ops.aten, "_convert_weight_to_int4pack_for_cpu")


class WeightOnlyLinear(nn.Module):
    """A linear layer holding b-bit packed codes and fp16 scales (and zeros) as buffers.

    forward, by `kernel`:
    - "dequant": rebuild the float weight from the codes on every call, then F.linear (any bits, group index;
      memory stays at the packed size);
    - "cached": dequantize once and keep the float32 weight (as fast as fp32, as large as fp32: for evaluating
      accuracy, e.g. perplexity sweeps; storage is still counted from the packed buffers);
    - "ort": ONNX Runtime's `com.microsoft.MatMulNBits` on the same packed bytes (4 bits, power-of-two groups of
      16…256, no group index; inference only, no autograd) — the int4 CPU kernel that beats fp32 here;
    - "int4": PyTorch's CPU int4 matmul (`aten._weight_int4pack_mm_for_cpu`; 4 bits, groups of 32/64/128/256,
      no group index, float32 activations). Measured slower than fp32 F.linear on the project's CPU
      (benchmarks/weight_only_kernels.py), so it is never chosen implicitly; ONNX Runtime's MatMulNBits
      (`matmul_nbits_model`) is the fast int4 CPU path.
    Derived caches are not in the state dict and are dropped when the state dict is loaded.
    """

    def __init__(self, qweight: GroupQuantizedWeight, bias: torch.Tensor | None = None, kernel: str = "dequant"):
        super().__init__()
        if kernel not in ("dequant", "cached", "int4", "ort"):
            raise UserError(f"kernel={kernel!r}: use 'dequant', 'cached', 'ort' or 'int4'")
        out, cols = qweight.shape
        self.in_features, self.out_features = cols, out
        self.bits, self.group_size = qweight.bits, qweight.group_size
        self.symmetric = qweight.zeros is None
        self.register_buffer("packed", pack_codes(qweight.codes, qweight.bits))
        self.register_buffer("scales", qweight.scales.half().clone())
        self.register_buffer("zeros", None if qweight.zeros is None else pack_codes(qweight.zeros, qweight.bits))
        self.register_buffer("g_idx", None if qweight.g_idx is None else qweight.g_idx.to(torch.int32).clone())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        int4_ok = (self.bits == 4 and self.g_idx is None and self.group_size in (32, 64, 128, 256)
                   and cols % self.group_size == 0 and _int4_kernel_available())
        if kernel == "int4" and not int4_ok:
            raise UserError("kernel='int4' needs 4-bit weights in groups of 32/64/128/256 without act-order group index "
                            "(and a PyTorch with aten._weight_int4pack_mm_for_cpu): use kernel='dequant'")
        gs = self.group_size
        if kernel == "ort" and (self.bits != 4 or self.g_idx is not None or gs & (gs - 1) or not 16 <= gs <= 256):
            raise UserError("kernel='ort' (MatMulNBits) needs 4-bit weights, a power-of-two group of 16..256 and no "
                            "act-order group index: use kernel='dequant'")
        self.kernel = kernel
        self._int4_cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self._weight_cache: torch.Tensor | None = None
        self._ort_session = None

    def _load_from_state_dict(self, *args, **kwargs):
        self._int4_cache = self._weight_cache = self._ort_session = None
        return super()._load_from_state_dict(*args, **kwargs)

    def qweight(self) -> GroupQuantizedWeight:
        codes = unpack_codes(self.packed, self.bits, self.in_features)
        zeros = None if self.zeros is None else unpack_codes(self.zeros, self.bits, self.scales.shape[1])
        return GroupQuantizedWeight(codes, self.scales, zeros, self.bits, self.group_size, self.g_idx)

    def dequantized_weight(self) -> torch.Tensor:
        return self.qweight().dequantize()

    @property
    def nbytes(self) -> int:
        """Exact bytes of the stored weight (codes, scales, zeros, group index) plus the float32 bias."""
        return self.qweight().nbytes + (0 if self.bias is None else self.bias.numel() * 4)

    def _int4_operands(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._int4_cache is None:
            q = self.qweight()
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.codes.to(torch.int32), 1)
            s = q.scales.float()
            m = (8.0 - q.zero_points()) * s                  # (q − z)·s = (q − 8)·s + (8 − z)·s
            self._int4_cache = (packed, torch.stack([s.t(), m.t()], -1).contiguous())
        return self._int4_cache

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "ort" and x.device.type == "cpu":
            if self._ort_session is None:
                self._ort_session = ort_session(matmul_nbits_model(self), threads=torch.get_num_threads())
            flat = x.detach().reshape(-1, self.in_features).float().contiguous().numpy()
            y = torch.from_numpy(self._ort_session.run(None, {"X": flat})[0])
            return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        if self.kernel == "int4" and x.dtype == torch.float32 and x.device.type == "cpu":
            packed, sz = self._int4_operands()
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.reshape(-1, self.in_features), packed, self.group_size, sz)
            y = y.reshape(*x.shape[:-1], self.out_features)
            return y if self.bias is None else y + self.bias
        if self.kernel == "cached":
            if self._weight_cache is None or self._weight_cache.device != self.packed.device:
                self._weight_cache = self.dequantized_weight()
            w = self._weight_cache.to(x.dtype)
        else:
            w = self.dequantized_weight().to(x.dtype)
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, symmetric={self.symmetric}, kernel={self.kernel}")


def replace_with_weight_only(model: nn.Module, name: str, qweight: GroupQuantizedWeight, kernel: str = "dequant") -> WeightOnlyLinear:
    """Swap the linear-like layer `name` for a WeightOnlyLinear built from `qweight` (keeps its bias)."""
    layer = model.get_submodule(name)
    if tuple(qweight.shape) != tuple(weight_matrix(layer).shape):
        raise UserError(f"quantized weight shape {list(qweight.shape)} does not match layer '{name}' {list(weight_matrix(layer).shape)}")
    bias = getattr(layer, "bias", None)
    new = WeightOnlyLinear(qweight, bias if isinstance(bias, torch.Tensor) else None, kernel=kernel)
    set_module(model, name, new)
    return new


def quantize_weight_only(model: nn.Module, bits: int = 4, group_size: int | None = 128, symmetric: bool = False,
                         clip: str = "none", layers=None, kernel: str = "dequant") -> nn.Module:
    """RTN weight-only quantization of every linear layer (not the embedding-tied head), in place; returns model.
    `clip="mse"` searches a clip ratio per group (`mse_clip_ratios`)."""
    check_weight_bits(bits)
    if clip not in ("none", "mse"):
        raise UserError(f"clip={clip!r}: use 'none' or 'mse'")
    for name, layer in list(calibration_layers(model, layers).items()):
        w = weight_matrix(layer).detach().float()
        qw = quantize_rtn(w, bits, group_size, symmetric, "mse" if clip == "mse" else 1.0)
        replace_with_weight_only(model, name, qw, kernel=kernel)
    return model


def weight_only_bytes(model: nn.Module) -> int:
    """Exact bytes of a model's weights: WeightOnlyLinear storage (packed codes, fp16 scales, zeros, group index,
    bias) plus every other parameter and buffer at its dtype's size, shared tensors counted once."""
    total = 0
    seen: set[int] = set()
    inside: set[int] = set()
    for m in model.modules():
        if isinstance(m, WeightOnlyLinear):
            total += m.nbytes
            inside.update(id(t) for t in m.buffers())
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in inside or id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


# ---------------------------------------------------------------------------------------------- ONNX Runtime
def matmul_nbits_model(layer: WeightOnlyLinear):
    """A one-node ONNX model  Y = MatMulNBits(X, B, scales[, zero_points][, bias])  (com.microsoft, ONNX Runtime)
    with the layer's own packed bytes: B (N, K/block, block·bits/8) uint8 codes packed low nibble first along K,
    scales (N·K/block) float32, zero points packed 4-bit per row (default 8 = our symmetric code when absent).
    Needs 4 bits (the CPU kernel's well-trodden path), groups of 16…256 (a power of two) and no group index."""
    from onnx import TensorProto, helper

    if layer.bits != 4 or layer.g_idx is not None or layer.group_size & (layer.group_size - 1) or not 16 <= layer.group_size <= 256:
        raise UserError("MatMulNBits export needs 4-bit weights, a power-of-two group of 16..256 and no act-order group index")
    n, k, bs = layer.out_features, layer.in_features, layer.group_size
    q = layer.qweight()
    b = pack_int4(q.codes).reshape(n, k // bs, bs // 2).numpy()
    inits = [helper.make_tensor("B", TensorProto.UINT8, b.shape, b.tobytes(), raw=True),
             helper.make_tensor("scales", TensorProto.FLOAT, [n * (k // bs)], q.scales.float().reshape(-1).numpy())]
    inputs = ["X", "B", "scales"]
    if q.zeros is not None:
        zp = pack_int4(q.zeros).reshape(-1).numpy()
        inits.append(helper.make_tensor("zero_points", TensorProto.UINT8, [zp.size], zp.tobytes(), raw=True))
        inputs.append("zero_points")
    if layer.bias is not None:
        while len(inputs) < 5:  # optional inputs: zero_points, g_idx, then bias
            inputs.append("")
        inits.append(helper.make_tensor("bias", TensorProto.FLOAT, [n], layer.bias.numpy()))
        inputs.append("bias")
    node = helper.make_node("MatMulNBits", inputs, ["Y"], domain="com.microsoft", K=k, N=n, bits=4, block_size=bs)
    graph = helper.make_graph([node], "matmul_nbits", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["M", k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def matmul_float_model(weight: torch.Tensor, bias: torch.Tensor | None = None):
    """The fp32 peer: Y = MatMul(X, Wᵀ) (+ bias) as a one-node (or two-node) ONNX model."""
    from onnx import TensorProto, helper, numpy_helper

    wt = weight.detach().float().t().contiguous().numpy()
    nodes = [helper.make_node("MatMul", ["X", "Wt"], ["Y" if bias is None else "XW"])]
    inits = [numpy_helper.from_array(wt, "Wt")]
    if bias is not None:
        nodes.append(helper.make_node("Add", ["XW", "b"], ["Y"]))
        inits.append(numpy_helper.from_array(bias.detach().float().numpy(), "b"))
    graph = helper.make_graph(nodes, "matmul_fp32", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["M", wt.shape[0]])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", wt.shape[1]])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def ort_session(onnx_model, threads: int = 1):
    """An ONNX Runtime CPU session for an in-memory model, with `threads` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
