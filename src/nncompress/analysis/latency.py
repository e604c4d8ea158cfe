"""Wall-clock latency: warm up, then the median (and 10th/90th percentiles) of many timed calls.

Medians resist the outliers a shared machine produces; always compare models measured side by side
in one run with the same thread count.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from nncompress.core.errors import UserError
from nncompress.core.model_io import ForwardFn, call_model, to_device
from nncompress.training.device import module_device


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


@contextmanager
def num_threads(n: int | None) -> Iterator[None]:
    """Run the block with `torch.set_num_threads(n)` (None: leave it), restoring the previous setting."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _synchronize() -> None:
    """Wait for queued GPU work: CUDA kernels run asynchronously, so a clock read without this times the launch."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _result(times_ms: np.ndarray, threads: int | None) -> LatencyResult:
    p10, p50, p90 = np.percentile(times_ms, [10, 50, 90])
    return LatencyResult(float(p50), float(p10), float(p90), threads, len(times_ms))


def measure_callable_ms(fn: Callable[[], Any], warmup: int = 5, repeats: int = 30, threads: int | None = 1) -> LatencyResult:
    """Time `fn()` (any callable, e.g. an ONNX Runtime `session.run` wrapped in a lambda) with time.perf_counter,
    synchronizing CUDA around each call when it is in use so GPU kernels are timed to completion.

    `threads` sets torch.set_num_threads for the measurement and restores it afterwards; it does not
    reach other runtimes (give ONNX Runtime its intra_op_num_threads in the session options).
    """
    _check(warmup, repeats, threads)
    with num_threads(threads):
        for _ in range(warmup):
            fn()
        times_ms = np.empty(repeats)
        for i in range(repeats):
            _synchronize()
            t0 = time.perf_counter()
            fn()
            _synchronize()
            times_ms[i] = (time.perf_counter() - t0) * 1e3
    return _result(times_ms, threads)


def measure_interleaved_ms(fns: Sequence[Callable[[], Any]], warmup: int = 1, repeats: int = 20,
                           threads: int | None = 1) -> list[LatencyResult]:
    """Time several callables round-robin (a, b, a, b, ...) so that load on a shared CPU hits all of them alike.

    Each timed call is preceded by `warmup` untimed calls of the same callable, so every one is timed with its
    own weights in cache rather than just after another's. One result per callable, in order.
    """
    _check(warmup, repeats, threads)
    times_ms = np.empty((len(fns), repeats))
    with num_threads(threads):
        for i in range(repeats):
            for j, fn in enumerate(fns):
                for _ in range(warmup):
                    fn()
                _synchronize()
                t0 = time.perf_counter()
                fn()
                _synchronize()
                times_ms[j, i] = (time.perf_counter() - t0) * 1e3
    return [_result(t, threads) for t in times_ms]


def _forward(model: nn.Module, example_input: Any, forward_fn: ForwardFn | None = None) -> Callable[[], None]:
    """A no-grad forward on the model's own device (the input is moved there once, outside the timing).

    `example_input` is the model's inputs in any form `nncompress.core.model_io.call_model` takes: a tensor
    (model(x)), a tuple (model(*xs)), a dict from a tokenizer (model(**d)); `forward_fn(model, inputs)` overrides.
    """
    inputs = to_device(example_input, module_device(model), non_blocking=False)

    def run() -> None:
        with torch.no_grad():
            call_model(model, inputs, forward_fn)
    return run


@contextmanager
def _eval_mode(*models: nn.Module) -> Iterator[None]:
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for m, was_training in zip(models, modes):
            m.train(was_training)


def measure_latency_ms(model: nn.Module, example_input: Any, warmup: int = 5,
                       repeats: int = 30, threads: int | None = 1, forward_fn: ForwardFn | None = None) -> LatencyResult:
    """Latency of `model(example_input)` in eval mode under no_grad; the model's train/eval mode is restored.
    `example_input`: a tensor, a tuple of positional inputs or a dict of keyword inputs (see `_forward`)."""
    with _eval_mode(model):
        return measure_callable_ms(_forward(model, example_input, forward_fn), warmup, repeats, threads)


def measure_pair_ms(a: nn.Module, b: nn.Module, example_input: Any,
                    warmup: int = 1, repeats: int = 20, threads: int | None = 1,
                    forward_fn: ForwardFn | None = None) -> tuple[LatencyResult, LatencyResult]:
    """Latencies of two models on the same input, timed interleaved (see `measure_interleaved_ms`): the fair way
    to compare a model before and after compression on a busy machine. Eval mode, no_grad; modes restored."""
    with _eval_mode(a, b):
        ra, rb = measure_interleaved_ms([_forward(a, example_input, forward_fn), _forward(b, example_input, forward_fn)],
                                        warmup, repeats, threads)
    return ra, rb
