"""The energy resource of the platform-aware reward: the Evaluator computes the analysis energy estimate."""
import pytest
import torch
from torch import nn

from nncompress.core.errors import UserError
from nncompress.data import load_dataset
from nncompress.search import MobileNetSpace, run_search
from nncompress.search import evaluator as evaluator_mod
from nncompress.search.evaluator import Evaluator


def test_evaluator_energy_reward_by_hand(monkeypatch):
    calls = []
    real = evaluator_mod.analyze

    def spy(model, shape, *a, **k):
        calls.append(tuple(shape))
        return real(model, shape, *a, **k)

    monkeypatch.setattr(evaluator_mod, "analyze", spy)
    ds = load_dataset("digits").subset(64, 32)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    # 640 fp32 MACs · 4.6 pJ + (640 + 10) · 4 bytes = 650 DRAM words · 640 pJ = 2,944 + 416,000 pJ
    energy = 640 * 4.6 + 650 * 640
    ev = Evaluator(MobileNetSpace(), ds, resource="energy", target_energy_pj=2 * energy, latency_repeats=2)
    cand = ev.measure(model, "linear")
    assert calls == [(1, 8, 8)]
    assert cand.energy_pj == pytest.approx(energy)
    # half the target: ACC · 0.5^(−0.07)
    assert cand.reward == pytest.approx(cand.top1 * 0.5 ** -0.07)
    assert ev.score(cand) == cand.reward
    with pytest.raises(UserError):
        Evaluator(MobileNetSpace(), ds, resource="watts").score(cand)


def test_run_search_on_energy():
    space = MobileNetSpace(widths=(0.25,), depths=(1,), kernels=(3,))
    r = run_search("digits", "random", trials=1, epochs=1, n_train=80, n_test=40, latency_repeats=2, space=space,
                   progress=False, resource="energy")
    assert r["resource"] == "energy" and r["target_energy_pj"] == pytest.approx(r["baseline"]["energy_pj"])
    assert r["baseline"]["reward"] == pytest.approx(r["baseline"]["top1"])  # E_target = the baseline's energy
    c = r["candidates"][0]
    assert c["reward"] == pytest.approx(c["top1"] * (c["energy_pj"] / r["target_energy_pj"]) ** -0.07)
    with pytest.raises(UserError):
        run_search("digits", "random", trials=1, resource="watts", progress=False)
