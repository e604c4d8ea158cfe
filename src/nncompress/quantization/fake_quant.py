"""Fake-quantization modules: quantize-dequantize in forward, trainable in backward.

Straight-through estimator (Bengio et al. 2013; Jacob et al. 2018): round() has zero gradient almost
everywhere, so backward treats Q(x) as the identity inside the clipping range and as 0 outside:
    ∂Q/∂x = 1 if q_min ≤ x/s + z ≤ q_max else 0.
Learned step size (Esser et al. 2020, LSQ): the step s is a parameter, x̂ = round(clip(x/s, −Q_N, Q_P))·s with
    ∂x̂/∂s = −x/s + round(x/s) inside, −Q_N or Q_P outside,   scaled by g = 1/√(N·Q_P)  (N elements per step).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from nncompress.quantization.observers import MinMaxObserver, Observer
from nncompress.quantization.quantizer import _bcast, binarize, fake_quantize, qrange, quantize


def fake_quantize_ste(x: torch.Tensor, scale, zero_point, qmin: int, qmax: int, axis: int | None = None) -> torch.Tensor:
    """Q(x) in forward; gradient 1 where x falls inside the integer range, 0 where it is clipped."""
    s = _bcast(scale, x, axis).to(x.dtype)
    z = _bcast(zero_point, x, axis).to(x.dtype)
    xq = fake_quantize(x.detach(), scale, zero_point, qmin, qmax, axis)
    if not x.requires_grad:
        return xq
    code = x.detach() / s + z
    inside = (code >= qmin - 0.5) & (code <= qmax + 0.5)
    return xq + (x - x.detach()) * inside


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return (torch.round(x) - x).detach() + x


def _grad_scale(s: torch.Tensor, g: float) -> torch.Tensor:
    """Forward: s. Backward: g · ∂L/∂s."""
    return (s - s * g).detach() + s * g


class FakeQuantize(nn.Module):
    """Observer-driven fake quantization.

    While `observing`, the observer records what passes (calibration, or tracking weights/EMA ranges in QAT).
    While `quantizing`, values are fake-quantized with the observer's qparams (STE in backward).
    `freeze()` stops observing and caches (scale, zero_point) as buffers, as a deployed model would.
    `dynamic=True` recomputes per-tensor min-max qparams from every input (dynamic quantization).
    """

    def __init__(self, observer: Observer, observing: bool = True, quantizing: bool = False, dynamic: bool = False):
        super().__init__()
        self.observer = observer
        self.observing, self.quantizing, self.dynamic = observing, quantizing, dynamic
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))
        self.frozen = False

    @property
    def qmin(self) -> int:
        return self.observer.qmin

    @property
    def qmax(self) -> int:
        return self.observer.qmax

    @property
    def axis(self) -> int | None:
        return self.observer.axis

    @property
    def bits(self) -> int:
        return self.observer.bits

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.scale, self.zero_point) if self.frozen else self.observer.qparams()

    def qparams_for(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (scale, zero point) this quantizer applies to `x` (weights: recomputed from x itself)."""
        if self.dynamic:
            obs = MinMaxObserver(self.bits, self.observer.signed, self.observer.symmetric, self.observer.narrow, self.observer.axis)
            obs(x)
            return obs.qparams()
        return self.qparams()

    def freeze(self) -> None:
        self.scale, self.zero_point = (t.clone() for t in self.observer.qparams())
        self.frozen, self.observing, self.quantizing = True, False, True

    def forward(self, x: torch.Tensor, observe: bool = True) -> torch.Tensor:
        if self.dynamic:
            s, z = self.qparams_for(x)
            return fake_quantize_ste(x, s.to(x.device), z.to(x.device), self.qmin, self.qmax, self.axis)
        if self.observing and observe:
            self.observer(x)
        if not self.quantizing:
            return x
        s, z = self.qparams()
        return fake_quantize_ste(x, s.to(x.device), z.to(x.device), self.qmin, self.qmax, self.axis)

    def extra_repr(self) -> str:
        return f"observing={self.observing}, quantizing={self.quantizing}, dynamic={self.dynamic}, frozen={self.frozen}"


