"""What structured pruning changes: parameters, multiply-accumulates and measured CPU latency.

Thin adapters over `nncompress.analysis` with the signatures the structured pruners use (an example input
tensor with a batch dimension rather than a per-sample shape; plain floats and ints rather than reports).
MACs per sample (`analysis.macs`): conv H_out·W_out·C_out·(C_in/groups)·k_h·k_w, linear in_features·out_features
(LeNet-5 Caffe on 28×28: 288,000 + 1,600,000 + 400,000 + 5,000 = 2,293,000).
Latency is the median wall time of repeated forward passes at a fixed thread count: a smaller MAC count only
matters if the hardware turns it into time, which is why NetAdapt and our benchmarks measure it.
"""
from __future__ import annotations

import torch
from torch import nn

from nncompress.analysis import latency as _latency
from nncompress.analysis.latency import num_threads
from nncompress.analysis.macs import count_macs as _count_macs
from nncompress.pruning.structured.graph import model_input

__all__ = ["count_macs", "count_params", "latency_ms", "latency_pair_ms", "num_threads"]


def count_params(model: nn.Module) -> int:
    """Every parameter element of the model (thinned layers count what they hold)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example_input: torch.Tensor) -> int:
    """Multiply-accumulates for one sample of `example_input`'s shape (its first dimension is the batch)."""
    return _count_macs(model, tuple(example_input.shape[1:])).total_macs


def latency_ms(model: nn.Module, example_input: torch.Tensor, repeats: int = 20, warmup: int = 3, threads: int | None = 1) -> float:
    """Median wall-clock milliseconds of one forward pass on `example_input` (eval mode, no grad), on the model's device."""
    return _latency.measure_latency_ms(model, model_input(model, example_input), warmup, repeats, threads).median_ms


def latency_pair_ms(a: nn.Module, b: nn.Module, example_input: torch.Tensor, repeats: int = 20, threads: int | None = 1) -> tuple[float, float]:
    """Medians for two models timed interleaved (a, b, a, b, ...), so CPU contention hits both alike (on a's device)."""
    ra, rb = _latency.measure_pair_ms(a, b, model_input(a, example_input), warmup=1, repeats=repeats, threads=threads)
    return ra.median_ms, rb.median_ms
