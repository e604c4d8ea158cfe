"""Observers: watch activations during calibration and choose the clipping range [lo, hi] to quantize.

Min-max keeps every value representable but wastes codes on rare outliers; percentile, MSE and entropy
clip the tail so the bulk of the distribution gets finer steps (Wu et al. 2020, "Integer Quantization for
Deep Learning Inference: Principles and Empirical Evaluation"; Migacz 2017, "8-bit Inference with TensorRT").
Each observer is an identity module in forward (so it can sit inside a model) that records what it sees;
`qparams()` turns the chosen range into (scale, zero point) with `compute_qparams`.
Device: ranges follow the input's device and histogram buffers stay on the module's device. Counting and the
search for the clipping range run on the host: torch.histogram is CPU-only, CUDA's histc bins by another
formula, and GPU reductions sum in another order, so host arithmetic gives the same (scale, zero point)
wherever the model runs (one copy per calibration batch; the search runs once, on a few thousand bins).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from nncompress.core.errors import UserError
from nncompress.core.guards import DivergenceError
from nncompress.quantization.quantizer import compute_qparams, fake_quantize, qrange


class Observer(nn.Module):
    """Base: integer range from (bits, signed, narrow); subclasses record data and pick `clip_range()`."""

    per_channel_ok = False

    def __init__(self, bits: int = 8, signed: bool = False, symmetric: bool = False, narrow: bool = False, axis: int | None = None):
        super().__init__()
        if axis is not None and not self.per_channel_ok:
            raise UserError(f"{type(self).__name__} is per-tensor only: use MinMaxObserver or MovingAverageMinMaxObserver per channel")
        self.bits, self.signed, self.symmetric, self.narrow, self.axis = bits, signed, symmetric, narrow, axis
        self.qmin, self.qmax = qrange(bits, signed, narrow)
        self.enabled = True
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            self._observe(x.detach().float())
        return x

    @property
    def has_data(self) -> bool:
        return bool(torch.isfinite(self.min_val).all())

    @property
    def saw_nonfinite(self) -> bool:
        """NaN or ±inf was observed (min/max start at +inf/−inf, so "no data" looks different)."""
        return bool(torch.isnan(self.min_val).any() | torch.isnan(self.max_val).any()
                    | (self.min_val == float("-inf")).any() | (self.max_val == float("inf")).any())

    def _channel_minmax(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.axis is None:
            return x.min(), x.max()
        flat = x.transpose(0, self.axis).reshape(x.shape[self.axis], -1)
        return flat.min(1).values, flat.max(1).values

    def _observe(self, x: torch.Tensor) -> None:
        lo, hi = self._channel_minmax(x)
        if self.has_data:
            lo, hi = torch.minimum(self.min_val, lo), torch.maximum(self.max_val, hi)
        self.min_val, self.max_val = lo, hi

    def clip_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The real range [lo, hi] that will map onto [q_min, q_max]."""
        return self.min_val, self.max_val

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero_point); raises if nothing was observed (no calibration data reached this point)."""
        if not self.has_data:
            if self.saw_nonfinite:
                raise DivergenceError(f"calibration: {type(self).__name__} saw NaN/inf values: the model's weights or "
                                      f"activations are not finite; check the weights and the inputs")
            raise UserError(f"{type(self).__name__} has seen no data: run calibration batches through the model first")
        lo, hi = self.clip_range()
        return compute_qparams(lo, hi, self.qmin, self.qmax, self.symmetric)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}, symmetric={self.symmetric}, axis={self.axis}"


class MinMaxObserver(Observer):
    """Running minimum and maximum over all batches: nothing is ever clipped."""

    per_channel_ok = True


class MovingAverageMinMaxObserver(Observer):
    """Exponential moving average of per-batch min and max: m ← m + c·(batch_min − m), c = 0.01 (as in
    Jacob et al. 2018 for QAT); robust to a single odd batch, tracks drifting ranges during training."""

    per_channel_ok = True

    def __init__(self, *args, averaging_constant: float = 0.01, **kwargs):
        super().__init__(*args, **kwargs)
        self.c = averaging_constant

    def _observe(self, x: torch.Tensor) -> None:
        lo, hi = self._channel_minmax(x)
        if self.has_data:
            lo = self.min_val + self.c * (lo - self.min_val)
            hi = self.max_val + self.c * (hi - self.max_val)
        self.min_val, self.max_val = lo, hi


class HistogramObserver(Observer):
    """Accumulates a histogram over a symmetric range [−a, a] that widens as larger values arrive
    (old counts are re-binned at their bin centers); subclasses choose the clipping range from it."""

    def __init__(self, *args, bins: int = 4096, **kwargs):
        super().__init__(*args, **kwargs)
        self.bins = bins + bins % 2
        self.register_buffer("hist", torch.zeros(self.bins, dtype=torch.float64))
        self.register_buffer("amax", torch.tensor(0.0))
        self.register_buffer("zero_count", torch.tensor(0.0, dtype=torch.float64))

    def _observe(self, x: torch.Tensor) -> None:
        super()._observe(x)
        new_amax = float(x.abs().max())
        if new_amax > float(self.amax):
            if float(self.amax) > 0 and self.hist.sum() > 0:  # re-bin what we have into the wider range
                centers = self._centers()
                rebinned = torch.histogram(centers, bins=self.bins, range=(-new_amax, new_amax), weight=self.hist.cpu())[0]
                self.hist.copy_(rebinned)
            self.amax.fill_(new_amax)
        a = max(float(self.amax), 1e-12)
        self.hist += torch.histogram(x.double().flatten().cpu(), bins=self.bins, range=(-a, a))[0].to(self.hist.device)
        self.zero_count += float((x == 0).sum())

    def _nonzero_hist(self) -> torch.Tensor:
        """Histogram without exact zeros (e.g. after ReLU): zero is exact in every affine quantizer, so
        those values carry no error and must not pull the clipping threshold down."""
        h = self.hist.cpu().clone()
        h[self.bins // 2] -= float(self.zero_count)  # torch.histogram puts 0 into the bin starting at 0
        return h.clamp_(min=0)

    def _centers(self) -> torch.Tensor:
        a = max(float(self.amax), 1e-12)
        edges = torch.linspace(-a, a, self.bins + 1, dtype=torch.float64)  # on the host, like the search
        return (edges[:-1] + edges[1:]) / 2

    def _finish(self, lo: float, hi: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep the chosen range inside what was seen; symmetric quantizers use ±max(|lo|, |hi|)."""
        lo, hi = max(lo, float(self.min_val)), min(hi, float(self.max_val))
        return torch.tensor(lo, device=self.hist.device), torch.tensor(hi, device=self.hist.device)


