"""Saliency criteria (taylor, obd, snip, apoz, synflow) and kernel/vector/block granularity, on hand-worked values."""
import pytest
import torch
from torch import nn

from nncompress.core.errors import UserError
from nncompress.pruning import (
    ScorePruner,
    apoz,
    apoz_scores,
    block_mask,
    get_mask,
    group_ids,
    group_mask,
    kernel_mask,
    level_mask,
    obd_scores,
    snip_scores,
    synflow_scores,
    taylor_scores,
    vector_mask,
)

T, F = True, False


def sq_loss(out, y):
    return ((out - y) ** 2).sum()


def two_param_model():
    m = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[2.0, -1.0]]))
    return m


# batch 1: x=[1,3], out = 2-3 = -1, L = out², g = 2·out·x = [-2, -6]
# batch 2: x=[0,1], out = -1,            g = [0, -2]
TWO_BATCHES = [(torch.tensor([[1.0, 3.0]]), torch.zeros(1, 1)), (torch.tensor([[0.0, 1.0]]), torch.zeros(1, 1))]


def test_obd_saliency_is_half_h_w_squared_with_fisher_diagonal():
    m = two_param_model()
    one = obd_scores(m, {"fc": m}, TWO_BATCHES[:1], sq_loss)["fc"]
    # h = g² = [4, 36]; s = ½·h·w² = [½·4·4, ½·36·1]
    assert torch.allclose(one, torch.tensor([[8.0, 18.0]]))
    both = obd_scores(m, {"fc": m}, TWO_BATCHES, sq_loss)["fc"]
    # h = mean(g²) = [(4+0)/2, (36+4)/2] = [2, 20]; s = [½·2·4, ½·20·1]
    assert torch.allclose(both, torch.tensor([[4.0, 10.0]]))
    assert m.weight.grad is None  # scoring leaves no gradients behind


def test_taylor_is_abs_w_times_mean_gradient():
    m = two_param_model()
    # ḡ = [(-2+0)/2, (-6-2)/2] = [-1, -4]; |w·ḡ| = [2, 4]
    assert torch.allclose(taylor_scores(m, {"fc": m}, TWO_BATCHES, sq_loss)["fc"], torch.tensor([[2.0, 4.0]]))


def test_snip_is_normalized_abs_g_w_on_the_first_batch_only():
    m = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, -1.0]]))
    # L = Σ out  ⇒  ∂L/∂W_ij = x_j = 1; |g·w| = [[1,2],[3,1]], Σ = 7. The second batch would change g: unused.
    data = [(torch.ones(1, 2), None), (torch.tensor([[5.0, -7.0]]), None)]
    s = snip_scores(m, {"fc": m}, data, lambda out, y: out.sum())["fc"]
    assert torch.allclose(s, torch.tensor([[1.0, 2.0], [3.0, 1.0]]) / 7)


def test_snip_normalizes_over_all_layers_together():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    data = [(torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 1]))]
    s = snip_scores(model, {"0": model[0], "2": model[2]}, data)
    assert abs(float(s["0"].sum() + s["2"].sum()) - 1.0) < 1e-6
    assert float(s["0"].sum()) < 1.0


def apoz_model():
    m = nn.Linear(2, 3, bias=False)
    with torch.no_grad():  # unit 0 = x1, unit 1 = -(x1+x2) (always ≤ 0 on positive x), unit 2 = x1 - x2
        m.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, -1.0], [1.0, -1.0]]))
    return m


APOZ_X = torch.tensor([[1.0, 2.0], [3.0, 1.0], [2.0, 2.0], [1.0, 1.0]])  # unit 2: -1, 2, 0, 0 → relu zero 3 of 4


def test_apoz_of_an_always_zero_unit_is_one():
    m = apoz_model()
    a = apoz(m, {"fc": m}, [APOZ_X[:2], APOZ_X[2:]])["fc"]  # two batches, pooled
    assert torch.allclose(a, torch.tensor([0.0, 1.0, 0.75], dtype=a.dtype))
    s = apoz_scores(m, {"fc": m}, [(APOZ_X, None)])["fc"]  # (x, y) batches: labels ignored
    assert s.tolist() == [[1.0, 1.0], [0.0, 0.0], [0.25, 0.25]]  # 1 − APoZ per unit, broadcast to its weights


