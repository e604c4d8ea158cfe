"""What a quantized model costs: bytes of its weights (latency: `nncompress.analysis.measure_latency_ms`).

Sizes count what a deployed file must hold: b-bit codes packed ⌈n·b/8⌉ bytes per layer, one fp32 scale
per output channel (or per tensor), fp32 biases, and everything left in float at 4 bytes a value.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from nncompress.quantization.fake_quant import FakeQuantize, LSQQuantizer
from nncompress.quantization.graph import QuantLayer


def float_weight_bytes(model: nn.Module, bytes_per_value: int = 4) -> int:
    """Parameters and BN statistics stored as floats (fp32: 4 bytes, fp16/bf16: 2)."""
    n = sum(p.numel() for p in model.parameters())
    n += sum(b.numel() for name, b in model.named_buffers() if name.rsplit(".", 1)[-1] in ("running_mean", "running_var"))
    return n * bytes_per_value


def quantized_weight_bytes(gm: nn.Module) -> dict[str, int]:
    """{"weights": packed codes, "scales": quantization parameters, "float": biases and float layers, "total"}."""
    codes = scales = 0
    quantized_params: set[int] = set()
    for name, m in gm.named_modules():
        if isinstance(m, QuantLayer) and m.weight_quant is not None:
            w = m.layer.weight
            codes += math.ceil(w.numel() * m.weight_quant.bits / 8)
            channels = w.shape[0] if m.weight_quant.axis is not None else 1
            scales += 4 * channels  # symmetric: no zero point stored
            quantized_params.add(id(w))
            if m.bn is not None:  # folded into the weights and bias at deployment
                quantized_params.update(id(p) for p in m.bn.parameters())
        elif isinstance(m, (FakeQuantize, LSQQuantizer)) and not getattr(m, "dynamic", False) and not name.endswith("weight_quant"):
            scales += 8  # activation scale + zero point
    floats = 0
    for p in gm.parameters():
        if id(p) not in quantized_params and not _is_step(gm, p):
            floats += 4 * p.numel()
    for m in gm.modules():
        if isinstance(m, QuantLayer) and m.bn is not None and m.layer.bias is None:
            floats += 4 * m.layer.weight.shape[0]  # the folded bias appears at deployment
    return {"weights": codes, "scales": scales, "float": floats, "total": codes + scales + floats}


def _is_step(gm: nn.Module, p: torch.Tensor) -> bool:
    return any(p is m.step for m in gm.modules() if isinstance(m, LSQQuantizer))
