"""GPTQ: beats RTN on correlated inputs, equals RTN when the Hessian is diagonal, the OBS update by hand,
act-order group index, and a tiny GPT-2 end to end."""
import copy

import pytest
import torch
from torch import nn

from nncompress.core.calibration_stats import collect_stats
from nncompress.core.errors import UserError
from nncompress.quantization.gptq import gptq, gptq_quantize
from nncompress.quantization.weight_only import WeightOnlyLinear, group_qparams, quantize_rtn, weight_only_bytes


def correlated_inputs(tokens=1024, dim=64, seed=0):
    """Samples (seeded by `seed`) of one fixed correlated distribution: a rank-8 signal plus mixed noise."""
    fixed = torch.Generator().manual_seed(1234)
    basis = torch.randn(8, dim, generator=fixed)
    mix = torch.randn(dim, dim, generator=fixed) / dim**0.5 + torch.eye(dim)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(tokens, 8, generator=g) @ basis + 0.3 * torch.randn(tokens, dim, generator=g) @ mix


def layer_error(w, w_hat, x):
    return float(((w - w_hat) @ x.t()).norm())


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("bits,group", [(4, 32), (3, None)])
def test_gptq_beats_rtn_on_correlated_inputs(act_order, bits, group):
    x = correlated_inputs()
    w = torch.randn(48, 64, generator=torch.Generator().manual_seed(1))
    h = 2 * x.double().t() @ x.double() / x.shape[0]
    held_out = correlated_inputs(seed=5)
    rtn = layer_error(w, quantize_rtn(w, bits, group).dequantize(), held_out)
    q = gptq_quantize(w, h, bits, group, act_order=act_order)
    assert layer_error(w, q.dequantize(), held_out) < 0.8 * rtn


@pytest.mark.parametrize("act_order", [False, True])
def test_diagonal_hessian_gives_rtn_exactly(act_order):
    # U (Cholesky of H⁻¹) is diagonal: the error of a column reaches no other column, so GPTQ = RTN
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(2))
    h = torch.diag(torch.rand(64, generator=torch.Generator().manual_seed(3)) + 0.1).double()
    group = 16 if not act_order else None   # with act-order, groups would be formed in another column order
    q = gptq_quantize(w, h, 4, group, act_order=act_order)
    r = quantize_rtn(w, 4, group)
    assert torch.equal(q.codes, r.codes) and torch.equal(q.scales, r.scales) and torch.equal(q.zeros, r.zeros)


def test_two_column_obs_update_by_hand():
    # H = [[a, b], [b, c]]: quantizing column 0 moves column 1 by (b/c)·(w0 − q0) (the OBS compensation)
    a, b, c = 2.0, 1.2, 1.5
    h = torch.tensor([[a, b], [b, c]], dtype=torch.float64)
    w = torch.tensor([[0.37, -0.81], [0.55, 0.12]])
    q = gptq_quantize(w, h, bits=3, group_size=None, damp=0.0)
    scale, zero = group_qparams(w, 3, False)
    q0 = torch.clamp(torch.round(w[:, 0] / scale) + zero, 0, 7)
    w0_hat = (q0 - zero) * scale
    w1 = w[:, 1] + (b / c) * (w[:, 0] - w0_hat)
    q1 = torch.clamp(torch.round(w1 / scale) + zero, 0, 7)
    assert q.codes[:, 0].tolist() == q0.tolist() and q.codes[:, 1].tolist() == q1.tolist()


def test_act_order_groups_store_a_group_index():
    x = correlated_inputs(dim=64)
    x[:, 5] *= 20                                               # channel 5 has the largest diag(H): processed first
    h = 2 * x.double().t() @ x.double() / x.shape[0]
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(4))
    q = gptq_quantize(w, h, 4, 16, act_order=True)
    assert q.g_idx is not None and q.g_idx.dtype == torch.int32
    assert int(q.g_idx[5]) == 0
    assert torch.bincount(q.g_idx.long()).tolist() == [16, 16, 16, 16]
    assert q.nbytes == 8 * 32 + 8 * 4 * 2 + 8 * 2 + 64 * 4      # codes, fp16 scales, packed zeros, int32 g_idx
    mod = WeightOnlyLinear(q)
    assert torch.allclose(mod.dequantized_weight(), q.dequantize())


def test_bad_inputs():
    w = torch.randn(4, 8)
    with pytest.raises(UserError, match="Hessian shape"):
        gptq_quantize(w, torch.eye(4), 4, None)
    with pytest.raises(UserError, match="damp"):
        gptq_quantize(w, torch.eye(8), 4, None, damp=2.0)
    with pytest.raises(UserError, match="NaN"):
        gptq_quantize(w, torch.full((8, 8), float("nan")), 4, None)


def test_gptq_on_a_sequential_model_uses_calibration_hessians():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 16)).eval()
    calib = [correlated_inputs(256, 32, seed=s) for s in range(2)]
    stats = collect_stats(model, calib)
    assert stats["0"].tokens == 512
    assert torch.allclose(stats["0"].hessian, 2 * torch.cat(calib).double().t() @ torch.cat(calib).double() / 512)
    test = correlated_inputs(256, 32, seed=9)
    ref = model(test)
    rtn = copy.deepcopy(model)
    from nncompress.quantization.weight_only import quantize_weight_only
    quantize_weight_only(rtn, 3, 16)
    q = gptq(copy.deepcopy(model), calib, bits=3, group_size=16)
    assert isinstance(q[0], WeightOnlyLinear) and isinstance(q[2], WeightOnlyLinear)
    assert (q(test) - ref).norm() < (rtn(test) - ref).norm()


def test_tiny_gpt2_gptq_4bit_g32_end_to_end(tiny_gpt2):
    model, calib, test, ref = tiny_gpt2
    dense_bytes = weight_only_bytes(model)
    q = gptq(copy.deepcopy(model), calib, bits=4, group_size=32)
    swapped = [n for n, m in q.named_modules() if isinstance(m, WeightOnlyLinear)]
    assert len(swapped) == 8 and "lm_head" not in swapped                 # 4 projections per block, head tied to wte
    with torch.no_grad():
        out = q(input_ids=test).logits
    rel = float((out - ref).norm() / ref.norm())
    assert rel < 0.1
    assert weight_only_bytes(q) < dense_bytes
