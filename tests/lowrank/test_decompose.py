"""SVD, Tucker-2 and CP: exact at full rank, Eckart–Young errors, the layer shapes the papers prescribe."""
import math

import pytest
import torch
from torch import nn

from nncompress.core import UserError
from nncompress.lowrank import cp_conv, energy_rank, evbmf_rank, relative_error, svd_linear, tucker2_conv


def _orthogonal(n, k, seed):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    return q


def test_svd_exact_at_full_rank_and_same_outputs():
    torch.manual_seed(0)
    layer = nn.Linear(20, 7)
    mod = svd_linear(layer, 7)
    x = torch.randn(5, 20)
    assert torch.allclose(mod(x), layer(x), atol=1e-5)
    assert relative_error(layer.weight, mod) < 1e-6
    assert [type(m) for m in mod] == [nn.Linear, nn.Linear]
    assert mod[0].weight.shape == (7, 20) and mod[0].bias is None and mod[1].weight.shape == (7, 7)


def test_svd_truncation_error_is_the_discarded_energy():
    # W = U·diag(4, 3, 2, 1)·Vᵀ: rank 2 leaves ‖W − W₂‖/‖W‖ = sqrt(2² + 1²)/sqrt(30) (Eckart–Young)
    w = _orthogonal(6, 4, 1) @ torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64)) @ _orthogonal(5, 4, 2).T
    layer = nn.Linear(5, 6)
    layer.weight.data = w.float()
    assert relative_error(layer.weight, svd_linear(layer, 2)) == pytest.approx(math.sqrt(5 / 30), rel=1e-5)
    assert relative_error(layer.weight, svd_linear(layer, 3)) == pytest.approx(math.sqrt(1 / 30), rel=1e-5)


def test_energy_rank_hand_values():
    s = torch.tensor([4.0, 3.0, 2.0, 1.0])  # s² = 16, 9, 4, 1 of 30
    assert energy_rank(s, 0.5) == 1      # 16/30 = 0.53
    assert energy_rank(s, 0.8) == 2      # 25/30 = 0.83
    assert energy_rank(s, 25 / 30) == 2  # exactly reached
    assert energy_rank(s, 0.9) == 3      # 29/30 = 0.97
    assert energy_rank(s, 1.0) == 4
    with pytest.raises(UserError):
        energy_rank(s, 0.0)


@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 0, 1), (1, 2, 2)])
def test_tucker2_exact_at_full_rank(stride, padding, dilation):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 8, 3, stride=stride, padding=padding, dilation=dilation)
    mod = tucker2_conv(conv, 8, 6)
    x = torch.randn(2, 6, 11, 11)
    assert torch.allclose(mod(x), conv(x), atol=1e-5)
    assert relative_error(conv.weight, mod) < 1e-6
    # 1×1 (in → R_in), k×k core (R_in → R_out), 1×1 (R_out → out)
    assert [tuple(m.weight.shape) for m in mod] == [(6, 6, 1, 1), (8, 6, 3, 3), (8, 8, 1, 1)]


def test_tucker2_recovers_a_tensor_of_lower_multilinear_rank():
    g = torch.Generator().manual_seed(3)
    core = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64)
    w = torch.einsum("oa,abhw,ib->oihw", _orthogonal(8, 3, 4), core, _orthogonal(6, 2, 5))
    conv = nn.Conv2d(6, 8, 3, padding=1)
    conv.weight.data = w.float()
    mod = tucker2_conv(conv, 3, 2)
    assert mod.ranks == (3, 2)
    assert relative_error(conv.weight, mod) < 1e-5
    x = torch.randn(2, 6, 7, 7)
    assert torch.allclose(mod(x), conv(x), atol=1e-4)


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 2)])
def test_cp_exact_for_a_weight_of_that_cp_rank(stride, padding):
    g = torch.Generator().manual_seed(0)
    a, b, c, d = (torch.randn(n, 3, generator=g) for n in (8, 6, 3, 3))
    conv = nn.Conv2d(6, 8, 3, stride=stride, padding=padding)
    conv.weight.data = torch.einsum("or,ir,hr,wr->oihw", a, b, c, d)
    mod = cp_conv(conv, 3)
    assert relative_error(conv.weight, mod) < 1e-4
    x = torch.randn(2, 6, 9, 9)
    assert torch.allclose(mod(x), conv(x), atol=1e-3)
    # 1×1 (in → R), k×1 depthwise, 1×k depthwise, 1×1 (R → out)
    assert [tuple(m.weight.shape) for m in mod] == [(3, 6, 1, 1), (3, 1, 3, 1), (3, 1, 1, 3), (8, 3, 1, 1)]
    assert mod[1].groups == 3 and mod[2].groups == 3


def test_cp_error_falls_with_rank():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 5, 3)
    errors = [relative_error(conv.weight, cp_conv(conv, r)) for r in (1, 4, 16)]
    assert errors[0] > errors[1] > errors[2]


def test_evbmf_finds_the_signal_rank():
    g = torch.Generator().manual_seed(0)
    signal = _orthogonal(60, 5, 7) @ torch.diag(torch.tensor([40.0, 30, 25, 20, 15], dtype=torch.float64)) @ _orthogonal(80, 5, 8).T
    noisy = signal + 0.1 * torch.randn(60, 80, generator=g, dtype=torch.float64)  # noise singular values ≈ 0.1·(√60+√80) ≈ 1.7
    assert evbmf_rank(noisy) == 5
    assert evbmf_rank(noisy.T) == 5
    assert evbmf_rank(torch.randn(60, 80, generator=g)) == 1  # pure noise: nothing (clamped to one component)


def test_conv_checks():
    with pytest.raises(UserError):
        tucker2_conv(nn.Conv2d(4, 4, 3, groups=2), 2, 2)