class PercentileObserver(HistogramObserver):
    """Clip to the [100 − p, p] percentiles of everything seen (p = 99.99 by default): a few outliers
    no longer set the step size for the whole tensor."""

    def __init__(self, *args, percentile: float = 99.99, **kwargs):
        super().__init__(*args, **kwargs)
        if not 50.0 < percentile <= 100.0:
            raise UserError(f"percentile={percentile} must be in (50, 100]")
        self.percentile = percentile

    def clip_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        hist = self.hist.cpu()
        cdf = torch.cumsum(hist, 0) / hist.sum()
        edges = torch.linspace(-float(self.amax), float(self.amax), self.bins + 1, dtype=torch.float64)
        lo_i = int(torch.searchsorted(cdf, (100.0 - self.percentile) / 100.0))
        hi_i = int(torch.searchsorted(cdf, self.percentile / 100.0))
        return self._finish(float(edges[lo_i]), float(edges[min(hi_i + 1, self.bins)]))


class MSEObserver(HistogramObserver):
    """Clipping range minimizing the expected squared quantization error, Σ_i n_i (c_i − Q(c_i))², over the
    histogram (bin centers c_i, counts n_i), searched over [α·min, α·max] for α on a grid in (0, 1]."""

    def __init__(self, *args, grid: int = 100, **kwargs):
        super().__init__(*args, **kwargs)
        self.grid = grid

    def clip_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        c, n = self._centers().float(), self._nonzero_hist().float()
        alpha = torch.linspace(1.0 / self.grid, 1.0, self.grid)
        lo, hi = alpha * float(self.min_val), alpha * float(self.max_val)
        s, z = compute_qparams(lo, hi, self.qmin, self.qmax, self.symmetric)  # one (s, z) per candidate
        cc = c.expand(self.grid, -1)
        err = (n * (cc - fake_quantize(cc, s, z, self.qmin, self.qmax, axis=0)) ** 2).sum(1)
        best = int(torch.argmin(err))
        return self._finish(float(lo[best]), float(hi[best]))


