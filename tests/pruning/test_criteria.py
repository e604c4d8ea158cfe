"""Criteria against hand-worked values."""
import math

import pytest
import torch

from nncompress.core.errors import UserError
from nncompress.pruning import (
    largest_magnitude_mask,
    level_mask,
    magnitude_threshold_mask,
    random_mask,
    sensitivity_mask,
    sensitivity_threshold,
)

T, F = True, False


def test_magnitude_threshold_keeps_strictly_greater():
    w = torch.tensor([[-0.5, 0.1], [0.3, -0.2], [0.0, 0.25]])
    assert magnitude_threshold_mask(w, 0.25).tolist() == [[T, F], [T, F], [F, F]]  # 0.25 itself is pruned
    assert magnitude_threshold_mask(w, 0.0).tolist() == [[T, T], [T, T], [F, T]]


def test_level_mask_removes_exactly_k_with_ties_broken_by_index():
    w = torch.tensor([0.3, -0.1, 0.1, 0.2, -0.1, 0.5])
    # k = round(2/6 * 6) = 2; three entries tie at |w| = 0.1 (indices 1, 2, 4): the two lowest indices go
    assert level_mask(w, 2 / 6).tolist() == [T, F, F, T, T, T]
    # k = 3 removes all three ties
    assert level_mask(w, 0.5).tolist() == [T, F, F, T, F, T]
    assert level_mask(w, 0.0).all()


def test_level_mask_rounds_half_up_and_keeps_shape():
    w = torch.arange(1.0, 6.0).reshape(5, 1)  # 5 entries, sparsity 0.5 -> 2.5 -> 3 removed
    m = level_mask(w, 0.5)
    assert m.shape == (5, 1)
    assert m.flatten().tolist() == [F, F, F, T, T]
    assert int((~level_mask(torch.randn(7, 13), 0.9)).sum()) == round(0.9 * 91)  # 81.9 -> 82


def test_sensitivity_threshold_is_s_times_population_std():
    # std of [1, 2, 3, 4]: mean 2.5, squared deviations sum 5 -> biased (N) variance 1.25
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert sensitivity_threshold(w, 1.0) == pytest.approx(math.sqrt(1.25))
    assert sensitivity_threshold(w, 2.0) == pytest.approx(2 * 1.118033988749895)
    assert sensitivity_threshold(w, 1.0) != pytest.approx(math.sqrt(5 / 3))  # not the unbiased (N-1) one


def test_sensitivity_mask_uses_std_of_signed_weights():
    # values -1, 2, -3, 4: mean 0.5, squared deviations 2.25+2.25+12.25+12.25 = 29 -> sigma = sqrt(7.25) = 2.693
    w = torch.tensor([[-1.0, 2.0], [-3.0, 4.0]])
    assert sensitivity_mask(w, 1.0).tolist() == [[F, F], [T, T]]
    assert sensitivity_mask(w, 0.5).tolist() == [[F, T], [T, T]]  # threshold 1.346


def test_ablation_masks():
    w = torch.tensor([0.3, -0.1, 0.1, 0.2, -0.1, 0.5])
    assert largest_magnitude_mask(w, 2 / 6).tolist() == [F, T, T, T, T, F]
    r1, r2 = random_mask(torch.zeros(10, 10), 0.3, seed=1), random_mask(torch.zeros(10, 10), 0.3, seed=1)
    assert int((~r1).sum()) == 30 and torch.equal(r1, r2)
    assert not torch.equal(r1, random_mask(torch.zeros(10, 10), 0.3, seed=2))


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.1, float("nan"), "0.5"])
def test_sparsity_out_of_range_is_a_user_error(bad):
    with pytest.raises(UserError, match="sparsity"):
        level_mask(torch.ones(4), bad)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_negative_threshold_is_a_user_error(bad):
    with pytest.raises(UserError, match="threshold"):
        magnitude_threshold_mask(torch.ones(4), bad)
    with pytest.raises(UserError):
        sensitivity_threshold(torch.ones(4), bad)
