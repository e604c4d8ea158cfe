"""What structured pruning changes: parameters, multiply-accumulates and measured CPU latency.

MACs per sample, counted with forward hooks on conv and linear layers:
  conv:   H_out·W_out·C_out · (C_in / groups) · k_h·k_w        linear: in_features · out_features
(LeNet-5 Caffe on 28×28: 288,000 + 1,600,000 + 400,000 + 5,000 = 2,293,000.)
Latency is the median wall time of repeated forward passes at a fixed thread count: a smaller MAC count only
matters if the hardware turns it into time, which is why NetAdapt and our benchmarks measure it.
"""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager

import torch
from torch import nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, example_input: torch.Tensor) -> int:
    """Multiply-accumulates of conv and linear layers for one sample of `example_input`'s shape."""
    total = 0

    def hook(m: nn.Module, inputs, output) -> None:
        nonlocal total
        per_sample = output[0].numel()
        if isinstance(m, _CONVS):
            total += per_sample * (m.in_channels // m.groups) * int(torch.tensor(m.kernel_size).prod())
        else:
            total += per_sample * m.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (*_CONVS, nn.Linear))]
    was_training = model.training
    try:
        model.eval()(example_input[:1])
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total


@contextmanager
def num_threads(n: int | None):
    """Run the block with `torch.set_num_threads(n)`, restoring the previous setting."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def latency_ms(model: nn.Module, example_input: torch.Tensor, repeats: int = 20, warmup: int = 3, threads: int | None = 1) -> float:
    """Median wall-clock milliseconds of one forward pass on `example_input` (eval mode, no grad)."""
    was_training = model.training
    model.eval()
    try:
        with num_threads(threads):
            for _ in range(warmup):
                model(example_input)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(example_input)
                times.append((time.perf_counter() - t0) * 1e3)
    finally:
        model.train(was_training)
    return statistics.median(times)


def latency_pair_ms(a: nn.Module, b: nn.Module, example_input: torch.Tensor, repeats: int = 20, threads: int | None = 1) -> tuple[float, float]:
    """Medians for two models timed interleaved (a, b, a, b, ...), so CPU contention hits both alike."""
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(latency_ms(a, example_input, repeats=1, warmup=1, threads=threads))
        tb.append(latency_ms(b, example_input, repeats=1, warmup=1, threads=threads))
    return statistics.median(ta), statistics.median(tb)
