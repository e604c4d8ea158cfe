"""AdaRound: learn, per weight, whether to round up or down so the layer's *output* is preserved, instead of
rounding each weight to its nearest grid point (Nagel, Amjad, van Baalen, Louizos, Blankevoort 2020,
"Up or Down? Adaptive Rounding for Post-Training Quantization", ICML).

Why: nearest rounding minimizes each weight's error, not the layer's; at 4 bits the correlated errors add
up (the paper: ResNet-18 W4A8 70.4 % with AdaRound vs 52.3 % rounding to nearest, fp32 71.1 %).

Per layer, with scale s, zero point z and code range [n, p] fixed by the project's weight quantizer
(symmetric min-max, per tensor or per channel: the same (s, z) `quantize_static` uses), a continuous V
parameterizes the rounding through the rectified sigmoid

    h(V) = clip(σ(V)·(ζ − γ) + γ, 0, 1),   ζ = 1.1, γ = −0.1
    W̃    = s · (clip(⌊W/s⌋ + h(V) + z, n, p) − z)

and V minimizes the layer-output reconstruction error plus a regularizer that pushes h to 0 or 1:

    ‖f(W x) − f(W̃ x̃)‖²  +  λ Σ (1 − |2h(V) − 1|^β)

f is the fused activation (ReLU) when the layer has one; β anneals linearly from 20 to 2 after a warm-up
(20 % of the iterations) without the regularizer; x are the float model's layer inputs, x̃ the same or
(the paper's asymmetric reconstruction, §5) the inputs the layer sees in the quantized model, so a layer
also repairs the error of the layers before it. At the end h is hard-rounded (h ≥ 0.5 ⇔ V ≥ 0) and the
weights written back lie exactly on the quantization grid.

Grid and export: `quantize_static`'s weight quantizer recomputes (s, z) from the weight's own min-max. The
weight of largest |w| in each scale group (the tensor, or each output channel) keeps its nearest code
±p, so that range, and hence s, is unchanged by the write-back: quantizing the written weights again
returns them (to float rounding), and fake-quant, int8 lowering and ONNX export see the AdaRound codes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nncompress.core.errors import UserError
from nncompress.quantization.bias_correction import _batches, _quant_layers, capture_inputs
from nncompress.quantization.observers import MinMaxObserver
from nncompress.quantization.quantizer import _bcast

ZETA, GAMMA = 1.1, -0.1


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """h(V) = clip(σ(V)·(ζ − γ) + γ, 0, 1): reaches exactly 0 and 1 at finite V, so rounding can settle."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _inverse_h(rest: torch.Tensor) -> torch.Tensor:
    """V with h(V) = rest (the fractional part): optimization starts from the float weights."""
    p = ((rest - GAMMA) / (ZETA - GAMMA)).clamp(1e-4, 1 - 1e-4)
    return torch.log(p / (1 - p))


@dataclass
class AdaRoundConfig:
    """iters: optimization steps per layer; lr: Adam step on V; reg_weight: λ; beta: (start, end) of the
    annealed exponent; warmup: fraction of iterations without the regularizer; batch_size: samples per
    step; seed: sample order (the result is deterministic given it and the thread count)."""

    iters: int = 1000
    lr: float = 1e-2
    reg_weight: float = 0.01
    beta: tuple[float, float] = (20.0, 2.0)
    warmup: float = 0.2
    batch_size: int = 32
    seed: int = 0

    def validate(self) -> "AdaRoundConfig":
        if isinstance(self.iters, bool) or not isinstance(self.iters, int) or self.iters < 1:
            raise UserError(f"AdaRound iters={self.iters!r}: use a whole number ≥ 1")
        if not (self.lr > 0 and math.isfinite(self.lr)) or not (self.reg_weight >= 0 and math.isfinite(self.reg_weight)):
            raise UserError(f"AdaRound lr={self.lr} must be > 0 and reg_weight={self.reg_weight} ≥ 0 (finite)")
        if not 0.0 <= self.warmup < 1.0 or self.batch_size < 1 or min(self.beta) <= 0:
            raise UserError(f"AdaRound warmup={self.warmup} must be in [0, 1), batch_size ≥ 1, beta > 0")
        return self


