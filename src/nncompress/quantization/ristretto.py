"""Ristretto-style number formats and automatic bit trimming (Gysel et al. 2016/2018, "Ristretto: A Framework
for Empirical Study of Resource-Efficient Inference in Convolutional Neural Networks").

Ristretto asks how few bits each layer of a trained network needs when its weights, layer inputs and layer
outputs are stored in a cheap number format, and answers it empirically: simulate the format in the forward
pass, measure top-1 accuracy, and lower the bit width while the accuracy stays within a margin of fp32.

Formats (pure functions, no state, no gradient):

* dynamic fixed point — a b-bit two's-complement integer with a per-tensor fractional length FL:
      IL = floor(log2 max|x|) + 1            (integer bits, sign bit not counted; never overflows max|x|)
      FL = b − 1 − IL
      x̂ = clamp(round(x · 2^FL), −2^(b−1), 2^(b−1) − 1) / 2^FL
  Ristretto keeps separate (IL, FL) for each layer's weights, inputs and outputs, because their ranges differ
  by orders of magnitude; activation lengths come from the maxima seen on the evaluation data.
* minifloat — sign, E exponent bits, M mantissa bits, IEEE-like with bias = 2^(E−1) − 1, the all-ones exponent
  reserved (inf/NaN in IEEE), **no denormals**: values below the smallest normal 2^(1−bias) go to 0 or to that
  normal, whichever is nearer. Mantissas round to nearest, ties to even; values above the largest normal
      max_normal = (2 − 2^−M) · 2^(2^E − 2 − bias)
  saturate to ±max_normal (Ristretto saturates instead of producing inf).
* power-of-two weights — w ↦ sign(w) · 2^round(log2|w|) with the exponent rounded in log2 space (ties to even,
  torch.round), exponents above `max_exp` clamped to it, and exponents below `min_exp` flushed to 0. So
  0.3 → 2^−2 = 0.25 (log2 0.3 = −1.74), −0.7 → −2^−1 (log2 0.7 = −0.51), 0.75 → 2^0 = 1 (log2 0.75 = −0.415).
  Multiplications become shifts; Ristretto pairs such weights with dynamic fixed point activations.

`simulate(model, layer_formats)` applies chosen formats to every Conv/Linear layer by forward hooks and an
in-place weight swap that `remove()` undoes (no torch.ao, no graph). `trim_bits` runs Ristretto's greedy search.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from nncompress.core.errors import UserError
from nncompress.core.layers import compressible_layers

FORMATS = ("dynamic_fixed_point", "minifloat", "power_of_two")


def _check_int(value, name: str, low: int, high: int = 32) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UserError(f"{name}={value!r} must be an integer from {low} to {high}")
    return value


# --------------------------------------------------------------------------------------------- dynamic fixed point
def integer_length(max_abs: float) -> int:
    """IL = floor(log2 max|x|) + 1: the fewest integer bits (sign excluded) that hold max|x| without overflow.

    3.2 → 2 (range up to 4), 0.75 → 0, 4.0 → 3. Negative for small tensors (0.1 → −3), which hands the bits to
    the fraction. An all-zero tensor gets IL = 0."""
    if not math.isfinite(max_abs):
        raise UserError(f"max |x| = {max_abs} is not finite: the tensor holds inf or NaN, so no fixed point format fits")
    if max_abs <= 0:
        return 0
    return math.floor(math.log2(max_abs)) + 1


def dynamic_fixed_point(x: torch.Tensor, bits: int, integer_bits: int | None = None) -> torch.Tensor:
    """x̂ = clamp(round(x · 2^FL), −2^(b−1), 2^(b−1) − 1) / 2^FL with FL = b − 1 − IL (round half to even).

    IL defaults to `integer_length(max|x|)`; pass it to reuse lengths calibrated elsewhere (activations).
    Example, 8 bits, [0.75, −1.5, 3.2]: IL = 2, FL = 5, codes 24, −48, round(102.4) = 102 → [0.75, −1.5, 3.1875]."""
    _check_int(bits, "bits", 1)
    il = integer_length(float(x.detach().abs().max())) if integer_bits is None else integer_bits
    fl = bits - 1 - il
    step = 2.0 ** (-fl)
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return (torch.clamp(torch.round(x / step), qmin, qmax) * step).to(x.dtype)


# ------------------------------------------------------------------------------------------------------ minifloat
def minifloat_bias(exp_bits: int) -> int:
    """IEEE bias 2^(E−1) − 1 (E = 4 → 7, E = 5 → 15, E = 8 → 127)."""
    return 2 ** (exp_bits - 1) - 1


def minifloat_max(exp_bits: int, mantissa_bits: int) -> float:
    """Largest normal: (2 − 2^−M) · 2^(2^E − 2 − bias); E4M3 → 1.875 · 2^7 = 240 (all-ones exponent reserved)."""
    return (2.0 - 2.0 ** (-mantissa_bits)) * 2.0 ** (2**exp_bits - 2 - minifloat_bias(exp_bits))


def minifloat(x: torch.Tensor, exp_bits: int, mantissa_bits: int) -> torch.Tensor:
    """Round to the nearest value of a sign/E/M minifloat without denormals, ties to even, saturating.

    Normal |x| ∈ [2^(1−bias), max_normal]: e = floor(log2|x|), step 2^(e−M), x̂ = round(|x| / step) · step.
    E4M3: 0.3 has e = −2, step 2^−5, 0.3 / 2^−5 = 9.6 → 10 → 0.3125; 1000 → 240.
    Below the smallest normal n_min = 2^(1−bias): nearest of {0, n_min}, a tie going to 0."""
    _check_int(exp_bits, "exp_bits", 2, 8)
    _check_int(mantissa_bits, "mantissa_bits", 0, 23)
    bias = minifloat_bias(exp_bits)
    n_min, n_max = 2.0 ** (1 - bias), minifloat_max(exp_bits, mantissa_bits)
    a = x.detach().abs().to(torch.float64)
    e = torch.floor(torch.log2(torch.clamp(a, min=n_min)))
    e = torch.clamp(e, 1 - bias, 2**exp_bits - 2 - bias)
    step = torch.pow(2.0, e - mantissa_bits)
    q = torch.clamp(torch.round(a / step) * step, max=n_max)
    q = torch.where(a < n_min, torch.where(a > n_min / 2, torch.full_like(a, n_min), torch.zeros_like(a)), q)
    return (torch.sign(x.detach()).to(torch.float64) * q).to(x.dtype)


def minifloat_exponent_bits(bits: int, max_abs: float, dynamic_range_binades: int = 8) -> int:
    """Split b bits as Ristretto does, exponent first: the fewest exponent bits E (≥ 2) whose normal range covers
    [max|x| · 2^−8, max|x|], the rest for the mantissa (M = b − 1 − E); all bits but the sign when none does.

    Covering max|x| alone is not enough: the bias centres the range on 1, so with E = 2 (smallest normal 1) every
    weight of a trained net (|w| < 1) would flush to 0. Eight binades below the peak keep small values normal.
    E.g. 16 bits, max|w| = 0.5: E = 4 has smallest normal 2^−6 > 2^−9, so E = 5 (2^−14), M = 10."""
    _check_int(bits, "bits", 3)
    low = max_abs * 2.0 ** (-dynamic_range_binades)
    for e in range(2, min(bits - 1, 8) + 1):
        if minifloat_max(e, bits - 1 - e) >= max_abs and 2.0 ** (1 - minifloat_bias(e)) <= low:
            return e
    return min(bits - 1, 8)


# --------------------------------------------------------------------------------------------------- power of two
def power_of_two(w: torch.Tensor, min_exp: int, max_exp: int) -> torch.Tensor:
    """ŵ = sign(w) · 2^clamp(round(log2|w|), ·, max_exp), and 0 where round(log2|w|) < min_exp (or w = 0).

    Rounding is in log2 space, ties to even: 0.3 → 0.25, −0.7 → −0.5, 0.75 → 1.0."""
    if min_exp > max_exp:
        raise UserError(f"min_exp={min_exp} is above max_exp={max_exp}: the exponent range is empty")
    a = w.detach().abs().to(torch.float64)
    k = torch.round(torch.log2(torch.where(a > 0, a, torch.ones_like(a))))
    q = torch.pow(2.0, torch.clamp(k, max=max_exp))
    q = torch.where((a > 0) & (k >= min_exp), q, torch.zeros_like(q))
    return (torch.sign(w.detach()).to(torch.float64) * q).to(w.dtype)


def power_of_two_range(bits: int, max_abs: float) -> tuple[int, int]:
    """(min_exp, max_exp) for b-bit power-of-two weights: one sign bit, 2^(b−1) magnitude codes of which one is 0,
    so 2^(b−1) − 1 exponents ending at max_exp = round(log2 max|w|). 4 bits, max|w| = 0.6: (−7, −1)."""
    _check_int(bits, "bits", 2)
    max_exp = 0 if max_abs <= 0 else round(math.log2(max_abs))
    return max_exp - 2 ** (bits - 1) + 2, max_exp


# --------------------------------------------------------------------------------------------------- the simulator
MIN_FORMAT_BITS = {"dynamic_fixed_point": 2, "minifloat": 3, "power_of_two": 2}


def _quantizer(fmt: str, bits: int, max_abs: float, activation: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """The format for one tensor, its parameters fixed from `max_abs` (power-of-two activations use fixed point)."""
    if fmt == "dynamic_fixed_point" or (fmt == "power_of_two" and activation):
        il = integer_length(max_abs)
        return lambda t: dynamic_fixed_point(t, bits, il)
    if fmt == "minifloat":
        e = minifloat_exponent_bits(bits, max_abs)
        return lambda t: minifloat(t, e, bits - 1 - e)
    lo, hi = power_of_two_range(bits, max_abs)
    return lambda t: power_of_two(t, lo, hi)


@dataclass
class LayerBits:
    """Bit widths of one layer: weights, and activations (the layer's inputs and outputs share one width,
    each with its own range, as in Ristretto). None leaves that tensor in fp32."""
    weights: int | None = None
    activations: int | None = None


class Simulation:
    """Formats applied to a model's Conv/Linear layers; `remove()` restores the fp32 weights and drops the hooks."""

    def __init__(self, model: nn.Module, layer_bits: dict[str, LayerBits], fmt: str, ranges: dict[str, dict[str, float]]):
        self.model, self.handles, self.saved = model, [], {}
        layers = compressible_layers(model)
        for name, bits in layer_bits.items():
            layer = layers[name]  # names checked by simulate()
            if bits.weights is not None and parametrize.is_parametrized(layer, "weight"):
                raise UserError(f"ristretto: layer '{name}' has a parametrized weight (pruning mask or codebook): "
                                "call nncompress.pruning.finalize(model) first")
            if bits.weights is not None:
                w = layer.weight
                self.saved[name] = w.detach().clone()
                with torch.no_grad():
                    w.copy_(_quantizer(fmt, bits.weights, float(w.abs().max()), activation=False)(w))
            if bits.activations is not None:
                qin = _quantizer(fmt, bits.activations, ranges[name]["input"], activation=True)
                qout = _quantizer(fmt, bits.activations, ranges[name]["output"], activation=True)
                self.handles.append(layer.register_forward_pre_hook(lambda m, args, q=qin: (q(args[0]),) + tuple(args[1:])))
                self.handles.append(layer.register_forward_hook(lambda m, args, out, q=qout: q(out)))

    def remove(self) -> None:
        layers = compressible_layers(self.model)
        with torch.no_grad():
            for name, w in self.saved.items():
                layers[name].weight.copy_(w)
        for h in self.handles:
            h.remove()
        self.saved, self.handles = {}, []

    def __enter__(self) -> "Simulation":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UserError(f"unknown format '{fmt}': use one of {', '.join(FORMATS)}")
    return fmt