def test_apoz_measures_a_given_activation_module_and_pools_spatial_positions():
    conv = nn.Conv2d(1, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
    model = nn.Sequential(conv, nn.ReLU())
    x = torch.tensor([[[[1.0, -1.0], [0.0, 2.0]]]])  # unit 0 zero at 2 of 4 positions, unit 1 (= -x) at 3 of 4
    a = apoz(model, {"0": conv}, [x], activations={"0": model[1]})["0"]
    assert torch.allclose(a, torch.tensor([0.5, 0.75], dtype=a.dtype))


def test_apoz_pruner_removes_the_dead_unit_first():
    model = nn.Sequential(apoz_model(), nn.ReLU())
    ScorePruner(2 / 6, criterion="apoz", data=[(APOZ_X, None)], activations={"0": "1"}).prune(model)
    assert get_mask(model[0]).tolist() == [[T, T], [F, F], [T, T]]


def test_synflow_hand_worked_and_leaves_model_unchanged():
    model = nn.Sequential(nn.Linear(2, 1, bias=False), nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0]]))
        model[1].weight.copy_(torch.tensor([[-3.0]]))
    # R = |w2|·(|w11| + |w12|) = 3·3 = 9;  θ·∂R/∂θ: w1 → [3·1, 3·2], w2 → 3·3
    s = synflow_scores(model, {"0": model[0], "1": model[1]}, torch.randn(4, 2))
    assert torch.allclose(s["0"], torch.tensor([[3.0, 6.0]])) and torch.allclose(s["1"], torch.tensor([[9.0]]))
    assert model[0].weight.tolist() == [[1.0, -2.0]] and model[0].weight.grad is None


def test_block_mask_on_4x4():
    w = torch.tensor([[1, 1, 5, 5], [1, 1, 5, 5], [2, 2, 0.5, 0.5], [-2, 2, 0.5, -0.5]])
    # 2×2 block L1 sums: TL 4, TR 20, BL 8, BR 2; sparsity 0.5 = 8 entries = the two lowest blocks
    assert block_mask(w, 0.5, block=2).tolist() == [[F, F, T, T], [F, F, T, T], [T, T, F, F], [T, T, F, F]]
    # target round(0.3·16) = 5; prefixes remove 0, 4, 8: 4 is nearest, one block (BR)
    assert block_mask(w, 0.3, block=2).tolist() == [[T, T, T, T], [T, T, T, T], [T, T, F, F], [T, T, F, F]]
    # 1×4 blocks are rows: row sums 12, 12, 5, 5 → the two bottom rows
    assert block_mask(w, 0.5, block=(1, 4)).tolist() == [[T] * 4, [T] * 4, [F] * 4, [F] * 4]


def test_kernel_mask_on_2x2x3x3_l1_vs_l2():
    w = torch.ones(2, 2, 3, 3)
    w[0, 1] = 0.1             # L1 0.9
    w[1, 0] = -0.5            # L1 4.5, L2 1.5
    w[1, 1] = 0.0
    w[1, 1, 1, 1] = 3.0       # L1 3,   L2 3
    keep = kernel_mask(w, 0.5)  # 18 of 36 = two kernels: (0,1) 0.9 and (1,1) 3
    expected = torch.tensor([[T, F], [T, F]]).view(2, 2, 1, 1).expand(2, 2, 3, 3)
    assert torch.equal(keep, expected)
    keep2 = kernel_mask(w, 0.5, norm="l2")  # L2: (0,1) 0.3, (1,0) 1.5, (1,1) 3, (0,0) 3
    assert torch.equal(keep2, torch.tensor([[T, F], [F, T]]).view(2, 2, 1, 1).expand(2, 2, 3, 3))


def test_vector_mask_rows_and_columns_on_2x2x3x3():
    w = torch.ones(2, 2, 3, 3)
    w[0, 0, 1, :] = 0.1
    w[1, 1, 2, :] = 0.2
    keep = vector_mask(w, 6 / 36, vector="row")
    expected = torch.ones(2, 2, 3, 3, dtype=torch.bool)
    expected[0, 0, 1, :] = F
    expected[1, 1, 2, :] = F
    assert torch.equal(keep, expected)
    w = torch.ones(2, 2, 3, 3)
    w[0, 1, :, 0] = 0.01
    expected = torch.ones(2, 2, 3, 3, dtype=torch.bool)
    expected[0, 1, :, 0] = F
    assert torch.equal(vector_mask(w, 3 / 36, vector="col"), expected)


@pytest.mark.parametrize("granularity,kw,gsize", [("kernel", {}, 9), ("vector", {"vector": "row"}, 3),
                                                   ("vector", {"vector": "col"}, 3), ("block", {"block": 4}, 16)])
