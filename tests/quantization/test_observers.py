import pytest
import torch

from nncompress.core.errors import UserError
from nncompress.quantization import (EntropyObserver, MinMaxObserver, MovingAverageMinMaxObserver, MSEObserver,
                                     PercentileObserver, fake_quantize, make_observer)


def _mse_with(obs, x):
    s, z = obs.qparams()
    return float(((fake_quantize(x, s, z, obs.qmin, obs.qmax) - x) ** 2).mean())


def _fed(obs, x, chunks=4):
    for c in x.chunk(chunks):
        obs(c)
    return obs


def test_minmax_over_batches():
    obs = MinMaxObserver(bits=8, signed=False)
    obs(torch.tensor([0.0, 1.0]))
    obs(torch.tensor([-2.0, 0.5]))
    lo, hi = obs.clip_range()
    assert (float(lo), float(hi)) == (-2.0, 1.0)
    s, z = obs.qparams()
    assert float(s) == pytest.approx(3 / 255) and int(z) == 170  # 0 - round(-2 / (3/255)) = 170


def test_minmax_per_channel():
    obs = MinMaxObserver(bits=8, signed=True, symmetric=True, axis=0)
    obs(torch.tensor([[1.0, -4.0], [0.5, 0.25]]))
    assert obs.min_val.tolist() == [-4.0, 0.25] and obs.max_val.tolist() == [1.0, 0.5]


def test_moving_average_hand_worked():
    obs = MovingAverageMinMaxObserver(averaging_constant=0.1)
    obs(torch.tensor([0.0, 10.0]))
    obs(torch.tensor([-10.0, 0.0]))
    # min: 0 + 0.1 (−10 − 0) = −1;  max: 10 + 0.1 (0 − 10) = 9
    assert float(obs.min_val) == pytest.approx(-1.0) and float(obs.max_val) == pytest.approx(9.0)


def test_percentile_clips_an_outlier():
    torch.manual_seed(0)
    x = torch.randn(100_000)
    x[123] = 1000.0
    pct, mm = _fed(PercentileObserver(percentile=99.9, signed=True), x), _fed(MinMaxObserver(signed=True), x)
    assert float(mm.clip_range()[1]) == 1000.0
    hi = float(pct.clip_range()[1])
    assert 2.5 < hi < 4.0  # the 99.9th percentile of N(0, 1) is 3.09 (histogram-bin resolution)


@pytest.mark.parametrize("name", ["mse", "entropy"])
def test_clipping_beats_minmax_on_heavy_tails(name):
    torch.manual_seed(0)
    x = torch.distributions.Laplace(0.0, 1.0).sample((100_000,))
    mm = _mse_with(_fed(MinMaxObserver(bits=4, signed=True), x), x)
    clipped_obs = _fed(make_observer(name, bits=4, signed=True), x)
    assert float(clipped_obs.clip_range()[1]) < float(x.max())
    assert _mse_with(clipped_obs, x) < 0.5 * mm


def test_mse_keeps_the_range_of_uniform_data():
    torch.manual_seed(0)
    x = torch.rand(50_000) * 2 - 1  # no tail: clipping only hurts
    obs = _fed(MSEObserver(bits=8, signed=True), x)
    assert float(obs.clip_range()[1]) > 0.95 * float(x.max())


def test_entropy_ignores_relu_zeros():
    torch.manual_seed(0)
    x = torch.distributions.Laplace(0.0, 1.0).sample((100_000,)).relu()  # half exact zeros
    lo, hi = _fed(EntropyObserver(bits=8), x).clip_range()
    assert float(lo) == 0.0 and float(hi) > 4.0  # zeros must not drag the threshold down to the spike


def test_histogram_rebins_when_range_grows():
    obs = PercentileObserver(percentile=100.0, signed=True)
    obs(torch.tensor([0.1, -0.1]))
    obs(torch.tensor([5.0, -5.0]))
    assert float(obs.hist.sum()) == 4.0
    assert float(obs.clip_range()[1]) == pytest.approx(5.0)


def test_observer_errors():
    with pytest.raises(UserError, match="seen no data"):
        MinMaxObserver().qparams()
    with pytest.raises(UserError, match="per-tensor only"):
        EntropyObserver(axis=0)
    with pytest.raises(UserError, match="unknown calibration"):
        make_observer("kmeans")