class EntropyObserver(HistogramObserver):
    """Clipping range minimizing KL(P ‖ Q) (Migacz 2017, TensorRT calibration): P is the histogram inside a
    candidate range [α·min, α·max] with the clipped tails folded into the edge bins, Q is P merged into as
    many groups as there are integer codes and spread back evenly over each group's non-empty bins.
    Candidates scale both ends together (α on a grid in (0, 1]), so asymmetric ranges (ReLU outputs,
    standardized images) keep their shape; exact zeros are left out (they are exact in every quantizer).

    Point masses ("spikes") are kept out of the spreading: a conv's response to a constant image background
    is one value per channel, often most of the non-zero mass. A quantizer maps such a value to one code, so
    its distribution survives whole; TensorRT's even spreading instead charges it log(bins per group) of KL,
    a cost that grows with the histogram's resolution, not with the step size, and that made KL clip the
    informative tail to a tenth of the range (a conv-BN net on mnist5k fell from 93 % to 11 %: issue 12).
    Spikes (a bin holding more than `spike_factor` times its neighbourhood's median and ≥ 0.1 % of the mass)
    stay in P and Q alike when inside the range, and are folded into P's edge bin like any clipped value."""

    def __init__(self, *args, grid: int = 128, spike_factor: float = 16.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.grid, self.spike_factor = grid, spike_factor

    def _split_spikes(self, hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(smooth part, spikes) of a histogram: spike bins exceed `spike_factor` × the median of the ±16
        bins around them (their immediate neighbours left out, a re-binned spike may straddle two bins)."""
        total = hist.sum()
        if total <= 0:
            return hist, np.zeros_like(hist)
        w = 16
        padded = np.pad(hist, w, mode="constant")
        windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * w + 1)
        keep = np.ones(2 * w + 1, dtype=bool)
        keep[w - 1:w + 2] = False
        local = np.median(windows[:, keep], axis=1)
        spike = (hist > self.spike_factor * np.maximum(local, 1.0)) & (hist >= 1e-3 * total)
        smooth = np.where(spike, local, hist)
        return smooth, hist - smooth

    def clip_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        hist = self._nonzero_hist().numpy()
        a = float(self.amax)
        lo0, hi0 = float(self.min_val), float(self.max_val)
        if a <= 0 or hist.sum() <= 0:  # all exact zeros (a dead channel set): nothing to clip
            return self._finish(lo0, hi0)
        width = 2 * a / self.bins
        if self.symmetric:
            lo0, hi0 = -max(-lo0, hi0), max(-lo0, hi0)
        levels = self.qmax - self.qmin + 1
        smooth, spikes = self._split_spikes(hist)
        best, best_kl = (lo0, hi0), float("inf")
        for alpha in np.linspace(1.0 / self.grid, 1.0, self.grid):
            i0 = int(np.clip(np.floor((alpha * lo0 + a) / width), 0, self.bins - 1))
            i1 = int(np.clip(np.ceil((alpha * hi0 + a) / width), i0 + 1, self.bins))
            inside = smooth[i0:i1]
            n = len(inside)
            if n < 2 or hist[i0:i1].sum() == 0:
                continue
            p = hist[i0:i1].copy()
            p[0] += hist[:i0].sum()
            p[-1] += hist[i1:].sum()
            starts = np.unique(np.linspace(0, n, min(levels, n) + 1).astype(int)[:-1])
            sums = np.add.reduceat(inside, starts)
            nonzero = np.add.reduceat((inside > 0).astype(np.float64), starts)
            group = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, n)))
            q = np.where(inside > 0, sums[group] / np.maximum(nonzero[group], 1), 0.0) + spikes[i0:i1]
            pn, qn = p / p.sum(), q / q.sum()
            mask = pn > 0
            kl = float(np.sum(pn[mask] * np.log(pn[mask] / np.maximum(qn[mask], 1e-12))))
            if kl < best_kl:
                best, best_kl = (alpha * lo0, alpha * hi0), kl
        return self._finish(*best)


OBSERVERS: dict[str, type[Observer]] = {
    "minmax": MinMaxObserver,
    "moving_average": MovingAverageMinMaxObserver,
    "percentile": PercentileObserver,
    "mse": MSEObserver,
    "entropy": EntropyObserver,
}


def make_observer(name: str, **kwargs) -> Observer:
    """Observer by name: minmax, moving_average, percentile, mse, entropy."""
    if name not in OBSERVERS:
        raise UserError(f"unknown calibration '{name}': choose one of {', '.join(OBSERVERS)}")
    return OBSERVERS[name](**kwargs)
