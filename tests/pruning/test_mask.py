"""Masks as parametrizations: forward, gradients, training with momentum + weight decay, state dicts, finalize."""
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from nncompress.core.errors import UserError
from nncompress.core.io import load_weights, save_weights
from nncompress.pruning import (
    LevelPruner,
    apply_mask,
    dense_tensor,
    finalize,
    get_mask,
    load_masked_state_dict,
    load_masks,
    mask_state_dict,
    masked_layers,
    remove_mask,
)
from nncompress.training import TrainConfig, train

T, F = True, False


def _linear():
    layer = nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0, 3.0], [-4.0, 5.0, -6.0]]))
        layer.bias.copy_(torch.tensor([0.5, -0.5]))
    return layer


def test_forward_uses_weight_times_mask_and_masked_gradients_are_zero():
    layer = _linear()
    apply_mask(layer, torch.tensor([[T, F, T], [F, T, F]]))
    assert layer.weight.tolist() == [[1.0, 0.0, 3.0], [0.0, 5.0, 0.0]]
    x = torch.tensor([[1.0, 1.0, 1.0]])
    out = layer(x)
    assert out.tolist() == [[1.0 + 3.0 + 0.5, 5.0 - 0.5]]
    out.sum().backward()
    grad = dense_tensor(layer).grad
    assert grad.tolist() == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]  # d(w*m)/dw = m
    assert dense_tensor(layer).tolist() == [[1.0, -2.0, 3.0], [-4.0, 5.0, -6.0]]  # dense kept


def test_reapplying_intersects_and_replace_swaps():
    layer = _linear()
    apply_mask(layer, torch.tensor([[T, T, F], [T, F, T]]))
    apply_mask(layer, torch.tensor([[T, F, T], [T, T, T]]))
    assert get_mask(layer).tolist() == [[T, F, F], [T, F, T]]
    apply_mask(layer, torch.tensor([[F, T, T], [T, T, T]]), replace=True)
    assert get_mask(layer).tolist() == [[F, T, T], [T, T, T]]
    assert len(layer.parametrizations.weight) == 1  # one mask, updated in place


def test_shape_mismatch_and_missing_tensor_are_user_errors():
    with pytest.raises(UserError, match="shape"):
        apply_mask(_linear(), torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(UserError, match="no tensor"):
        apply_mask(nn.ReLU(), torch.ones(1, dtype=torch.bool))


def test_sgd_momentum_and_weight_decay_cannot_revive_pruned_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    LevelPruner(0.5).prune(model)
    masks = {n: m.clone() for n, m in mask_state_dict(model).items()}
    before = {n: m.weight.detach().clone() for n, m in masked_layers(model).items()}
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)
    train(model, loader, TrainConfig(epochs=3, lr=0.1, momentum=0.9, weight_decay=0.1, lr_schedule="constant", progress=False))
    for name, layer in masked_layers(model).items():
        keep = masks[f"{name}.weight"]
        assert torch.equal(get_mask(layer), keep)
        assert (layer.weight[~keep] == 0).all()  # exactly zero in forward
        assert not torch.equal(layer.weight[keep], before[name][keep])  # training did happen
        assert (dense_tensor(layer)[~keep] != 0).any()  # dense entries moved (decay) but stay masked
        assert layer.bias is not None and get_mask(layer, "bias") is None  # biases stay dense
    finalize(model)
    assert masked_layers(model) == {}
    for name in ("0", "2"):
        layer = dict(model.named_modules())[name]
        assert type(layer) is nn.Linear and type(layer.weight) is nn.Parameter
        assert (layer.weight[~masks[f"{name}.weight"]] == 0).all()
    assert sorted(model.state_dict()) == ["0.bias", "0.weight", "2.bias", "2.weight"]


def test_optimizer_built_before_pruning_still_trains_the_dense_weight():
    layer = _linear()
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    apply_mask(layer, torch.tensor([[T, F, T], [F, T, F]]))
    layer(torch.ones(1, 3)).sum().backward()
    opt.step()
    assert layer.weight.tolist() == [[0.0, 0.0, 2.0], [0.0, 4.0, 0.0]]  # kept entries moved by -lr * 1


def test_state_dict_round_trip_through_safetensors(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 2))
    LevelPruner({"0": 0.5}).prune(model)
    save_weights(model.state_dict(), tmp_path / "m.safetensors")
    fresh = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 2))
    load_masked_state_dict(fresh, load_weights(tmp_path / "m.safetensors"))
    assert list(masked_layers(fresh)) == ["0"]
    assert torch.equal(get_mask(fresh[0]), get_mask(model[0]))
    assert torch.equal(dense_tensor(fresh[0]), dense_tensor(model[0]))
    x = torch.randn(3, 5)
    assert torch.equal(fresh(x), model(x))
    # masks alone, onto another model
    other = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 2))
    load_masks(other, mask_state_dict(model))
    assert int((other[0].weight == 0).sum()) == 10
    # a plain state dict loads too
    plain = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 2))
    load_masked_state_dict(plain, finalize(model).state_dict())
    assert masked_layers(plain) == {} and int((plain[0].weight == 0).sum()) == 10


def test_remove_mask_restores_dense_values():
    layer = _linear()
    apply_mask(layer, torch.tensor([[F, F, F], [T, T, T]]))
    remove_mask(layer)
    assert get_mask(layer) is None
    assert layer.weight.tolist() == [[1.0, -2.0, 3.0], [-4.0, 5.0, -6.0]]