def weight_qparams(weight: torch.Tensor, bits: int = 4, granularity: str = "channel") -> tuple[torch.Tensor, torch.Tensor, int, int, int | None]:
    """(s, z, q_min, q_max, axis) exactly as `quantize_static` quantizes weights: symmetric, signed, narrow
    (codes ±(2^(b−1) − 1)), min-max, per output channel or per tensor."""
    if granularity not in ("tensor", "channel"):
        raise UserError(f"unknown granularity '{granularity}': use 'tensor' or 'channel'")
    axis = 0 if granularity == "channel" else None
    obs = MinMaxObserver(bits, signed=True, symmetric=True, narrow=True, axis=axis)
    obs(weight.detach())
    s, z = obs.qparams()
    return s, z, obs.qmin, obs.qmax, axis


def _layer_forward(layer: nn.Module, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return F.linear(x, w, layer.bias)
    return layer._conv_forward(x, w, layer.bias)


def _reconstruction(out: torch.Tensor, target: torch.Tensor, linear: bool) -> torch.Tensor:
    """Squared error summed over the channel dim, averaged over samples (and positions)."""
    return (out - target).pow(2).sum(-1 if linear else 1).mean()


def _anchor(w: torch.Tensor, axis: int | None) -> torch.Tensor:
    """True at the weight(s) of largest |w| in each scale group: they keep their nearest code (see module doc)."""
    a = w.abs()
    if axis is None:
        return a == a.max()
    return a == _bcast(a.transpose(0, axis).reshape(w.shape[axis], -1).amax(1), w, axis)


def adaround_weight(layer: nn.Module, inputs: torch.Tensor | list[torch.Tensor], scale, zero_point, qmin: int, qmax: int,
                    axis: int | None = 0, target: torch.Tensor | list[torch.Tensor] | None = None, relu: bool = False,
                    config: AdaRoundConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Learn the rounding of `layer.weight` (conv or linear; the layer is not modified).

    inputs: the layer's inputs (one tensor [N, …] or a list of batches); target: the reference outputs
    f(W x) for those samples (default: the float layer on `inputs`, ReLU'd when `relu`). Returns
    (weight on the grid, integer codes) with weight = s·(codes − z), codes in [q_min, q_max]."""
    cfg = (config or AdaRoundConfig()).validate()
    if not isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        raise UserError(f"AdaRound quantizes Conv/Linear weights, got {type(layer).__name__}")
    x = torch.cat(list(inputs)) if isinstance(inputs, (list, tuple)) else inputs
    x = x.detach()
    linear = isinstance(layer, nn.Linear)
    w = layer.weight.detach()
    act = torch.relu if relu else (lambda t: t)
    with torch.no_grad():
        y = act(_layer_forward(layer, x, w)) if target is None else \
            (torch.cat(list(target)) if isinstance(target, (list, tuple)) else target).detach()
    if y.shape[0] != x.shape[0]:
        raise UserError(f"AdaRound target has {y.shape[0]} samples but inputs have {x.shape[0]}")
    s = _bcast(torch.as_tensor(scale, dtype=w.dtype), w, axis).to(w.device)
    z = _bcast(torch.as_tensor(zero_point).to(w.dtype), w, axis).to(w.device)
    w_floor = torch.floor(w / s)
    rest = w / s - w_floor
    fixed = _anchor(w, axis)
    h_fixed = (rest >= 0.5).to(w.dtype)
    v = _inverse_h(rest).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    n = x.shape[0]
    warm = int(cfg.warmup * cfg.iters)
    b0, b1 = cfg.beta
    for t in range(cfg.iters):
        idx = torch.randint(n, (min(cfg.batch_size, n),), generator=gen).to(x.device)
        h = torch.where(fixed, h_fixed, rectified_sigmoid(v))
        wq = s * (torch.clamp(w_floor + h + z, qmin, qmax) - z)
        loss = _reconstruction(act(_layer_forward(layer, x[idx], wq)), y[idx], linear)
        if t >= warm and cfg.reg_weight > 0:
            rel = (t - warm) / max(cfg.iters - warm, 1)
            beta = b1 + (b0 - b1) * max(0.0, 1.0 - rel)
            hf = rectified_sigmoid(v)[~fixed]
            loss = loss + cfg.reg_weight * (1 - (2 * hf - 1).abs().pow(beta)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        up = torch.where(fixed, h_fixed, (v >= 0).to(w.dtype))
        codes = torch.clamp(w_floor + up + z, qmin, qmax)
        return (s * (codes - z)).to(w.dtype), codes.to(torch.int32)


def nearest_weight(weight: torch.Tensor, scale, zero_point, qmin: int, qmax: int, axis: int | None = 0) -> torch.Tensor:
    """Round-to-nearest on the same grid (the baseline AdaRound is compared with)."""
    s = _bcast(torch.as_tensor(scale, dtype=weight.dtype), weight, axis)
    z = _bcast(torch.as_tensor(zero_point).to(weight.dtype), weight, axis)
    return s * (torch.clamp(torch.round(weight / s) + z, qmin, qmax) - z)


@torch.no_grad()
def reconstruction_error(layer: nn.Module, weight: torch.Tensor, inputs: torch.Tensor, target: torch.Tensor | None = None,
                         relu: bool = False) -> float:
    """‖f(W x) − f(W' x)‖² per sample (summed over channels, averaged over samples and positions)."""
    act = torch.relu if relu else (lambda t: t)
    y = act(_layer_forward(layer, inputs, layer.weight)) if target is None else target
    return float(_reconstruction(act(_layer_forward(layer, inputs, weight)), y, isinstance(layer, nn.Linear)))


def apply_adaround(qmodel: nn.Module, float_model: nn.Module, calib_data, num_batches: int = 8, asymmetric: bool = True,
                   config: AdaRoundConfig | None = None) -> dict[str, tuple[float, float]]:
    """AdaRound every quantized layer of a `quantize_static` graph in place, in graph order.

    float_model: the BN-folded float model the graph came from (same layer names, e.g. `fuse_conv_bn(model)`);
    its layer outputs are the targets. asymmetric: optimize on the inputs each layer sees in the quantized
    model (earlier layers already rounded, activations quantized) instead of the float inputs.
    Returns {layer: (reconstruction error with nearest rounding, with AdaRound)} on the calibration inputs."""
    from nncompress.quantization.fake_quant import FakeQuantize
    from nncompress.training.device import module_device

    cfg = (config or AdaRoundConfig()).validate()
    names = _quant_layers(qmodel)
    was_q, was_f = qmodel.training, float_model.training
    qmodel.eval()
    float_model.eval()
    batches = _batches(calib_data, num_batches, module_device(qmodel))
    report = {}
    for name in names:
        q = qmodel.get_submodule(name)
        wq = q.weight_quant
        if not isinstance(wq, FakeQuantize) or not wq.dynamic:
            raise UserError(f"layer '{name}': AdaRound needs the min-max weight quantizer of quantize_static, got {type(wq).__name__}")
        x_float = capture_inputs(float_model, name, batches)
        with torch.no_grad():
            target = torch.cat([(torch.relu if q.relu else (lambda t: t))(float_model.get_submodule(name)(x)) for x in x_float])
        x_in = torch.cat(capture_inputs(qmodel, name, batches) if asymmetric else x_float)
        w = q.layer.weight.detach()
        s, z = wq.qparams_for(w)
        before = reconstruction_error(q.layer, nearest_weight(w, s, z, wq.qmin, wq.qmax, wq.axis), x_in, target, q.relu)
        w_new, _ = adaround_weight(q.layer, x_in, s, z, wq.qmin, wq.qmax, wq.axis, target=target, relu=q.relu, config=cfg)
        after = reconstruction_error(q.layer, w_new, x_in, target, q.relu)
        with torch.no_grad():
            q.layer.weight.copy_(w_new)
        report[name] = (before, after)
    qmodel.train(was_q)
    float_model.train(was_f)
    return report
