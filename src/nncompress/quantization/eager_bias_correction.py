"""Empirical bias correction for module-swapped models: no graph, so it works on whatever `quantize_` works on.

Why: rounding weights (and activations) to a grid moves each output channel's mean, E[ỹ_c] ≠ E[y_c], and those
shifts do not cancel — they add up through the network (Nagel et al. 2019, "Data-Free Quantization Through
Weight Equalization and Bias Correction", §4.2; the graph version is `bias_correction.empirical_bias_correction`).
Measured on calibration data against the float model, per output channel c of every quantized layer:

    b_c ← b_c − (E[ỹ_c] − E[y_c])      (mean over the batch and every position; ỹ from the quantized model, y
                                         from the float one, each at the same layer, each fed its own upstream)

so each layer also absorbs the mean drift that upstream layers hand it, as AIMET's empirical bias correction does.
A layer without a bias gets one (a convolution before BatchNorm: the shift of its output is what BN sees).

Order: correcting layer l changes what layer l+1 sees, so the corrections must be made in execution order
(Gauss–Seidel), not all at once from one measurement: simultaneous (Jacobi) updates double-count every upstream
shift, and through a deep net with BatchNorm gains the over-corrections grow from sweep to sweep (measured on
EfficientNet-Lite0: the residual went 5·10⁶ → 8·10⁷ → 2·10⁹ standard deviations). Sequential correction without
L passes: one forward hook per layer, fired in execution order, keeps a running mean of the layer's output over
the calibration batches seen so far, subtracts the correction it implies from the output on the spot (so the
layers after it see corrected inputs within the same pass), and moves it into the bias at the end of the sweep.
A second sweep removes what remains from the first batches having seen not-yet-settled upstream corrections;
the report lists, per sweep, the largest correction relative to that layer's output standard deviation, so
convergence is visible, not assumed.

Layers with a fused ReLU (`relu=True`, which `quantize_` never sets) are left alone: the bias moves the
pre-activation, the hook sees the post-activation.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import nn

from nncompress.core.errors import UserError
from nncompress.core.model_io import run_batches
from nncompress.quantization.modules import QuantizedConv, QuantizedLinear


def _channel_dim(module: nn.Module) -> int:
    return 1 if isinstance(module, (QuantizedConv, nn.Conv1d, nn.Conv2d)) else -1


class _ChannelMoments:
    """Running per-channel sum and sum of squares of a layer's output (channels on `dim`), in float64."""

    def __init__(self, dim: int):
        self.dim, self.n, self.sum, self.sq = dim, 0, None, None

    def __call__(self, _module, _args, output) -> None:
        y = output.detach().double().movedim(self.dim, -1)
        y = y.reshape(-1, y.shape[-1])
        s, q = y.sum(0), (y * y).sum(0)
        self.sum, self.sq = (s, q) if self.sum is None else (self.sum + s, self.sq + q)
        self.n += y.shape[0]

    def mean(self) -> torch.Tensor:
        return self.sum / self.n

    def std(self) -> torch.Tensor:
        return (self.sq / self.n - self.mean() ** 2).clamp_min(0).sqrt()


