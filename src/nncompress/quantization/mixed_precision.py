"""Mixed precision: give each layer the fewest weight bits it tolerates, under a model-size budget.

Sensitivity of layer l at b bits = KL(p_float ‖ p_l,b) on calibration inputs, where only layer l's weights
are quantized to b bits (per channel, symmetric) — label-free, like Deep Compression's per-layer
sensitivity sweeps (Han et al. 2016) and the first-order view of HAWQ (Dong et al. 2019). Bits are then
chosen greedily: start every layer at its widest option and repeatedly lower the layer whose next step
down costs the least sensitivity per byte saved, until weight bytes ⌈n·b/8⌉ + 4·channels fit the budget.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from nncompress.core.errors import UserError
from nncompress.core.layers import compressible_layers
from nncompress.core.progress import track
from nncompress.quantization.ptq import iter_batches
from nncompress.quantization.quantizer import check_bits, fake_quantize, minmax_qparams
from nncompress.training.device import module_device


def layer_weight_bytes(layer: nn.Module, bits: int) -> int:
    """Packed b-bit codes plus one fp32 scale per output channel."""
    return math.ceil(layer.weight.numel() * bits / 8) + 4 * layer.weight.shape[0]


@torch.no_grad()
def layer_sensitivity(model: nn.Module, data, bits_options: tuple[int, ...] = (2, 3, 4, 6, 8), num_batches: int = 2) -> dict[str, dict[int, float]]:
    """{layer: {bits: KL(float ‖ only-this-layer-quantized)}} averaged over `num_batches` inputs, on the model's device."""
    for b in bits_options:
        check_bits(b, "mixed-precision bits option")
    model.eval()
    device = module_device(model)
    xs = [x.to(device) for x in iter_batches(data, num_batches)]
    refs = [F.log_softmax(model(x), 1) for x in xs]
    out: dict[str, dict[int, float]] = {}
    layers = compressible_layers(model)
    for name, layer in track(layers.items(), "layer sensitivity", total=len(layers)):
        w = layer.weight.data.clone()
        out[name] = {}
        for b in bits_options:
            s, z, qmin, qmax = minmax_qparams(w, b, signed=True, symmetric=True, narrow=b > 1, axis=0)
            layer.weight.data = fake_quantize(w, s, z, qmin, qmax, axis=0)
            kl = sum(float(F.kl_div(F.log_softmax(model(x), 1), r, log_target=True, reduction="batchmean")) for x, r in zip(xs, refs))
            out[name][b] = kl / len(xs)
        layer.weight.data = w
    return out


def choose_bits(sensitivity: dict[str, dict[int, float]], layers: dict[str, nn.Module], budget_bytes: int) -> dict[str, int]:
    """Greedy multiple-choice knapsack: lower the cheapest-per-byte layer until the weights fit `budget_bytes`."""
    bits = {n: max(opts) for n, opts in sensitivity.items()}
    size = sum(layer_weight_bytes(layers[n], b) for n, b in bits.items())
    while size > budget_bytes:
        best, best_cost = None, float("inf")
        for n, b in bits.items():
            lower = [o for o in sensitivity[n] if o < b]
            if not lower:
                continue
            nb = max(lower)
            saved = layer_weight_bytes(layers[n], b) - layer_weight_bytes(layers[n], nb)
            cost = max(sensitivity[n][nb] - sensitivity[n][b], 0.0) / max(saved, 1)
            if cost < best_cost:
                best, best_cost = (n, nb, saved), cost
        if best is None:
            smallest = sum(layer_weight_bytes(layers[n], min(o)) for n, o in sensitivity.items())
            raise UserError(f"budget {budget_bytes} bytes is below the smallest mixed-precision size {smallest} bytes: raise the budget or add lower bit options")
        bits[best[0]] = best[1]
        size -= best[2]
    return bits


@dataclass
class MixedPrecisionResult:
    bits: dict[str, int]
    sensitivity: dict[str, dict[int, float]]
    weight_bytes: int
    budget_bytes: int
    float_weight_bytes: int
    layers: list[dict] = field(default_factory=list)

    @property
    def compression_ratio(self) -> float:
        """fp32 weight bytes / chosen quantized weight bytes."""
        return self.float_weight_bytes / max(self.weight_bytes, 1)


def mixed_precision(model: nn.Module, data, budget_bytes: int, bits_options: tuple[int, ...] = (2, 3, 4, 6, 8),
                    num_batches: int = 2) -> MixedPrecisionResult:
    """Per-layer weight bits under `budget_bytes` from measured sensitivity; report per layer."""
    if budget_bytes <= 0:
        raise UserError(f"budget_bytes={budget_bytes} must be positive")
    layers = compressible_layers(model)
    if not layers:
        raise UserError("the model has no Linear or Conv layers to quantize")
    sens = layer_sensitivity(model, data, bits_options, num_batches)
    bits = choose_bits(sens, layers, budget_bytes)
    rows = [{"layer": n, "bits": b, "params": layers[n].weight.numel(), "weight_bytes": layer_weight_bytes(layers[n], b),
             "sensitivity": sens[n][b]} for n, b in bits.items()]
    total = sum(r["weight_bytes"] for r in rows)
    fp32 = sum(4 * layers[n].weight.numel() for n in layers)
    return MixedPrecisionResult(bits, sens, total, budget_bytes, fp32, rows)
