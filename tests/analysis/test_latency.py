import time

import pytest
import torch
from torch import nn

from nncompress.analysis import measure_callable_ms, measure_interleaved_ms, measure_latency_ms, measure_pair_ms, num_threads
from nncompress.architectures import build_model
from nncompress.core.errors import UserError


def test_callable_warmup_repeats_and_sleep():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.002)

    r = measure_callable_ms(fn, warmup=3, repeats=7)
    assert len(calls) == 10
    assert r.repeats == 7 and r.threads == 1
    assert 2.0 <= r.p10_ms <= r.median_ms <= r.p90_ms
    assert r.median_ms < 200  # a 2 ms sleep, generous for a loaded machine


def test_threads_restored_and_mode_restored():
    before = torch.get_num_threads()
    seen = []
    measure_callable_ms(lambda: seen.append(torch.get_num_threads()), warmup=0, repeats=2, threads=1)
    assert seen == [1, 1] and torch.get_num_threads() == before
    model = build_model("lenet300", (1, 8, 8))
    model.train()
    r = measure_latency_ms(model, torch.zeros(1, 1, 8, 8), warmup=1, repeats=3)
    assert model.training and r.median_ms > 0


def test_model_runs_in_eval_without_grad():
    class Probe(torch.nn.Module):
        def forward(self, x):
            assert not self.training and not torch.is_grad_enabled()
            return x

    measure_latency_ms(Probe(), torch.zeros(2), warmup=1, repeats=2)


def test_bad_arguments():
    for kwargs in ({"repeats": 0}, {"warmup": -1}, {"threads": 0}):
        with pytest.raises(UserError):
            measure_callable_ms(lambda: None, **kwargs)


def test_num_threads_context_restores():
    before = torch.get_num_threads()
    with num_threads(1):
        assert torch.get_num_threads() == 1
    with num_threads(None):
        assert torch.get_num_threads() == before
    assert torch.get_num_threads() == before


def test_interleaved_order_and_warmup():
    calls = []
    ra, rb = measure_interleaved_ms([lambda: calls.append("a"), lambda: calls.append("b")], warmup=1, repeats=2)
    assert calls == ["a", "a", "b", "b"] * 2  # one untimed warm call before each timed one, round-robin
    assert ra.repeats == rb.repeats == 2


def test_pair_restores_modes():
    a, b = build_model("lenet300", (1, 8, 8)), build_model("lenet300", (1, 8, 8))
    a.train()
    b.eval()
    ra, rb = measure_pair_ms(a, b, torch.zeros(1, 1, 8, 8), repeats=3)
    assert a.training and not b.training and ra.median_ms > 0 and rb.median_ms > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_latency_waits_for_the_kernels():
    """Without synchronizing, a 4096³ matmul chain 'takes' microseconds (only the launch is timed); a real H100 needs
    well over 0.1 ms for 20 of them. The CPU example input is moved to the model's device."""
    model = nn.Sequential(*[nn.Linear(4096, 4096, bias=False) for _ in range(20)]).cuda()
    r = measure_latency_ms(model, torch.randn(4096, 4096), warmup=2, repeats=5)
    assert r.median_ms > 0.1
