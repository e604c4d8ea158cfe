"""SparseGPT: exact sparsity per row and per N:M group, lower reconstruction error than magnitude, equal to
Wanda's selection with no update when the Hessian is diagonal, masks kept through fine-tuning."""
import copy

import pytest
import torch
from torch import nn

from nncompress.core.errors import UserError
from nncompress.pruning import get_mask
from nncompress.pruning.sparsegpt import sparsegpt, sparsegpt_prune_weight
from nncompress.pruning.wanda import magnitude_prune_llm, score_mask, wanda_scores


def correlated_inputs(tokens=1024, dim=128, seed=0):
    fixed = torch.Generator().manual_seed(99)
    basis = torch.randn(16, dim, generator=fixed)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(tokens, 16, generator=g) @ basis + 0.5 * torch.randn(tokens, dim, generator=g)


def hessian(x):
    return 2 * x.double().t() @ x.double() / x.shape[0]


def error(w, w_hat, x):
    return float(((w - w_hat) @ x.t()).norm())


W = torch.randn(24, 128, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("sparsity", [0.5, 0.3])
def test_exact_per_row_sparsity(sparsity):
    h = hessian(correlated_inputs())
    new, keep = sparsegpt_prune_weight(W, h, sparsity, block_size=32)
    pruned = int(128 * sparsity)
    assert (~keep).sum(1).tolist() == [pruned] * 24
    assert (new == 0).sum(1).ge(pruned).all() and bool((new[~keep] == 0).all())


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8)])
def test_exact_n_m_groups(n, m):
    new, keep = sparsegpt_prune_weight(W, hessian(correlated_inputs()), n=n, m=m)
    assert keep.reshape(24, -1, m).sum(-1).eq(n).all()
    assert bool((new[~keep] == 0).all())


@pytest.mark.parametrize("pattern", [{"sparsity": 0.5}, {"n": 2, "m": 4}])
def test_lower_reconstruction_error_than_magnitude(pattern):
    x, held_out = correlated_inputs(), correlated_inputs(seed=7)
    new, _ = sparsegpt_prune_weight(W, hessian(x), **pattern)
    mag = W * score_mask(W.abs(), pattern.get("sparsity"), pattern.get("n"), pattern.get("m"))
    assert error(W, new, held_out) < 0.7 * error(W, mag, held_out)


def test_diagonal_hessian_is_wanda_without_update():
    # U diagonal with U_jj² = 1/H_jj: saliency w²·H_jj = (|w|·√H_jj)², Wanda's score squared; no error propagates
    x = torch.randn(512, 64, generator=torch.Generator().manual_seed(3)) * torch.linspace(0.2, 3, 64)
    norms = x.norm(dim=0)
    h = torch.diag(2 * norms.double() ** 2 / 512)
    w = W[:, :64]
    new, keep = sparsegpt_prune_weight(w, h, 0.5, block_size=64, damp=0.0)
    assert torch.equal(keep, score_mask(wanda_scores(w, norms), 0.5))
    assert torch.allclose(new, w * keep)


def test_bad_inputs():
    with pytest.raises(UserError, match="0 < n < m"):
        sparsegpt_prune_weight(W, torch.eye(128), n=4, m=2)
    with pytest.raises(UserError, match="Hessian shape"):
        sparsegpt_prune_weight(W, torch.eye(64), 0.5)


def test_model_masks_attached_and_kept_through_fine_tuning():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 8))
    calib = [correlated_inputs(256, seed=s) for s in range(2)]
    masks = sparsegpt(model, calib, 0.5)
    assert set(masks) == {"0", "2"}
    assert torch.equal(get_mask(model[0]), masks["0"]) and (~masks["2"]).sum(1).eq(32).all()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = calib[0]
    for _ in range(3):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    assert bool((model[0].weight[~masks["0"]] == 0).all()) and bool((model[2].weight[~masks["2"]] == 0).all())


def test_tiny_gpt2_sparsegpt_beats_magnitude_on_logits(tiny_gpt2):
    model, calib, test, ref = tiny_gpt2

    def rel(m):
        with torch.no_grad():
            return float((m(input_ids=test).logits - ref).norm() / ref.norm())

    sg, mag = copy.deepcopy(model), copy.deepcopy(model)
    masks = sparsegpt(sg, calib, n=2, m=4)
    magnitude_prune_llm(mag, n=2, m=4)
    assert len(masks) == 8 and all(k.reshape(k.shape[0], -1, 4).sum(-1).eq(2).all() for k in masks.values())
    assert rel(sg) < 0.9 * rel(mag)
