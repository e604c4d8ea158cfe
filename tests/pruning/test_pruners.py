"""Pruners: exact counts per layer and globally, monotone re-pruning, per-layer dicts, input errors."""
import pytest
import torch
from torch import nn

from nncompress.architectures import build_model
from nncompress.core.errors import UserError
from nncompress.pruning import LevelPruner, MagnitudePruner, SensitivityPruner, apply_mask, get_mask

T, F = True, False


class Two(nn.Module):
    def __init__(self, a, b):
        super().__init__()
        self.a = nn.Linear(len(a), 1, bias=False)
        self.b = nn.Linear(len(b), 1, bias=False)
        self.norm = nn.BatchNorm1d(1)
        with torch.no_grad():
            self.a.weight.copy_(torch.tensor([a]))
            self.b.weight.copy_(torch.tensor([b]))


def _keep(layer):
    return get_mask(layer).flatten().tolist()


def test_layer_vs_global_scope_counts():
    # 10 weights; 40 % of them is 4. Layer scope: round(0.4*4) = 2 from a, round(0.4*6) = 2 from b.
    model = Two([1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0, 50.0, 60.0])
    LevelPruner(0.4, scope="layer").prune(model)
    assert _keep(model.a) == [F, F, T, T] and _keep(model.b) == [F, F, T, T, T, T]
    # Global scope: one threshold over all 10, the 4 smallest are all in a.
    model = Two([1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0, 50.0, 60.0])
    LevelPruner(0.4, scope="global").prune(model)
    assert _keep(model.a) == [F, F, F, F] and _keep(model.b) == [T] * 6


def test_global_exact_count_on_lenet5():
    model = build_model("lenet5", (1, 28, 28), 10)
    LevelPruner(0.92, scope="global").prune(model)
    layers = [model.conv1, model.conv2, model.fc1, model.fc2]
    total = sum(m.weight.numel() for m in layers)  # 500 + 25000 + 400000 + 5000
    assert total == 430500
    assert sum(int((m.weight == 0).sum()) for m in layers) == round(0.92 * 430500)
    assert model.conv1.bias is not None and get_mask(model.conv1, "bias") is None


def test_repruning_is_monotone_and_exact():
    model = Two([0.5, -0.1, 0.9, 0.3, -0.7, 0.2, 0.8, -0.6], [1.0])
    LevelPruner({"a": 0.5}).prune(model)
    assert _keep(model.a) == [F, F, T, F, T, F, T, T]
    LevelPruner({"a": 0.25}).prune(model)  # lower target: nothing comes back
    assert _keep(model.a) == [F, F, T, F, T, F, T, T]
    LevelPruner({"a": 0.75}).prune(model)  # 6 of 8: adds the two smallest survivors (0.6, 0.7)
    assert _keep(model.a) == [F, F, T, F, F, F, T, F]


def test_level_counts_already_masked_entries_before_natural_zeros():
    model = Two([0.0, 1.0, 2.0, 3.0], [1.0])
    apply_mask(model.a, torch.tensor([[T, T, F, T]]))
    LevelPruner({"a": 0.25}).prune(model)  # 1 of 4 removed: the masked 2.0, not the genuine zero
    assert _keep(model.a) == [T, T, F, T]


def test_magnitude_and_sensitivity_pruners_per_layer():
    model = Two([-1.0, 2.0, -3.0, 4.0], [0.1, -0.2, 0.3])
    MagnitudePruner({"a": 2.0, "b": 0.15}).prune(model)
    assert _keep(model.a) == [F, F, T, T] and _keep(model.b) == [F, T, T]
    model = Two([-1.0, 2.0, -3.0, 4.0], [0.1, -0.2, 0.3])
    SensitivityPruner(1.0, layers=["a"]).prune(model)  # threshold 1·σ = sqrt(7.25) = 2.69
    assert _keep(model.a) == [F, F, T, T] and get_mask(model.b) is None


def test_sensitivity_pruner_sigma_from_dense_weights():
    model = Two([-1.0, 2.0, -3.0, 4.0], [1.0])
    apply_mask(model.a, torch.tensor([[T, F, T, T]]))
    SensitivityPruner({"a": 0.5}).prune(model)  # σ of the dense [-1, 2, -3, 4] -> threshold 1.346
    assert _keep(model.a) == [F, F, T, T]


def test_bad_layers_and_values_are_user_errors():
    model = Two([1.0, 2.0], [3.0])
    with pytest.raises(UserError, match=r"'nope'.*prunable layers are: a, b"):
        LevelPruner(0.5, layers=["a", "nope"]).prune(model)
    with pytest.raises(UserError, match="BatchNorm1d"):
        LevelPruner({"norm": 0.5}).prune(model)
    with pytest.raises(UserError, match="sparsity"):
        LevelPruner(1.5)
    with pytest.raises(UserError, match="layer 'a'"):
        LevelPruner({"a": -0.5})
    with pytest.raises(UserError, match="global"):
        LevelPruner({"a": 0.5}, scope="global")
    with pytest.raises(UserError, match="scope"):
        LevelPruner(0.5, scope="net")
    with pytest.raises(UserError, match="threshold"):
        MagnitudePruner(-1.0)
    with pytest.raises(UserError, match="not both"):
        MagnitudePruner({"a": 1.0}, layers=["a"]).prune(model)
    with pytest.raises(UserError, match="no Linear or Conv"):
        LevelPruner(0.5).prune(nn.Sequential(nn.ReLU()))