class LSQQuantizer(nn.Module):
    """Learned step size quantization (Esser et al. 2020). Symmetric, zero point 0; codes in [−Q_N, Q_P]
    (signed: Q_N = 2^(b−1), Q_P = 2^(b−1) − 1; unsigned: Q_N = 0, Q_P = 2^b − 1); per channel along `axis`.

    The step is initialised on the first tensor seen: init="lsq" uses the paper's 2·mean|x|/√Q_P;
    init="minmax" uses max|x|/Q_P (per channel too: nothing clipped, what PTQ would use); init="mse" uses the
    MSE-optimal clipping range (per tensor, as in LSQ+, Bhalgat et al. 2020). Starting from the PTQ
    solution keeps short fine-tuning runs close to the float model."""

    def __init__(self, bits: int = 4, signed: bool = True, axis: int | None = None, narrow: bool = False, init: str = "lsq"):
        super().__init__()
        if init not in ("lsq", "minmax", "mse"):
            raise ValueError(f"unknown LSQ init '{init}': use 'lsq', 'minmax' or 'mse'")
        if init == "mse" and axis is not None:
            raise ValueError("init='mse' is per tensor (activations); use init='lsq' per channel")
        self.bits, self.signed, self._axis, self.init = bits, signed, axis, init
        self._qmin, self._qmax = qrange(bits, signed, narrow)
        self.q_n, self.q_p = -self._qmin, self._qmax
        self.step = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("initialized", torch.tensor(False))

    qmin = property(lambda self: self._qmin)
    qmax = property(lambda self: self._qmax)
    axis = property(lambda self: self._axis)

    def _init_step(self, x: torch.Tensor) -> None:
        if self.init == "mse":
            from nncompress.quantization.observers import MSEObserver

            obs = MSEObserver(self.bits, signed=self.signed)
            obs(x.detach().float())
            lo, hi = (float(v) for v in obs.clip_range())
            step = max(hi / max(self.q_p, 1), (-lo / self.q_n) if self.q_n else 0.0, 1e-8)
            self.step.data = torch.tensor(step, device=self.step.device)
            self.initialized.fill_(True)
            return
        a = x.detach().abs()
        flat = a.reshape(1, -1) if self._axis is None else a.transpose(0, self._axis).reshape(x.shape[self._axis], -1)
        if self.init == "minmax":
            step = flat.max(1).values / max(self.q_p, 1)
        else:
            step = 2 * flat.mean(1) / math.sqrt(max(self.q_p, 1))
        step = torch.clamp(step if self._axis is not None else step[0], min=1e-8)
        self.step.data = step.to(self.step.device)
        self.initialized.fill_(True)

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.step.detach().abs().clamp(min=1e-8)
        return s, torch.zeros(s.shape, dtype=torch.int32, device=s.device)

    def qparams_for(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.qparams()

    def forward(self, x: torch.Tensor, observe: bool = True) -> torch.Tensor:
        if not bool(self.initialized):
            self._init_step(x)
        n = x.numel() if self._axis is None else x.numel() // x.shape[self._axis]
        g = 1.0 / math.sqrt(n * max(self.q_p, 1))
        s = _bcast(_grad_scale(self.step.abs().clamp(min=1e-8), g), x, self._axis)
        return _round_ste(torch.clamp(x / s, -self.q_n, self.q_p)) * s

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}, axis={self._axis}, init={self.init}"


class BinaryQuantizer(nn.Module):
    """1-bit weights: α·sign(w) with α = mean|w| per channel (XNOR-Net); straight-through gradient where
    |w| ≤ 1 (BinaryConnect's hard-tanh STE). Codes are ±1 with scale α, so int8 kernels run them too."""

    bits, qmin, qmax = 1, -1, 1

    def __init__(self, axis: int | None = 0):
        super().__init__()
        self.axis = axis

    def qparams_for(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = w.detach().abs()
        alpha = a.mean() if self.axis is None else a.transpose(0, self.axis).reshape(w.shape[self.axis], -1).mean(1)
        return alpha, torch.zeros(alpha.shape, dtype=torch.int32, device=alpha.device)

    def forward(self, w: torch.Tensor, observe: bool = True) -> torch.Tensor:
        wb = binarize(w.detach(), self.axis)
        if not w.requires_grad:
            return wb
        return wb + (w - w.detach()) * (w.detach().abs() <= 1)


def weight_codes(wq: nn.Module, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(integer codes, scale) a weight quantizer stores for `w`; dequantized, codes · scale is its forward."""
    s, z = wq.qparams_for(w)
    if isinstance(wq, BinaryQuantizer):
        return torch.where(w >= 0, 1, -1).to(torch.int32), s
    return quantize(w, s, z, wq.qmin, wq.qmax, wq.axis), s