@contextmanager
def _forward_hooks(layers: dict[str, nn.Module], hooks: dict):
    """`hooks[name]` on the output of `layers[name]` for the duration of the block."""
    handles = [m.register_forward_hook(hooks[name]) for name, m in layers.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def _moments(model: nn.Module, layers: dict[str, nn.Module], batches: list, forward_fn: Callable | None) -> dict[str, _ChannelMoments]:
    stats = {name: _ChannelMoments(_channel_dim(m)) for name, m in layers.items()}
    with _forward_hooks(layers, stats):
        run_batches(model, batches, forward_fn)
    missing = [name for name, s in stats.items() if s.n == 0]
    if missing:
        raise UserError(f"bias correction: layer(s) {', '.join(missing[:3])} never ran on the calibration data; "
                        "pass batches that reach every quantized layer")
    return stats


class _RunningCorrection:
    """Forward hook of one layer during a sweep: the running mean of its output (channels on `dim`) over the
    batches so far, and the output handed on with the correction it implies already subtracted."""

    def __init__(self, dim: int, target_mean: torch.Tensor):
        self.dim, self.target, self.n, self.sum = dim, target_mean, 0, torch.zeros_like(target_mean)

    def correction(self) -> torch.Tensor:
        return self.sum / max(self.n, 1) - self.target

    def __call__(self, _module, _args, output):
        y = output.detach().double().movedim(self.dim, -1)
        y = y.reshape(-1, y.shape[-1])
        self.sum += y.sum(0)
        self.n += y.shape[0]
        shape = [1] * output.dim()
        shape[self.dim] = -1
        return output - self.correction().to(output.dtype).reshape(shape)


@torch.no_grad()
def _sequential_sweep(quantized: nn.Module, layers: dict[str, nn.Module], target: dict[str, _ChannelMoments],
                      batches: list, forward_fn: Callable | None) -> float:
    """One Gauss–Seidel sweep; returns the largest correction made, over the layer's RMS output std."""
    running = {name: _RunningCorrection(_channel_dim(m), target[name].mean()) for name, m in layers.items()}
    with _forward_hooks(layers, running):
        run_batches(quantized, batches, forward_fn)
    worst = 0.0
    for name, m in layers.items():
        if running[name].n == 0:
            raise UserError(f"bias correction: layer '{name}' never ran on the calibration data; "
                            "pass batches that reach every quantized layer")
        shift = running[name].correction()
        scale = float(target[name].std().pow(2).mean().sqrt()) or 1.0
        worst = max(worst, float(shift.abs().max()) / scale)
        m.bias -= shift.to(m.bias.dtype)
    return worst


def correct_biases_(quantized: nn.Module, reference: nn.Module, calib_data, num_batches: int = 8, sweeps: int = 3,
                    forward_fn: Callable | None = None) -> dict:
    """Correct, in place, the biases of every QuantizedLinear / QuantizedConv of `quantized` (from `quantize_`)
    against `reference` (the float model it came from, same module names). Returns a report: the layers corrected,
    those skipped and why, and per sweep the largest correction |E[ỹ] − E[y]| relative to the layer's RMS output
    standard deviation (the first sweep makes the correction, later ones show what was left)."""
    from nncompress.quantization.swap import _batches

    if isinstance(sweeps, bool) or not isinstance(sweeps, int) or sweeps < 1:
        raise UserError(f"sweeps={sweeps!r}: bias correction needs at least one sweep")
    ref_modules = dict(reference.named_modules())
    layers, pairs, skipped = {}, {}, {}
    for name, m in quantized.named_modules():
        if not isinstance(m, (QuantizedLinear, QuantizedConv)):
            continue
        if m.relu:
            skipped[name] = "ReLU fused into the layer: the hook sees the post-activation"
            continue
        ref = ref_modules.get(name)
        if not isinstance(ref, (nn.Linear, nn.Conv1d, nn.Conv2d)) or ref.weight.shape[0] != m.weight_q.codes.shape[0]:
            raise UserError(f"bias correction: the reference model has no float layer '{name}' with "
                            f"{m.weight_q.codes.shape[0]} outputs; pass the float model `quantize_` was given (a copy "
                            "made before quantizing)")
        layers[name], pairs[name] = m, ref
    if not layers:
        raise UserError("bias correction: the model has no quantized Linear/Conv layer; run quantize_ first")
    batches = _batches(calib_data, num_batches)
    target = _moments(reference, pairs, batches, forward_fn)
    for name, m in layers.items():
        if m.bias is None:
            m.bias = torch.zeros(m.weight_q.codes.shape[0], dtype=torch.float32, device=m.weight_q.scale.device)
    residuals = []
    for _ in range(sweeps):
        residuals.append(round(_sequential_sweep(quantized, layers, target, batches, forward_fn), 6))
    return {"corrected": list(layers), "skipped": skipped, "largest_correction_over_output_std_per_sweep": residuals,
            "sweeps": sweeps, "calibration_batches": len(batches)}
