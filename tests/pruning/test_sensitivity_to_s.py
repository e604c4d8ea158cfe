"""sensitivity_to_s: the sweep's per-layer sparsities as s for the s·σ SensitivityPruner (issue 17)."""
import math

import pytest
import torch
from torch import nn

from nncompress.core.errors import UserError
from nncompress.pruning.mask import get_mask
from nncompress.pruning.pruners import SensitivityPruner
from nncompress.pruning.sensitivity import SensitivityResult, sensitivity_to_s


def _model():
    m = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 4, bias=False))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[1.0, -2.0], [3.0, -4.0]]))
        m[1].weight.copy_(torch.tensor([[0.5, -1.0], [2.0, 6.0], [-3.0, 0.25], [4.0, -8.0]]))
    return m


def _result():
    # layer "0": drops 0, 1, 5 points at 0 / 0.5 / 0.75 -> 0.5 for max_drop 1; layer "1": 0.75 allowed
    return SensitivityResult(levels=[0.0, 0.5, 0.75], metrics={"0": [90.0, 89.0, 85.0], "1": [90.0, 90.0, 89.5]}, baseline=90.0)


def test_s_for_half_is_median_over_population_std_by_hand():
    s = sensitivity_to_s(_result(), _model(), max_drop=1.0)
    # layer 0: |w| = 1,2,3,4 -> median 2.5; mean -0.5, deviations 1.5,-1.5,3.5,-3.5 -> var 29/4 -> σ = sqrt(29)/2
    assert s["0"] == pytest.approx(2.5 / (math.sqrt(29) / 2), rel=1e-12)
    # layer 1: |w| sorted 0.25,0.5,1,2,3,4,6,8; 75 % quantile (linear): position 5.25 -> 4 + 0.25·2 = 4.5
    w = [0.5, -1.0, 2.0, 6.0, -3.0, 0.25, 4.0, -8.0]
    mean = sum(w) / 8  # 0.71875
    sigma = math.sqrt(sum((x - mean) ** 2 for x in w) / 8)
    assert s["1"] == pytest.approx(4.5 / sigma, rel=1e-12)


def test_sensitivity_pruner_reproduces_the_sweep_sparsities():
    res, model = _result(), _model()
    targets = res.targets(1.0)
    assert targets == {"0": 0.5, "1": 0.75}
    SensitivityPruner(sensitivity_to_s(res, model, max_drop=1.0)).prune(model)
    for name, sparsity in targets.items():
        mask = get_mask(model[int(name)])
        removed = int((~mask).sum())
        assert abs(removed - sparsity * mask.numel()) <= 1
    assert (~get_mask(model[0])).sum() == 2 and (~get_mask(model[1])).sum() == 6  # here exact: 1,2 and 0.25..4 gone


def test_zero_sparsity_gives_zero_s_and_bad_drop_refused():
    res = SensitivityResult(levels=[0.0, 0.5], metrics={"0": [90.0, 80.0], "1": [90.0, 80.0]}, baseline=90.0)
    assert sensitivity_to_s(res, _model(), max_drop=1.0) == {"0": 0.0, "1": 0.0}
    with pytest.raises(UserError):
        sensitivity_to_s(res, _model(), max_drop=-1.0)
