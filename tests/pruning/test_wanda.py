"""Wanda: the hand-computed |W|·‖X‖ mask on a 4×4 example, per-row and N:M counts, masks survive fine-tuning,
a tiny GPT-2 end to end."""
import copy

import pytest
import torch
from torch import nn

from nncompress.core.errors import UserError
from nncompress.pruning import get_mask
from nncompress.pruning.wanda import magnitude_prune_llm, score_mask, wanda_prune, wanda_scores

W = torch.tensor([[1.0, -5.0, 1.0, 6.0],
                  [0.25, 3.0, -1.0, 10.0],
                  [-0.5, 1.0, 0.75, 4.0],
                  [0.1, -0.2, 0.3, -0.4]])
# calibration tokens whose per-feature 2-norms are ‖X_j‖ = [4, 1, 2, 0.5]
X = torch.tensor([[4.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.5]])
# scores |W|·‖X‖ per row: [4, 5, 2, 3], [1, 3, 2, 5], [2, 1, 1.5, 2], [0.4, 0.2, 0.6, 0.2] → drop the 2 lowest per row
HAND_MASK = torch.tensor([[True, True, False, False],
                          [False, True, False, True],
                          [True, False, False, True],
                          [True, False, True, False]])
# magnitude alone keeps the two largest |W| per row: differs from Wanda in rows 0 and 2
MAGNITUDE_MASK = torch.tensor([[False, True, False, True],
                               [False, True, False, True],
                               [False, True, False, True],
                               [False, False, True, True]])


def test_hand_computed_4x4_mask():
    scores = wanda_scores(W, torch.tensor([4.0, 1.0, 2.0, 0.5]))
    assert scores.tolist()[0] == [4.0, 5.0, 2.0, 3.0]
    assert torch.equal(score_mask(scores, 0.5), HAND_MASK)
    assert torch.equal(score_mask(scores, n=2, m=4), HAND_MASK)          # one group of 4 per row: same selection


def test_wanda_prune_on_a_layer_matches_the_hand_mask():
    layer = nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        layer.weight.copy_(W)
    model = nn.Sequential(layer)
    masks = wanda_prune(model, [X], sparsity=0.5)
    assert torch.equal(masks["0"], HAND_MASK)
    assert torch.equal(get_mask(model[0]), HAND_MASK)
    assert torch.equal(model[0].weight, W * HAND_MASK)
    mag = nn.Sequential(nn.Linear(4, 4, bias=False))
    with torch.no_grad():
        mag[0].weight.copy_(W)
    assert torch.equal(magnitude_prune_llm(mag, 0.5)["0"], MAGNITUDE_MASK)


def test_n_m_groups_and_per_row_counts():
    s = torch.tensor([[8.0, 1, 7, 2, 3, 6, 5, 4]])
    assert score_mask(s, n=2, m=4).tolist() == [[True, False, True, False, False, True, True, False]]  # 8, 7 | 6, 5
    assert score_mask(s, n=4, m=8).tolist() == [[True, False, True, False, False, True, True, False]]  # 8, 7, 6, 5
    big = torch.rand(16, 96, generator=torch.Generator().manual_seed(0))
    keep = score_mask(big, 0.5)
    assert keep.sum(1).tolist() == [48] * 16
    assert score_mask(big, 0.3).logical_not().sum(1).tolist() == [int(96 * 0.3)] * 16
    assert score_mask(big, n=4, m=8).reshape(16, 12, 8).sum(-1).eq(4).all()
    layer_keep = score_mask(big, 0.5, group="layer")
    assert int(layer_keep.sum()) == 16 * 48


def test_bad_patterns():
    with pytest.raises(UserError, match="sparsity"):
        score_mask(W, 1.0)
    with pytest.raises(UserError, match="multiple of m"):
        score_mask(torch.rand(2, 6), n=2, m=4)
    with pytest.raises(UserError, match="0 < n < m"):
        score_mask(W, n=4, m=4)
    with pytest.raises(UserError, match="input norms"):
        wanda_scores(W, torch.ones(3))


def test_masks_survive_fine_tuning():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    x = torch.randn(64, 16)
    masks = wanda_prune(model, [x], n=2, m=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    for name, keep in masks.items():
        w = dict(model.named_modules())[name].weight
        assert bool((w[~keep] == 0).all())


def test_tiny_gpt2_wanda_50_percent_end_to_end(tiny_gpt2):
    model, calib, test, ref = tiny_gpt2
    pruned = copy.deepcopy(model)
    masks = wanda_prune(pruned, calib, 0.5)
    assert len(masks) == 8 and "lm_head" not in masks
    c_fc = pruned.transformer.h[0].mlp.c_fc                      # Conv1D: weight stored (in, out), mask too
    assert torch.equal(get_mask(c_fc), masks["transformer.h.0.mlp.c_fc"].t())
    assert float((c_fc.weight == 0).float().mean()) == 0.5
    with torch.no_grad():
        out = pruned(input_ids=test).logits
    assert float((out - ref).norm() / ref.norm()) < 0.35


def test_sequential_mode_scores_later_layers_on_pruned_inputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 4))
    x = torch.randn(32, 8)
    w0, b0, w1 = model[0].weight.detach().clone(), model[0].bias.detach().clone(), model[1].weight.detach().clone()
    keep0 = score_mask(wanda_scores(w0, x.norm(dim=0)), 0.5)
    h = x @ (w0 * keep0).t() + b0                                  # what layer 1 sees once layer 0 is pruned
    keep1 = score_mask(wanda_scores(w1, h.norm(dim=0)), 0.5)
    masks = wanda_prune(model, [x], 0.5, sequential=True)
    assert torch.equal(masks["0"], keep0) and torch.equal(masks["1"], keep1)
