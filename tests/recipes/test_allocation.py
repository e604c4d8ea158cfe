"""Sensitivity allocation of per-layer sparsity and bits: the greedy on hand-worked grids, the measured grid on
hand-derivable cases, and the pipeline's use of it (validation split only, user-fixed values kept)."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import nncompress.recipes.deep_compression as dc
from nncompress.core.errors import UserError
from nncompress.recipes.allocation import LayerGrid, _one_shot, expected_top1, greedy_allocate, sensitivity_grid
from nncompress.recipes.deep_compression import DeepCompressionConfig, run_deep_compression


def _grids():
    a = LayerGrid("a", [0.5, 0.9], [4], [[0.0], [1.0]], [[1000], [200]])  # one move: saves 800 B for 1 pp
    b = LayerGrid("b", [0.5, 0.9], [4, 2], [[0.0, 0.5], [2.0, 3.0]], [[500, 300], [100, 60]])
    return [a, b]


def test_greedy_takes_the_cheapest_points_per_byte_within_the_budget():
    # costs per byte: a sparsity 1/800 = 0.00125; b bits 0.5/200 = 0.0025; b sparsity 2/400 = 0.005
    state, steps = greedy_allocate(_grids(), 1.2)
    assert state == {"a": (1, 0), "b": (0, 0)}  # after a (1.0 pp) every b move overshoots 1.2
    state, steps = greedy_allocate(_grids(), 1.5)
    assert state == {"a": (1, 0), "b": (0, 1)} and [s["layer"] + ":" + s["move"] for s in steps] == ["a:sparsity", "b:bits"]
    assert steps[-1]["spent_pp"] == pytest.approx(1.5) and steps[-1]["bytes"] == pytest.approx(200 + 300)
    state, steps = greedy_allocate(_grids(), 10)
    assert state == {"a": (1, 0), "b": (1, 1)} and steps[-1]["spent_pp"] == pytest.approx(1.0 + 3.0)
    assert greedy_allocate(_grids(), 0.0)[0] == {"a": (0, 0), "b": (0, 0)}


def test_free_moves_go_biggest_saving_first_and_noise_is_made_monotone():
    c = LayerGrid("c", [0.5, 0.9], [5, 4], [[0, 0], [0, 0]], [[100, 90], [20, 18]])
    _, steps = greedy_allocate([c], 0.0)
    assert [s["move"] for s in steps] == ["sparsity", "bits"]  # 80 B before 2 B, both free
    noisy = LayerGrid("n", [0.5, 0.8, 0.9], [4], [[1.0], [0.5], [2.0]], [[10], [5], [1]])
    assert noisy.monotone_drop().ravel().tolist() == [1.0, 1.0, 2.0]  # 0.8 is no cheaper than 0.5
    gain = LayerGrid("g", [0.3, 0.6], [8, 4], [[-0.25, -0.5], [0.25, 0.0]], [[9, 8], [7, 6]])
    assert gain.monotone_drop().tolist() == [[0.0, 0.0], [0.25, 0.25]]  # a one-shot "gain" is no budget
    state, _ = greedy_allocate([noisy], 1.0)
    assert state == {"n": (1, 0)}  # free step (monotone cost 0), then 0.9 costs 1 more: over budget 1.0


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), True])
def test_budget_must_be_a_finite_non_negative_number(bad):
    with pytest.raises(UserError, match="budget"):
        greedy_allocate(_grids(), bad)


def test_one_shot_bytes_are_the_streams_entropy_plus_codebook():
    """w = [1, -1, .1, .1, 1, -1, .1, .1], 50 %: keep positions 0, 1, 4, 5 → gap symbols [0, 0, 2, 0]:
    3·log2(4/3) + log2(4) bits; codes at 1 bit: {-1, 1} twice each → 4 bits; codebook 2 × 32 bits."""
    flat = np.array([1, -1, 0.1, 0.1, 1, -1, 0.1, 0.1])
    out, nbytes = _one_shot(flat, np.argsort(np.abs(flat), kind="stable"), 0.5, 1)
    assert out.tolist() == [1, -1, 0, 0, 1, -1, 0, 0]
    assert nbytes == pytest.approx((3 * math.log2(4 / 3) + 2 + 4 + 64) / 8)


def test_expected_top1_is_the_mean_probability_of_the_true_class():
    """Logits [0, ln 3] give p = [1/4, 3/4]; labels [1, 0] score 3/4 and 1/4: 50 %. Hard top-1 would say 50 % too,
    but labels [1, 1] give 75 % where hard top-1 gives 100 %."""
    class Fixed(nn.Module):
        def forward(self, x):
            return torch.tensor([[0.0, math.log(3)]]).expand(len(x), 2)

    x = torch.zeros(2, 1)
    assert expected_top1(Fixed(), [(x, torch.tensor([1, 0]))]) == pytest.approx(50.0)
    assert expected_top1(Fixed(), [(x, torch.tensor([1, 1])), (x[:1], torch.tensor([0]))]) == pytest.approx(100 * (0.75 * 2 + 0.25) / 3)


def test_grid_drop_is_what_the_metric_loses_and_the_model_is_restored():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 10), nn.Linear(10, 4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # metric = 100 · fraction of layer 0's weights that are non-zero: pruning layer 0 to s loses exactly 100·s,
    # pruning layer 1 loses nothing
    grids, base = sensitivity_grid(model, ["0", "1"], {"0": [0.5, 0.9], "1": [0.3]}, {"0": [4], "1": [3, 2]},
                                   lambda m: 100.0 * float((m[0].weight != 0).float().mean()))
    assert base == 100.0
    np.testing.assert_allclose(grids[0].drop_pp.ravel(), [50.0, 90.0])
    np.testing.assert_allclose(grids[1].drop_pp, [[0.0, 0.0]])
    assert grids[0].est_bytes[1, 0] < grids[0].est_bytes[0, 0] and grids[1].est_bytes[0, 1] < grids[1].est_bytes[0, 0]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def _small(tmp, cache=None, **kw):
    cfg = DeepCompressionConfig(model="lenet300", data="digits", out_dir=str(tmp / "out"), cache_dir=str(cache or tmp / "cache"), threads=1,
                                baseline_epochs=6, prune_steps=1, prune_finetune_epochs=1, share_finetune_epochs=1,
                                progress=False, **kw)
    return run_deep_compression(cfg, log=lambda *a: None)


@pytest.fixture(scope="module")
def allocated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("alloc")
    return _small(tmp, bits={"fc3": 5}, budget_pp=3.0), tmp / "cache"


def test_pipeline_uses_the_allocation_and_keeps_fixed_bits(allocated):
    allocated, _ = allocated
    alloc = allocated.allocation
    assert alloc is not None and alloc["spent_pp"] <= 3.0 + 1e-9
    layers = {r["layer"]: r for r in allocated.layers}
    assert alloc["bits"]["fc3"] == 5 and alloc["grid"]["fc3"]["bits"] == [5]  # fixed by the user: not searched
    for name, r in layers.items():
        assert r["sparsity"] == pytest.approx(alloc["sparsity"][name], abs=1e-3)
        assert r["codebook"] <= 2 ** alloc["bits"][name]
    assert set(allocated.val_top1) == {"dense fp32", "pruned", "shared"}


def test_allocation_never_looks_at_the_test_split(tmp_path, allocated, monkeypatch):
    """The same run with the test labels scrambled must choose exactly the same sparsity and bits."""
    real = dc.load_dataset

    def scrambled(*a, **k):
        ds = real(*a, **k)
        ds.y_test = torch.from_numpy(np.random.default_rng(0).permutation(ds.y_test.numpy()))
        return ds

    allocated, cache = allocated
    monkeypatch.setattr(dc, "load_dataset", scrambled)
    again = _small(tmp_path, cache, bits={"fc3": 5}, budget_pp=3.0)  # the same cached baseline: only the split differs
    assert again.stages[0].top1 < 50 < allocated.stages[0].top1  # the test labels did change
    assert again.allocation["sparsity"] == allocated.allocation["sparsity"]
    assert again.allocation["bits"] == allocated.allocation["bits"]
    assert again.allocation["grid"] == allocated.allocation["grid"]


def test_fixed_sparsity_and_bits_skip_the_allocation_and_bad_knobs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="budget_pp"):
        _small(tmp_path, budget_pp=-1)
    with pytest.raises(UserError, match="val_fraction"):
        _small(tmp_path, val_fraction=0.9)
    with pytest.raises(UserError, match="unknown layers"):
        _small(tmp_path, bits={"fc9": 4})