def activation_ranges(model: nn.Module, run: Callable[[nn.Module], object]) -> dict[str, dict[str, float]]:
    """max |input| and max |output| of every Conv/Linear layer over one `run(model)` in fp32 (Ristretto's range
    analysis: activation formats are fixed from the data once, not recomputed per batch)."""
    ranges = {name: {"input": 0.0, "output": 0.0} for name in compressible_layers(model)}
    handles = []

    def hook(name):
        def record(m, args, out):
            r = ranges[name]
            r["input"] = max(r["input"], float(args[0].detach().abs().max()))
            r["output"] = max(r["output"], float(out.detach().abs().max()))
        return record

    for name, layer in compressible_layers(model).items():
        handles.append(layer.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            run(model)
    finally:
        for h in handles:
            h.remove()
    return ranges


def simulate(model: nn.Module, layer_bits: dict[str, LayerBits], fmt: str = "dynamic_fixed_point",
             ranges: dict[str, dict[str, float]] | None = None) -> Simulation:
    """Apply `fmt` at the given widths to the named layers (weights in place, activations by hooks).

    `ranges` (from `activation_ranges`) fixes the activation formats; it is required when any activation is
    quantized. Use as a context manager or call `.remove()`."""
    _check_format(fmt)
    layers = compressible_layers(model)
    for name, bits in layer_bits.items():
        if name not in layers:
            raise UserError(f"layer '{name}' is not a Conv/Linear layer of the model: use one of {', '.join(layers)}")
        for kind, b in (("weights", bits.weights), ("activations", bits.activations)):
            if b is not None:
                _check_int(b, f"{name} {kind} bits", MIN_FORMAT_BITS[fmt])
        if bits.activations is not None and (ranges is None or name not in ranges):
            raise UserError(f"layer '{name}': activation formats need ranges; pass ranges=activation_ranges(model, run)")
    return Simulation(model, layer_bits, fmt, ranges or {})


# ------------------------------------------------------------------------------------------------------- trimming
@dataclass
class TrimResult:
    """What `trim_bits` found: bits per layer, the accuracy with all of them applied together, and fp32's."""
    format: str
    layer_bits: dict[str, LayerBits]
    accuracy: float
    fp32_accuracy: float
    evaluations: int = 0
    history: list[dict] = field(default_factory=list)


def trim_bits(model: nn.Module, eval_fn: Callable[[nn.Module], float], *, formats: str = "dynamic_fixed_point",
              max_drop_pp: float = 1.0, start_bits: int = 16, min_bits: int = 2) -> TrimResult:
    """Ristretto's automatic trimming: the fewest bits per layer that keep top-1 within `max_drop_pp` of fp32.

    1. fp32 accuracy A and activation ranges from one `eval_fn(model)` run; every layer starts at `start_bits`.
    2. For each layer in definition order, weights first and then activations, lower the width one bit at a time
       while `eval_fn` on the whole simulated model (every other layer at its current width) stays ≥ A − margin;
       the first width that falls below is undone and the search moves on. Each accepted step was measured with
       all layers applied together, so the final accuracy is within the margin by construction.
    Ristretto trims layer groups (conv weights, fc weights, activations) one at a time and then combines them;
    going layer by layer with the others held keeps the combined result honest without a final repair step.
    Deterministic whenever `eval_fn` is (no sampling). The model is left in fp32 afterwards.
    """
    fmt = _check_format(formats)
    floor = MIN_FORMAT_BITS[fmt]
    _check_int(start_bits, "start_bits", floor)
    _check_int(min_bits, "min_bits", floor, start_bits)
    if not (isinstance(max_drop_pp, (int, float)) and math.isfinite(max_drop_pp) and max_drop_pp >= 0):
        raise UserError(f"max_drop_pp={max_drop_pp!r} must be a finite number ≥ 0 (percentage points)")
    was_training = model.training
    model.eval()
    history: list[dict] = []

    def measure(bits: dict[str, LayerBits]) -> float:
        with simulate(model, bits, fmt, ranges), torch.no_grad():
            acc = float(eval_fn(model))
        history.append({"bits": {k: (v.weights, v.activations) for k, v in bits.items()}, "accuracy": acc})
        return acc

    ranges: dict[str, dict[str, float]] = {}
    fp32 = [0.0]
    ranges.update(activation_ranges(model, lambda m: fp32.__setitem__(0, float(eval_fn(m)))))
    target = fp32[0] - max_drop_pp
    bits = {name: LayerBits(start_bits, start_bits) for name in compressible_layers(model)}
    if not bits:
        raise UserError("the model has no Conv/Linear layers to trim")
    acc = measure(bits)
    if acc < target:
        raise UserError(f"{fmt} at start_bits={start_bits} already loses {fp32[0] - acc:.2f} pp (> {max_drop_pp}): raise start_bits")
    for name in bits:
        for kind in ("weights", "activations"):
            while getattr(bits[name], kind) > min_bits:
                setattr(bits[name], kind, getattr(bits[name], kind) - 1)
                trial = measure(bits)
                if trial < target:
                    setattr(bits[name], kind, getattr(bits[name], kind) + 1)
                    break
                acc = trial
    model.train(was_training)
    return TrimResult(fmt, bits, acc, fp32[0], len(history), history)
