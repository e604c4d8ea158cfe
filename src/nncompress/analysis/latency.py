"""Wall-clock latency: warm up, then the median (and 10th/90th percentiles) of many timed calls.

Medians resist the outliers a shared machine produces; always compare models measured side by side
in one run with the same thread count.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from nncompress.core.errors import UserError


@dataclass(frozen=True)
class LatencyResult:
    median_ms: float
    p10_ms: float
    p90_ms: float
    threads: int | None  # torch intra-op threads during the measurement (None: left as it was)
    repeats: int


def _check(warmup: int, repeats: int, threads: int | None) -> None:
    if warmup < 0:
        raise UserError(f"warmup must be >= 0, got {warmup}")
    if repeats < 1:
        raise UserError(f"repeats must be >= 1, got {repeats}")
    if threads is not None and threads < 1:
        raise UserError(f"threads must be >= 1 (or None to leave torch's setting), got {threads}")


def measure_callable_ms(fn: Callable[[], Any], warmup: int = 5, repeats: int = 30, threads: int | None = 1) -> LatencyResult:
    """Time `fn()` (any callable, e.g. an ONNX Runtime `session.run` wrapped in a lambda) with time.perf_counter.

    `threads` sets torch.set_num_threads for the measurement and restores it afterwards; it does not
    reach other runtimes (give ONNX Runtime its intra_op_num_threads in the session options).
    """
    _check(warmup, repeats, threads)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        for _ in range(warmup):
            fn()
        times_ms = np.empty(repeats)
        for i in range(repeats):
            t0 = time.perf_counter()
            fn()
            times_ms[i] = (time.perf_counter() - t0) * 1e3
    finally:
        torch.set_num_threads(before)
    p10, p50, p90 = np.percentile(times_ms, [10, 50, 90])
    return LatencyResult(float(p50), float(p10), float(p90), threads, repeats)


def measure_latency_ms(model: nn.Module, example_input: torch.Tensor | tuple[torch.Tensor, ...], warmup: int = 5,
                       repeats: int = 30, threads: int | None = 1) -> LatencyResult:
    """Latency of `model(example_input)` in eval mode under no_grad; the model's train/eval mode is restored."""
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    was_training = model.training
    model.eval()

    def run() -> None:
        with torch.no_grad():
            model(*args)

    try:
        return measure_callable_ms(run, warmup, repeats, threads)
    finally:
        model.train(was_training)
