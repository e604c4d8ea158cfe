"""Per-layer signal-to-quantization-noise ratio: which layers a quantized model loses its accuracy in.

SQNR = 10·log10(Σ y² / Σ (y − ŷ)²) dB, with y the layer's float output and ŷ the quantized one. Per layer, both
are computed on the same input (what reaches the layer in the quantized graph), so each layer is charged only
for its own error: its quantized weights and the activation quantizer on its output (where a clipping range
chosen too small shows). 8-bit layers typically sit at 30–45 dB; under ~15 dB a layer has lost its signal.
Used when a calibration loses more than a few points of top-1 (issue 12), on the calibration batch.
"""
from __future__ import annotations

import math

import torch
import torch.fx as fx
from torch import nn

from nncompress.quantization.fake_quant import FakeQuantize, LSQQuantizer
from nncompress.quantization.graph import QuantLayer


def sqnr_db(reference: torch.Tensor, quantized: torch.Tensor) -> float:
    """10·log10(Σ ref² / Σ (ref − q)²) in dB (float64 sums); +inf when the two are equal, −inf for a zero reference."""
    ref, q = reference.detach().double(), quantized.detach().double()
    signal, noise = float((ref ** 2).sum()), float(((ref - q) ** 2).sum())
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _output_quantizers(gm: fx.GraphModule) -> dict[str, str]:
    """{QuantLayer module name: name of the activation quantizer applied to its output}, where there is one."""
    mods = dict(gm.named_modules())
    out = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(mods.get(node.target), QuantLayer):
            for user in node.users:
                if user.op == "call_module" and isinstance(mods.get(user.target), (FakeQuantize, LSQQuantizer)):
                    out[node.target] = user.target
    return out


@torch.no_grad()
def layer_sqnr(gm: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """SQNR (dB) of every quantized layer of a prepared, calibrated graph on the batch `x`, worst first."""
    mods = dict(gm.named_modules())
    follow = _output_quantizers(gm) if isinstance(gm, fx.GraphModule) else {}
    seen: dict[str, dict] = {}
    handles = []

    def layer_hook(name):
        def fn(module, inputs, output):
            seen.setdefault(name, {})["x"], seen[name]["y"] = inputs[0], output
        return fn

    def quant_hook(name):
        def fn(module, inputs, output):  # the first call: a shared quantizer re-applied after a max-pool comes later
            seen.setdefault(name, {}).setdefault("yq", output)
        return fn

    for name, m in mods.items():
        if isinstance(m, QuantLayer):
            handles.append(m.register_forward_hook(layer_hook(name)))
            if name in follow:
                handles.append(mods[follow[name]].register_forward_hook(quant_hook(name)))
    was_training = gm.training
    try:
        gm.eval()
        device = next((p.device for p in gm.parameters()), torch.device("cpu"))
        gm(x.to(device))
    finally:
        gm.train(was_training)
        for h in handles:
            h.remove()
    result = {}
    for name, rec in seen.items():
        if "x" not in rec:
            continue
        layer: QuantLayer = mods[name]
        w, b = layer.folded()  # on the raw input: a quantizer inside the layer (dynamic mode) is the layer's own error
        ref = layer._run_layer(rec["x"], w, b)
        ref = torch.relu(ref) if layer.relu else ref
        result[name] = sqnr_db(ref, rec.get("yq", rec["y"]))
    return dict(sorted(result.items(), key=lambda kv: kv[1]))


def worst_layers_text(sqnr: dict[str, float], k: int = 3) -> str:
    """'conv1 4.2 dB, fc 18.0 dB, …' for the k lowest."""
    return ", ".join(f"{n} {v:.1f} dB" for n, v in list(sqnr.items())[:k]) or "(no quantized layers)"
