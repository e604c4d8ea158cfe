"""Bias correction: remove the shift that weight quantization adds to each output channel's mean
(Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias Correction", §4.2).

Why: rounding errors ε = W̃ − W do not average out per channel; the output moves by E[ỹ] − E[y] = ε E[x],
and at low bit widths (and after per-tensor rounding of small depthwise channels) this biased error, not the
noise, is what costs accuracy. Subtracting it from the bias makes the layer unbiased on average:

    b ← b − (E[W̃ x] − E[W x])      (per output channel; for a conv the mean is over batch and positions)

Empirical: E[·] measured on calibration inputs, exactly as the layer sees them in the quantized model.
Analytic (data-free): E[x] from the previous layer's BN statistics. A BN output channel is ~N(β, γ²); after
a ReLU its mean is that of a rectified Gaussian (the paper's eq. 19):

    E[relu(x)] = γ·φ(β/γ) + β·Φ(β/γ)

and for a clipped activation (ReLU6, `ChannelClamp`) the clipped-Gaussian mean, E[clip(x, a, b)] =
a·Φ(α) + β(Φ(β') − Φ(α)) + γ(φ(α) − φ(β')) + b·(1 − Φ(β')), α = (a − β)/γ, β' = (b − β)/γ. Then
E[ε x] = Σ_i (Σ_k ε[o, i, k]) E[x_i] (zero padding at borders is ignored, as in the paper).
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from nncompress.core.errors import UserError
from nncompress.core.model_io import call_model, to_device
from nncompress.quantization.equalization import BNStats, LayerPair, find_layer_pairs, in_channel_view

_SQRT2 = math.sqrt(2.0)


def _phi(z: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _Phi(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(z / _SQRT2))


def clipped_gaussian_mean(mean, std, lower: float | torch.Tensor = 0.0, upper: float | torch.Tensor = math.inf) -> torch.Tensor:
    """E[clip(x, lower, upper)] for x ~ N(mean, std²), elementwise (std = 0 gives clip(mean)). With lower = 0
    and upper = ∞ this is the rectified-Gaussian mean std·φ(mean/std) + mean·Φ(mean/std)."""
    mu = torch.as_tensor(mean, dtype=torch.float64)
    sd = torch.as_tensor(std, dtype=torch.float64).abs()
    a = torch.as_tensor(lower, dtype=torch.float64).expand_as(mu) if mu.dim() else torch.as_tensor(lower, dtype=torch.float64)
    b = torch.as_tensor(upper, dtype=torch.float64).expand_as(mu) if mu.dim() else torch.as_tensor(upper, dtype=torch.float64)
    safe = torch.where(sd > 0, sd, torch.ones_like(sd))
    al, be = (a - mu) / safe, (b - mu) / safe
    Pa, Pb = _Phi(al), _Phi(be)
    lo_term = torch.where(torch.isfinite(a), a * Pa, torch.zeros_like(mu))
    hi_term = torch.where(torch.isfinite(b), b * (1 - Pb), torch.zeros_like(mu))
    phi_a = torch.where(torch.isfinite(al), _phi(al.clamp(-1e6, 1e6)), torch.zeros_like(mu))
    phi_b = torch.where(torch.isfinite(be), _phi(be.clamp(-1e6, 1e6)), torch.zeros_like(mu))
    m = lo_term + mu * (Pb - Pa) + sd * (phi_a - phi_b) + hi_term
    return torch.where(sd > 0, m, torch.clamp(mu, min=a, max=b)).float()


def relu_gaussian_mean(mean, std) -> torch.Tensor:
    """E[relu(x)], x ~ N(mean, std²) = std·φ(mean/std) + mean·Φ(mean/std); e.g. N(0, 1) → 1/√(2π) ≈ 0.39894."""
    return clipped_gaussian_mean(mean, std, 0.0, math.inf)


def _pre_activation(layer: nn.Module, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return F.linear(x, w)
    return layer._conv_forward(x, w, None)


def _per_channel(y: torch.Tensor, linear: bool) -> torch.Tensor:
    """[rows, C]: Linear outputs [N, …, C] keep the last dim, conv outputs [N, C, …] move dim 1 last."""
    return y.reshape(-1, y.shape[-1]) if linear else y.movedim(1, -1).reshape(-1, y.shape[1])


@torch.no_grad()
def empirical_bias_shift(layer: nn.Module, quantized_weight: torch.Tensor, inputs: Iterable[torch.Tensor]) -> torch.Tensor:
    """E[W̃ x] − E[W x] per output channel of `layer` (a conv/linear with float weight W) over `inputs`
    (for a conv, the mean runs over batch and positions). Subtract it from the bias to correct the layer."""
    total, count = None, 0
    linear = isinstance(layer, nn.Linear)
    for x in inputs:
        d = _per_channel(_pre_activation(layer, x, quantized_weight) - _pre_activation(layer, x, layer.weight), linear)
        total = d.double().sum(0) if total is None else total + d.double().sum(0)
        count += d.shape[0]
    if total is None:
        raise UserError("bias correction needs at least one calibration batch")
    return (total / count).float()


def _apply_shift(layer: nn.Module, shift: torch.Tensor) -> None:
    if layer.bias is None:
        layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0], dtype=layer.weight.dtype, device=layer.weight.device))
    layer.bias.sub_(shift.to(layer.bias.dtype).to(layer.bias.device))


class _Stop(Exception):
    pass


@torch.no_grad()
def capture_inputs(model: nn.Module, name: str, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """The first positional input module `name` receives for each batch (the forward stops right there)."""
    module = model.get_submodule(name)
    seen: list[torch.Tensor] = []

    def hook(_m, args):
        seen.append(args[0].detach())
        raise _Stop

    handle = module.register_forward_pre_hook(hook)
    try:
        for x in batches:
            try:
                call_model(model, x)  # a tensor, a tuple of inputs or a tokenizer's dict
            except _Stop:
                pass
    finally:
        handle.remove()
    if len(seen) != len(batches):
        raise UserError(f"layer '{name}' is not called in the model's forward: cannot collect its inputs")
    return seen


def _quant_layers(qmodel: nn.Module) -> list[str]:
    from nncompress.quantization.graph import QuantLayer

    names = getattr(qmodel, "quant_layers", None)
    if names is None:
        raise UserError("bias correction needs a quantized graph from quantize_static (or prepare)")
    for n in names:
        q = qmodel.get_submodule(n)
        if not isinstance(q, QuantLayer) or q.bn is not None or q.weight_quant is None:
            raise UserError(f"layer '{n}' is not a post-training QuantLayer with folded BN: bias correction needs quantize_static's graph")
    return list(names)


def _batches(data, num_batches: int, device) -> list:
    from nncompress.quantization.ptq import iter_batches

    return [to_device(x, device) for x in iter_batches(data, num_batches)]


@torch.no_grad()
def empirical_bias_correction(qmodel: nn.Module, calib_data, num_batches: int = 8) -> dict[str, torch.Tensor]:
    """Empirical bias correction of every quantized layer of a `quantize_static` graph, in place: layer by
    layer in graph order, the layer's inputs are taken from the quantized model itself (earlier corrections
    and activation quantization included) and b ← b − (E[W̃ x] − E[W x]). Returns {layer: shift removed}."""
    from nncompress.training.device import module_device

    names = _quant_layers(qmodel)
    was = qmodel.training
    qmodel.eval()
    batches = _batches(calib_data, num_batches, module_device(qmodel))
    shifts = {}
    for name in names:
        q = qmodel.get_submodule(name)
        xs = capture_inputs(qmodel, name, batches)
        shift = empirical_bias_shift(q.layer, q.quantized_weight(), xs)
        _apply_shift(q.layer, shift)
        shifts[name] = shift
    qmodel.train(was)
    return shifts


def expected_input(pair: LayerPair, stats: BNStats, float_model: nn.Module) -> torch.Tensor | None:
    """E[x] per input channel of pair.second from pair.first's BN statistics, through the pair's activation;
    None when no statistics exist or a max-pool sits between (its mean is not the input's)."""
    if pair.first not in stats or pair.pools:
        return None
    mean, std = stats[pair.first]
    if pair.act == "identity":
        return mean.clone()
    if pair.act == "relu":
        return relu_gaussian_mean(mean, std)
    if pair.act == "relu6":
        return clipped_gaussian_mean(mean, std, 0.0, 6.0)
    upper = float_model.get_submodule(pair.act_target).upper.detach().cpu()
    return clipped_gaussian_mean(mean, std, 0.0, upper)


def analytic_bias_shift(layer: nn.Module, quantized_weight: torch.Tensor, mean_input: torch.Tensor) -> torch.Tensor:
    """ε E[x] per output channel: Σ_i (Σ_k ε[o, i, k]) E[x_i], with the grouped-conv layout (padding ignored)."""
    eps = (quantized_weight - layer.weight).detach()
    groups = 1 if isinstance(layer, nn.Linear) else layer.groups
    o, cg = eps.shape[0], eps.shape[1]
    per_in = eps.reshape(groups, o // groups, cg, -1).sum(-1)
    return (per_in * mean_input.to(eps).reshape(groups, 1, cg)).sum(-1).reshape(o)


@torch.no_grad()
def analytic_bias_correction(qmodel: nn.Module, float_model: nn.Module, stats: BNStats,
                             pairs: list[LayerPair] | None = None) -> dict[str, torch.Tensor]:
    """Data-free bias correction in place: every quantized layer whose input comes (through identity, ReLU,
    ReLU6 or ChannelClamp) from a layer with BN statistics gets b ← b − ε E[x], E[x] from the clipped-Gaussian
    mean. `float_model` is the BN-folded float model the graph was quantized from (same layer names);
    `stats` its `batchnorm_statistics` (rescaled by CLE). Returns {layer: shift removed}; other layers
    (the first, those after a residual add) have no data-free E[x] and are left as they are."""
    names = set(_quant_layers(qmodel))
    if pairs is None:
        pairs = find_layer_pairs(float_model)
    shifts = {}
    for p in pairs:
        if p.second not in names:
            continue
        ex = expected_input(p, stats, float_model)
        if ex is None:
            continue
        q = qmodel.get_submodule(p.second)
        shift = analytic_bias_shift(q.layer, q.quantized_weight(), ex)
        _apply_shift(q.layer, shift)
        shifts[p.second] = shift
    return shifts