@pytest.mark.parametrize("sparsity", [0.1, 0.37, 0.5, 0.9])
def test_masks_zero_whole_groups_and_hit_sparsity_within_a_group(granularity, kw, gsize, sparsity):
    torch.manual_seed(1)
    w = torch.randn(8, 4, 3, 3)  # 2-D view (8, 36): 4×4 blocks tile it exactly
    keep = group_mask(w.abs(), sparsity, granularity, **kw)
    ids = group_ids(w.shape, granularity, **kw)
    for g in ids.unique():
        vals = keep[ids == g]
        assert vals.all() or not vals.any()
        assert vals.numel() == gsize
    removed = int((~keep).sum())
    assert abs(removed - round(sparsity * w.numel())) <= gsize / 2


def test_element_granularity_equals_level_pruning():
    torch.manual_seed(2)
    w = torch.randn(5, 7)
    assert torch.equal(group_mask(w.abs(), 0.4), level_mask(w, 0.4))


def test_score_pruner_block_on_linear_and_global_snip():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    ScorePruner(0.5, granularity="block", block=2).prune(model)
    for layer in (model[0], model[2]):
        m = get_mask(layer)
        assert int((~m).sum()) == m.numel() // 2
        assert torch.equal(m, m[::2, ::2].repeat_interleave(2, 0).repeat_interleave(2, 1))  # whole 2×2 blocks
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    data = [(torch.randn(6, 8), torch.randint(0, 4, (6,)))]
    ScorePruner(0.75, criterion="snip", scope="global", data=data).prune(model)
    removed = sum(int((~get_mask(layer)).sum()) for layer in (model[0], model[2]))
    assert removed == round(0.75 * (64 + 32))


def test_score_pruner_never_revives_and_counts_masked_first():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(2, 2, 3))
    ScorePruner(0.25, granularity="kernel").prune(model)  # 1 kernel of 4
    first = get_mask(model[0]).clone()
    ScorePruner(0.5, granularity="kernel").prune(model)   # 2 kernels: the pruned one counts as removed first
    second = get_mask(model[0])
    assert not (second & ~first).any() and int((~second).sum()) == 18


def test_score_pruner_refusals():
    with pytest.raises(UserError, match="criterion must be one of"):
        ScorePruner(0.5, criterion="hessian")
    with pytest.raises(UserError, match="needs calibration data"):
        ScorePruner(0.5, criterion="obd")
    with pytest.raises(UserError, match="granularity must be one of"):
        ScorePruner(0.5, granularity="channel")
    with pytest.raises(UserError, match="block must be"):
        ScorePruner(0.5, granularity="block", block=0)
    with pytest.raises(UserError, match="needs example_input"):
        ScorePruner(0.5, criterion="synflow")
    with pytest.raises(UserError, match="needs a conv weight"):
        ScorePruner(0.5, granularity="kernel").prune(nn.Sequential(nn.Linear(3, 3)))
    with pytest.raises(UserError, match="sparsity must be in"):
        ScorePruner(1.0)


def test_apoz_of_a_linear_on_token_sequences_counts_every_token():
    m = apoz_model()
    x = APOZ_X.view(2, 2, 2)  # (batch 2, tokens 2, features 2): same four samples as APOZ_X
    a = apoz(m, {"fc": m}, [x])["fc"]
    assert torch.allclose(a, torch.tensor([0.0, 1.0, 0.75], dtype=a.dtype))


def test_score_pruner_counts_entries_already_pruned_toward_the_target():
    model = nn.Sequential(nn.Linear(4, 4, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(1.0, 17.0).view(4, 4))
    ScorePruner(2 / 16).prune(model)  # elements 1 and 2 gone: they sit in the top-left 2×2 block (sum 1+2+5+6)
    ScorePruner(0.5, granularity="block", block=2).prune(model)
    # target 8 = 2 pruned + 6 more; blocks by L1 of live entries: TL 5+6=11 (2 live), TR 3+4+7+8=22, BL 46, BR 54.
    # prefixes remove 0, 2, 6, 10 more: 6 is exact, so TL and TR go
    assert get_mask(model[0]).tolist() == [[F, F, F, F], [F, F, F, F], [T, T, T, T], [T, T, T, T]]
    model = nn.Sequential(nn.Linear(4, 4, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(1.0, 17.0).view(4, 4))
    ScorePruner(2 / 16).prune(model)
    ScorePruner(0.25, granularity="block", block=2).prune(model)  # target 4 = 2 + 2: the live half of TL
    assert int((~get_mask(model[0])).sum()) == 4
