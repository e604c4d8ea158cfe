import pytest
import torch

from nncompress.core.errors import UserError
from nncompress.quantization import (binarize, compute_qparams, dequantize, fake_quantize, minmax_qparams, qrange,
                                     quantize, round_stochastic, ternarize)
from nncompress.quantization.quantizer import quantization_mse


def test_affine_hand_worked():
    # range [-1, 2] onto 8-bit unsigned: s = 3/255, z = 0 - round(-1 / s) = round(85) = 85
    s, z = compute_qparams(-1.0, 2.0, 0, 255)
    assert float(s) == pytest.approx(3 / 255)
    assert int(z) == 85
    # 0.5 / s = 42.5 → ties to even → 42, + 85 = 127; back: 42 · 3/255
    q = quantize(torch.tensor([0.5, -1.0, 2.0, 0.0, 5.0]), s, z, 0, 255)
    assert q.tolist() == [127, 0, 255, 85, 255]
    assert dequantize(q, s, z)[0].item() == pytest.approx(42 * 3 / 255)
    assert dequantize(q, s, z)[3].item() == 0.0  # zero is exact


def test_affine_range_widened_to_contain_zero():
    s, z = compute_qparams(0.5, 2.0, 0, 255)  # treated as [0, 2]
    assert float(s) == pytest.approx(2 / 255) and int(z) == 0


def test_symmetric_signed_narrow_hand_worked():
    qmin, qmax = qrange(8, signed=True, narrow=True)
    assert (qmin, qmax) == (-127, 127)
    s, z = compute_qparams(-0.5, 1.27, qmin, qmax, symmetric=True)
    assert float(s) == pytest.approx(0.01) and int(z) == 0
    x = torch.tensor([0.5, -0.504, 2.0, -3.0])
    assert quantize(x, s, z, qmin, qmax).tolist() == [50, -50, 127, -127]
    assert fake_quantize(x, s, z, qmin, qmax).tolist() == pytest.approx([0.5, -0.5, 1.27, -1.27])


@pytest.mark.parametrize("bits,signed,narrow,expected", [
    (8, True, False, (-128, 127)), (8, False, False, (0, 255)), (4, True, False, (-8, 7)), (4, True, True, (-7, 7)),
    (2, True, True, (-1, 1)), (1, False, False, (0, 1)), (16, True, False, (-32768, 32767)), (3, False, False, (0, 7)),
])
def test_qrange(bits, signed, narrow, expected):
    assert qrange(bits, signed, narrow) == expected


@pytest.mark.parametrize("bad", [0, 17, -3, 4.5, True])
def test_bad_bit_widths(bad):
    with pytest.raises(UserError, match="bit width"):
        qrange(bad, True)


def test_per_channel_beats_per_tensor_on_mixed_scales():
    torch.manual_seed(0)
    w = torch.randn(8, 64) * torch.logspace(-2, 0, 8)[:, None]  # channels 100× apart in scale
    assert quantization_mse(w, 4, symmetric=True, axis=0) < quantization_mse(w, 4, symmetric=True)
    st, zt, lo, hi = minmax_qparams(w, 4, signed=True, symmetric=True, narrow=True)
    sc, zc, _, _ = minmax_qparams(w, 4, signed=True, symmetric=True, narrow=True, axis=0)
    err_t = ((fake_quantize(w, st, zt, lo, hi) - w) ** 2).mean(1)
    err_c = ((fake_quantize(w, sc, zc, lo, hi, axis=0) - w) ** 2).mean(1)
    assert (err_c <= err_t + 1e-12).all()  # no channel is worse with its own scale
    # smallest channel (σ = 0.01): the shared step rounds it all to 0 (error ≈ σ² = 1e-4); its own step ≈ 0.03/7 gives ≈ step²/12
    assert err_c[0] < err_t[0] / 20


def test_per_channel_qparams_are_per_row():
    w = torch.tensor([[1.0, -2.0], [0.1, 0.05]])
    s, z, qmin, qmax = minmax_qparams(w, 8, signed=True, symmetric=True, narrow=True, axis=0)
    assert s.tolist() == pytest.approx([2 / 127, 0.1 / 127])
    assert quantize(w, s, z, qmin, qmax, axis=0).tolist() == [[64, -127], [127, 64]]


def test_stochastic_rounding_is_unbiased():
    g = torch.Generator().manual_seed(0)
    x = torch.full((200_000,), 0.3)
    assert round_stochastic(x, g).mean().item() == pytest.approx(0.3, abs=0.005)
    assert set(round_stochastic(x, g).unique().tolist()) == {0.0, 1.0}
    assert torch.round(x).mean().item() == 0.0  # nearest rounding is biased here
    q = quantize(torch.full((10_000,), 0.25), 1.0, 0, -8, 7, rounding="stochastic", generator=g)
    assert q.float().mean().item() == pytest.approx(0.25, abs=0.02)


def test_binarize_hand_worked():
    w = torch.tensor([0.5, -1.5, 1.0, -0.2])
    assert binarize(w).tolist() == pytest.approx([0.8, -0.8, 0.8, -0.8])  # α = mean |w| = 0.8
    wc = torch.tensor([[1.0, -3.0], [0.5, 0.5]])
    assert binarize(wc, axis=0).flatten().tolist() == pytest.approx([2.0, -2.0, 0.5, 0.5])


def test_ternarize_hand_worked():
    w = torch.tensor([1.0, -0.8, 0.1, 0.0])  # Δ = 0.7 · 0.475 = 0.3325; α = mean(1.0, 0.8) = 0.9
    assert ternarize(w).tolist() == pytest.approx([0.9, -0.9, 0.0, 0.0])


def test_unknown_rounding():
    with pytest.raises(UserError, match="rounding"):
        quantize(torch.zeros(2), 1.0, 0, 0, 255, rounding="up")
