"""Mixed precision: give each layer the fewest bits it tolerates, under a budget.

Weights only (`mixed_precision`): sensitivity of layer l at b bits = KL(p_float ‖ p_l,b) on calibration inputs,
where only layer l's weights are quantized to b bits (per channel, symmetric) — label-free, like Deep
Compression's per-layer sensitivity sweeps (Han et al. 2016) and the first-order view of HAWQ (Dong et al. 2019).
Bits are then chosen greedily: start every layer at its widest option and repeatedly lower the layer whose next
step down costs the least sensitivity per byte saved, until weight bytes ⌈n·b/8⌉ + 4·channels fit the budget.

Weights and activations (`mixed_precision_wa`): the same idea over two kinds of units — each layer's weight
bits and each activation quantizer's bits — under a bit-operations budget Σ MACs·b_w·b_a (and/or a size
budget); the chosen mix is built as a calibrated static graph and its accuracy measured (see below).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from nncompress.core.errors import UserError
from nncompress.core.layers import compressible_layers
from nncompress.core.model_io import call_model, logits_of, to_device
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
    xs = [to_device(x, device) for x in iter_batches(data, num_batches)]  # tensors, tuples or a tokenizer's dicts

    def log_probs(x) -> torch.Tensor:
        logits = logits_of(call_model(model, x))
        return F.log_softmax(logits.reshape(-1, logits.shape[-1]) if logits.dim() == 3 else logits, 1)

    refs = [log_probs(x) for x in xs]
    out: dict[str, dict[int, float]] = {}
    layers = compressible_layers(model)
    for name, layer in track(layers.items(), "layer sensitivity", total=len(layers)):
        w = layer.weight.data.clone()
        out[name] = {}
        for b in bits_options:
            s, z, qmin, qmax = minmax_qparams(w, b, signed=True, symmetric=True, narrow=b > 1, axis=0)
            layer.weight.data = fake_quantize(w, s, z, qmin, qmax, axis=0)
            kl = sum(float(F.kl_div(log_probs(x), r, log_target=True, reduction="batchmean")) for x, r in zip(xs, refs))
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


# ── Mixed precision of weights AND activations under a bit-operations budget ─────────────────────────────────
#
# A layer's cost on integer hardware is its bit operations, BOPs = MACs · b_w · b_a (Baskin et al. 2018, UNIQ;
# van Baalen et al. 2020, "Bayesian Bits", §4): a W4A8 or W8A4 layer costs half a W8A8 one, W4A4 a quarter.
# The decisions are of two kinds, because an activation quantizer can feed several layers (a residual branch
# point feeds the next block and the shortcut): *weight units* (one per quantized layer: its weight bits) and
# *activation units* (one per activation quantizer that feeds a quantized layer: the bits of that tensor, shared
# by every layer that reads it). Each unit's sensitivity at each option is KL(p_float ‖ p) on calibration inputs
# with only that unit quantized and everything else in float (the separable, first-order view of HAWQ, Dong et
# al. 2019). A greedy multiple-choice knapsack then lowers, one step at a time, the unit whose step costs the
# least added sensitivity per BOP (and/or byte) saved, until the budgets hold. The chosen mix is then built as a
# calibrated static graph and, given `eval_fn`, *evaluated*: the reported accuracy is measured, not predicted.
# Activation quantizers that feed no quantized layer (a layer's output that only goes into a float add, the
# logits) stay at the widest activation option.


def layer_input_quantizers(gm: nn.Module) -> dict[str, str | None]:
    """{quantized layer: name of the activation quantizer whose codes it reads (None: a float input)}, found by
    walking back from the layer's input through ops that reuse their input's quantizer (pool, flatten, ...)."""
    from nncompress.quantization.fake_quant import FakeQuantize
    from nncompress.quantization.graph import QuantLayer, is_pass_through

    mods = dict(gm.named_modules())
    out: dict[str, str | None] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), QuantLayer):
            continue
        src = node.args[0] if node.args else None
        found = None
        while src is not None and hasattr(src, "op"):
            if src.op == "call_module" and isinstance(mods.get(src.target), FakeQuantize):
                found = src.target
                break
            if not is_pass_through(src, mods) or not src.args:
                break
            src = src.args[0]
        out[node.target] = found
    return out


def packed_weight_bytes(numel: int, scales: int, bits: int) -> int:
    """⌈numel · bits / 8⌉ bytes of packed codes plus one fp32 scale per channel (or one per tensor)."""
    return math.ceil(numel * bits / 8) + 4 * scales


def layer_bops(macs: dict[str, int], weight_bits: dict[str, int], act_bits: dict[str, int],
               layer_input: dict[str, str | None], float_bits: int = 32) -> int:
    """Σ_layers MACs · b_w · b_a, b_a the bits of the quantizer the layer reads (`float_bits` for a float input)."""
    return sum(m * weight_bits[n] * (act_bits[layer_input[n]] if layer_input.get(n) is not None else float_bits)
               for n, m in macs.items())


def choose_wa_bits(weight_sensitivity: dict[str, dict[int, float]], act_sensitivity: dict[str, dict[int, float]],
                   macs: dict[str, int], layer_input: dict[str, str | None], budget_bops: int | None = None,
                   weight_bytes: dict[str, dict[int, int]] | None = None,
                   budget_bytes: int | None = None) -> tuple[dict[str, int], dict[str, int]]:
    """Greedy multiple-choice knapsack over weight units (layers) and activation units (quantizers).

    Start every unit at its widest option; while a budget is exceeded, lower by one option the unit with the least
    Δsensitivity / Σ_{exceeded budgets} (saving / budget) — so a step is paid for by what it saves of what is still
    over budget; ties go to the larger saving, then the name. Returns ({layer: weight bits}, {quantizer: act bits})."""
    if budget_bops is None and budget_bytes is None:
        raise UserError("mixed precision needs a budget: pass budget_bops (bit operations) and/or budget_bytes (weight size)")
    if budget_bytes is not None and weight_bytes is None:
        raise UserError("budget_bytes needs the per-layer weight bytes of every option (weight_bytes)")
    for name, value in (("budget_bops", budget_bops), ("budget_bytes", budget_bytes)):
        if value is not None and value <= 0:
            raise UserError(f"{name}={value} must be positive")
    wb = {n: max(o) for n, o in weight_sensitivity.items()}
    ab = {q: max(o) for q, o in act_sensitivity.items()}
    readers: dict[str, list[str]] = {}
    for n, q in layer_input.items():
        if q is not None and n in macs:
            readers.setdefault(q, []).append(n)

    def a_of(n: str) -> int:
        q = layer_input.get(n)
        return ab[q] if q is not None and q in ab else 32

    def totals() -> tuple[int, int]:
        bops = sum(macs[n] * wb[n] * a_of(n) for n in macs)
        size = sum(weight_bytes[n][wb[n]] for n in wb) if weight_bytes is not None else 0
        return bops, size

    bops, size = totals()
    while (budget_bops is not None and bops > budget_bops) or (budget_bytes is not None and size > budget_bytes):
        over_bops = budget_bops is not None and bops > budget_bops
        over_bytes = budget_bytes is not None and size > budget_bytes
        best = None  # (cost, -gain, kind, name, new bits)
        for kind, bits, sens in (("w", wb, weight_sensitivity), ("a", ab, act_sensitivity)):
            for name, b in sorted(bits.items()):
                lower = [o for o in sens[name] if o < b]
                if not lower:
                    continue
                nb = max(lower)
                if kind == "w":
                    d_bops = macs.get(name, 0) * (b - nb) * a_of(name)
                    d_bytes = (weight_bytes[name][b] - weight_bytes[name][nb]) if weight_bytes is not None else 0
                else:
                    d_bops = sum(macs[n] * wb[n] for n in readers.get(name, ())) * (b - nb)
                    d_bytes = 0
                gain = (d_bops / budget_bops if over_bops else 0.0) + (d_bytes / budget_bytes if over_bytes else 0.0)
                if gain <= 0:
                    continue
                cost = max(sens[name][nb] - sens[name][b], 0.0) / gain
                key = (cost, -gain, kind, name, nb)
                if best is None or key < best:
                    best = key
        if best is None:
            bits_w = {n: min(o) for n, o in weight_sensitivity.items()}
            bits_a = {q: min(o) for q, o in act_sensitivity.items()}
            floor = layer_bops(macs, bits_w, bits_a, layer_input)
            raise UserError(f"budget cannot be met: the fewest bits give {floor} BOPs"
                            + (f" and {sum(weight_bytes[n][bits_w[n]] for n in bits_w)} weight bytes" if weight_bytes else "")
                            + ": raise the budget or add lower bit options")
        _, _, kind, name, nb = best
        (wb if kind == "w" else ab)[name] = nb
        bops, size = totals()
    return wb, ab


def quantize_mixed(model: nn.Module, calib_data, weight_bits: dict[str, int], act_bits: dict[str, int],
                   default_weight_bits: int = 8, default_act_bits: int = 8, granularity: str = "channel",
                   calibration: str = "minmax", num_batches: int = 8):
    """A calibrated static graph with per-layer weight bits and per-quantizer activation bits.

    One static graph per activation width is calibrated (the observers see float activations, so ranges do not
    depend on the other layers' bits); each activation quantizer of the result is taken from the graph of its width."""
    from nncompress.quantization.ptq import quantize_static

    widths = sorted(set(act_bits.values()) | {default_act_bits})
    graphs = {a: quantize_static(model, calib_data, bits=default_weight_bits, granularity=granularity, calibration=calibration,
                                 num_batches=num_batches, act_bits=a, layer_bits=weight_bits) for a in widths}
    gm = graphs[default_act_bits]
    names = {n for n, _ in gm.named_children()}
    unknown = set(act_bits) - names
    if unknown:
        raise UserError(f"act_bits names {sorted(unknown)[:3]} are not activation quantizers of this model's graph")
    for q, a in act_bits.items():
        if a != default_act_bits:
            setattr(gm, q, getattr(graphs[a], q))
    gm.mixed_act_bits = {q: act_bits.get(q, default_act_bits) for q in layer_input_quantizers(gm).values() if q is not None}
    return gm


@torch.no_grad()
def _layer_macs(gm: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Per-sample MACs of every quantized layer: output elements per sample × weight elements per output channel."""
    from nncompress.quantization.graph import QuantLayer

    macs: dict[str, int] = {}
    hooks = []
    for name, m in gm.named_modules():
        if isinstance(m, QuantLayer):
            def hook(mod, inp, out, name=name):
                macs[name] = int(out[0].numel() * mod.layer.weight[0].numel())
            hooks.append(m.register_forward_hook(hook))
    try:
        gm(x[:1])
    finally:
        for h in hooks:
            h.remove()
    return macs


@torch.no_grad()
def wa_sensitivity(model: nn.Module, calib_data, weight_options: tuple[int, ...] = (8, 4), act_options: tuple[int, ...] = (8, 4),
                   granularity: str = "channel", calibration: str = "minmax", num_batches: int = 8, sens_batches: int = 2):
    """({layer: {w_bits: KL}}, {quantizer: {a_bits: KL}}, {layer: per-sample MACs}, {layer: input quantizer},
    {layer: (weight elements, output channels)}): each unit quantized alone, everything else in float."""
    import copy

    from nncompress.quantization.fake_quant import FakeQuantize
    from nncompress.quantization.graph import QuantLayer
    from nncompress.quantization.ptq import quantize_static

    for b in (*weight_options, *act_options):
        check_bits(b, "mixed-precision bits option")
    if min(act_options) < 2:
        raise UserError(f"activation bit options {act_options}: activations need at least 2 bits")
    w_max, a_max = max(weight_options), max(act_options)
    grid = {(w_max, a): None for a in act_options} | {(w, a_max): None for w in weight_options}
    for w, a in grid:
        grid[(w, a)] = quantize_static(model, calib_data, bits=w, granularity=granularity, calibration=calibration,
                                       num_batches=num_batches, act_bits=a)
    work = copy.deepcopy(grid[(w_max, a_max)])
    device = module_device(work)
    layers = {n: m for n, m in work.named_modules() if isinstance(m, QuantLayer)}
    saved_wq = {n: m.weight_quant for n, m in layers.items()}
    for m in layers.values():
        m.weight_quant = None
    acts = {n: m for n, m in work.named_children() if isinstance(m, FakeQuantize)}
    for m in acts.values():
        m.quantizing = False
    layer_input = layer_input_quantizers(work)
    xs = [x.to(device) for x in iter_batches(calib_data, sens_batches)]
    refs = [F.log_softmax(work(x), 1) for x in xs]

    def kl() -> float:
        return sum(float(F.kl_div(F.log_softmax(work(x), 1), r, log_target=True, reduction="batchmean"))
                   for x, r in zip(xs, refs)) / len(xs)

    w_sens: dict[str, dict[int, float]] = {}
    for name, layer in track(layers.items(), "weight sensitivity", total=len(layers)):
        w_sens[name] = {}
        for b in weight_options:
            layer.weight_quant = grid[(b, a_max)].get_submodule(name).weight_quant
            w_sens[name][b] = kl()
        layer.weight_quant = None
    a_units = sorted({q for q in layer_input.values() if q is not None})
    a_sens: dict[str, dict[int, float]] = {}
    for q in track(a_units, "activation sensitivity", total=len(a_units)):
        a_sens[q] = {}
        for a in act_options:
            setattr(work, q, getattr(grid[(w_max, a)], q))
            a_sens[q][a] = kl()
        setattr(work, q, acts[q])
    for n, m in layers.items():
        m.weight_quant = saved_wq[n]
    macs = _layer_macs(work, xs[0])
    shapes = {n: (m.layer.weight.numel(), m.layer.weight.shape[0]) for n, m in layers.items()}
    return w_sens, a_sens, macs, layer_input, shapes


@dataclass
class MixedPrecisionWAResult:
    """The chosen mix: per-layer rows {layer, weight_bits, act_bits, input_quantizer, macs, bops, weight_bytes},
    totals against the budgets and the widest uniform setting, the sensitivities, the built graph and, when an
    `eval_fn` was given, its measured accuracy."""

    weight_bits: dict[str, int]
    act_bits: dict[str, int]
    layers: list[dict]
    bops: int
    max_bops: int
    budget_bops: int | None
    weight_bytes: int
    budget_bytes: int | None
    weight_sensitivity: dict[str, dict[int, float]]
    act_sensitivity: dict[str, dict[int, float]]
    model: nn.Module | None = None
    accuracy: float | None = None

    @property
    def bops_ratio(self) -> float:
        """BOPs of the widest uniform setting (e.g. W8A8) / BOPs of the chosen mix."""
        return self.max_bops / max(self.bops, 1)

    def summary(self) -> dict:
        from collections import Counter

        pairs = Counter(f"W{r['weight_bits']}A{r['act_bits']}" for r in self.layers)
        return {"bops": self.bops, "max_bops": self.max_bops, "budget_bops": self.budget_bops, "bops_ratio": self.bops_ratio,
                "weight_bytes": self.weight_bytes, "budget_bytes": self.budget_bytes, "accuracy": self.accuracy,
                "layers_per_setting": dict(sorted(pairs.items())), "layers": self.layers}


def mixed_precision_wa(model: nn.Module, calib_data, budget_bops: int | None = None, budget_bytes: int | None = None,
                       weight_options: tuple[int, ...] = (8, 4), act_options: tuple[int, ...] = (8, 4),
                       granularity: str = "channel", calibration: str = "minmax", num_batches: int = 8, sens_batches: int = 2,
                       eval_fn=None) -> MixedPrecisionWAResult:
    """Choose weight and activation bits per layer under `budget_bops` (MACs·b_w·b_a) and/or `budget_bytes`
    (packed weights + one fp32 scale per channel), build the calibrated mixed graph and, with `eval_fn(graph)`,
    measure its accuracy. See the section comment above for the method."""
    w_sens, a_sens, macs, layer_input, shapes = wa_sensitivity(model, calib_data, weight_options, act_options, granularity,
                                                               calibration, num_batches, sens_batches)
    if not w_sens:
        raise UserError("the model has no Linear or Conv layers to quantize")
    wbytes = {n: {b: packed_weight_bytes(numel, channels if granularity == "channel" else 1, b) for b in weight_options}
              for n, (numel, channels) in shapes.items()}
    w_bits, a_bits = choose_wa_bits(w_sens, a_sens, macs, layer_input, budget_bops, wbytes, budget_bytes)
    gm = quantize_mixed(model, calib_data, w_bits, a_bits, default_weight_bits=max(weight_options),
                        default_act_bits=max(act_options), granularity=granularity, calibration=calibration, num_batches=num_batches)
    rows = []
    for n in macs:
        q = layer_input.get(n)
        a = a_bits.get(q, max(act_options)) if q is not None else 32
        rows.append({"layer": n, "weight_bits": w_bits[n], "act_bits": a, "input_quantizer": q, "macs": macs[n],
                     "bops": macs[n] * w_bits[n] * a, "weight_bytes": wbytes[n][w_bits[n]]})
    max_bops = sum(macs[n] * max(weight_options) * (max(act_options) if layer_input.get(n) else 32) for n in macs)
    accuracy = float(eval_fn(gm)) if eval_fn is not None else None
    return MixedPrecisionWAResult(w_bits, a_bits, rows, sum(r["bops"] for r in rows), max_bops, budget_bops,
                                  sum(r["weight_bytes"] for r in rows), budget_bytes, w_sens, a_sens, gm, accuracy)

