"""Magnitude masks, DSD phases and lottery-ticket resets inside the real training loop."""
import copy

import pytest
import torch
from torch import nn

from nncompress.architectures import build_model
from nncompress.core import UserError
from nncompress.data import load_dataset, make_loaders
from nncompress.training import Callback, TrainConfig, train
from nncompress.training.dsd import dsd
from nncompress.training.lottery import iterative_magnitude_pruning, round_sparsities
from nncompress.training.masking import MaskCallback, magnitude_masks, mask_sparsity


@pytest.fixture(scope="module")
def loaders():
    return make_loaders(load_dataset("digits").subset(512, 300), batch_size=64, seed=0)


def _two_layers():
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[0.1, -0.5], [0.3, 2.0]]))
        net[1].weight.copy_(torch.tensor([[-1.0, 0.05], [0.2, 0.4]]))
    return net


def test_magnitude_masks_per_layer_and_global():
    net = _two_layers()
    m = magnitude_masks(net, 0.5)
    assert m["0"].tolist() == [[False, True], [False, True]]   # keeps −0.5 and 2.0
    assert m["1"].tolist() == [[True, False], [False, True]]   # keeps −1.0 and 0.4
    g = magnitude_masks(net, 0.5, scope="global")  # the 4 smallest of all 8: 0.05, 0.1, 0.2, 0.3
    assert g["0"].tolist() == [[False, True], [False, True]]
    assert g["1"].tolist() == [[True, False], [False, True]]
    g75 = magnitude_masks(net, 0.75, scope="global")  # keeps 2.0 and −1.0
    assert g75["0"].tolist() == [[False, False], [False, True]]
    assert g75["1"].tolist() == [[True, False], [False, False]]
    assert mask_sparsity(g75) == pytest.approx(0.75)


def test_masks_grow_from_current_even_if_pruned_weights_regrew():
    net = _two_layers()
    first = magnitude_masks(net, 0.25, layers=["0"])  # prunes 0.1
    with torch.no_grad():
        net[0].weight[0, 0] = 10.0  # a pruned weight that somehow grew stays pruned
    second = magnitude_masks(net, 0.5, layers=["0"], current=first)
    assert second["0"].tolist() == [[False, True], [False, True]]
    with pytest.raises(UserError):
        magnitude_masks(net, 1.0)


def test_mask_callback_keeps_zeros_through_momentum_and_weight_decay(loaders):
    net = build_model("lenet300", (1, 8, 8), 10)
    masks = magnitude_masks(net, 0.9)
    train(net, loaders[0], TrainConfig(epochs=2, lr=0.05, weight_decay=1e-3), callbacks=[MaskCallback(masks)])
    for name, keep in masks.items():
        w = getattr(net, name).weight
        assert torch.count_nonzero(w[~keep]) == 0
        assert torch.count_nonzero(w[keep]) == int(keep.sum())


def test_round_sparsities_prune_a_constant_fraction_of_what_is_left():
    assert round_sparsities(0.9, 2) == pytest.approx([1 - 0.1**0.5, 0.9])
    assert round_sparsities(0.75, 2) == pytest.approx([0.5, 0.75])


class _AtStart(Callback):
    """Records the weights each training run starts from (after the mask is applied)."""

    def __init__(self):
        self.states = []

    def on_train_begin(self, model, optimizer):
        self.states.append(copy.deepcopy(model.state_dict()))


@pytest.mark.parametrize("reset", ["rewind", "finetune", "reinit"])
def test_lottery_resets_start_each_round_from_the_right_weights(loaders, reset):
    torch.manual_seed(0)
    net = build_model("lenet300", (1, 8, 8), 10)
    init = copy.deepcopy(net.state_dict())
    probe, ends = _AtStart(), []

    class AtEnd(Callback):
        def on_train_end(self, model):
            ends.append(copy.deepcopy(model.state_dict()))

    res = iterative_magnitude_pruning(net, loaders[0], loaders[1], TrainConfig(epochs=2, lr=0.05), target_sparsity=0.75,
                                      rounds=2, reset=reset, rewind_step=0, callbacks=[probe, AtEnd()])
    assert res.sparsity == pytest.approx([0.0, 0.5, 0.75], abs=1e-3)
    assert len(res.top1) == 3
    if reset != "reinit":  # a random re-init under a 75% mask learns little in 16 steps; the others keep learning
        assert res.top1[-1] > 50.0
    start = probe.states[1]  # first pruned round
    w_start = start["fc1.weight"]
    alive = w_start != 0
    assert 0.45 < 1 - alive.float().mean() < 0.55
    if reset == "rewind":  # rewound to step 0: the original initialization, masked
        assert torch.equal(w_start[alive], init["fc1.weight"][alive])
    elif reset == "finetune":  # the dense run's trained weights, masked
        assert torch.equal(w_start[alive], ends[0]["fc1.weight"][alive])
    else:  # fresh weights: neither the init nor the trained ones
        assert not torch.allclose(w_start[alive], init["fc1.weight"][alive])
        assert not torch.allclose(w_start[alive], ends[0]["fc1.weight"][alive])
    for name, mask in res.masks.items():
        assert torch.count_nonzero(getattr(net, name).weight[~mask]) == 0


def test_dsd_phases(loaders):
    net = build_model("lenet300", (1, 8, 8), 10)
    sparsity_at_end = []

    class AtEnd(Callback):
        def on_train_end(self, model):
            sparsity_at_end.append(float((model.fc1.weight == 0).float().mean()))

    res = dsd(net, loaders[0], TrainConfig(epochs=2, lr=0.05), sparsity=0.5, val_loader=loaders[1], callbacks=[AtEnd()])
    assert list(res.top1) == ["dense", "sparse", "redense"]
    assert sparsity_at_end[0] == 0.0
    assert sparsity_at_end[1] == pytest.approx(0.5, abs=1e-3)  # sparse phase held the mask
    assert sparsity_at_end[2] < 0.01                          # re-dense let the pruned weights learn again
    assert res.top1["redense"] > 70.0
