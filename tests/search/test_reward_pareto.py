import math

import pytest

from nncompress.search import latency_reward, pareto_front, plot_pareto


def test_reward_hand_worked():
    assert latency_reward(80.0, 10.0, 10.0) == pytest.approx(80.0)  # on target: the accuracy itself
    # twice as fast: 80 · 0.5^(−0.07) = 80 · 2^0.07 = 80 · 1.049717 = 83.977
    assert latency_reward(80.0, 5.0, 10.0) == pytest.approx(83.977, abs=1e-3)
    # twice as slow: 80 · 2^(−0.07) = 80 · 0.952638 = 76.211
    assert latency_reward(80.0, 20.0, 10.0) == pytest.approx(76.211, abs=1e-3)
    # hard constraint (α = 0, β = −1): no bonus below T, proportional penalty above
    assert latency_reward(80.0, 5.0, 10.0, alpha=0.0, beta=-1.0) == pytest.approx(80.0)
    assert latency_reward(80.0, 20.0, 10.0, alpha=0.0, beta=-1.0) == pytest.approx(40.0)
    with pytest.raises(ValueError):
        latency_reward(80.0, 0.0, 10.0)


def test_reward_is_monotone_so_its_argmax_is_pareto_optimal():
    assert latency_reward(90, 9.0, 10) > latency_reward(90, 9.5, 10) > latency_reward(90, 11, 10)
    assert math.isclose(latency_reward(90, 10, 10, alpha=-0.07, beta=-0.5), 90)


def test_pareto_front_hand_worked():
    lat = [1.0, 2.0, 3.0, 4.0, 2.5, 2.0]
    acc = [50.0, 60.0, 55.0, 70.0, 60.0, 58.0]
    # (2.5, 60) ties in accuracy but is slower than (2, 60); (3, 55) and (2, 58) are dominated
    assert pareto_front(lat, acc) == [0, 1, 3]
    assert pareto_front([], []) == []
    with pytest.raises(ValueError):
        pareto_front([1.0], [])


def test_plot_pareto_writes_png(tmp_path):
    pts = [{"latency_ms": 1.0, "top1": 90.0, "strategy": "random"}, {"latency_ms": 2.0, "top1": 95.0, "strategy": "evolution"}]
    path = tmp_path / "p.png"
    plot_pareto(pts, path, [{"name": "baseline", "latency_ms": 1.5, "top1": 91.0}], target_ms=1.5)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_energy_reward_hand_worked():
    from nncompress.search import energy_reward

    assert energy_reward(80.0, 3.0, 3.0) == pytest.approx(80.0)
    # half the energy: 80 · 2^0.07 = 83.977; hard budget α = 0, β = −1 at twice the energy: 40
    assert energy_reward(80.0, 1.5e6, 3e6) == pytest.approx(83.977, abs=1e-3)
    assert energy_reward(80.0, 6e6, 3e6, alpha=0.0, beta=-1.0) == pytest.approx(40.0)
    with pytest.raises(ValueError):
        energy_reward(80.0, 0.0, 1.0)
