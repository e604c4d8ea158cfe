"""λΣ|w|^p and D_r = D_o·sqrt(C_r/C_o) against hand-worked values."""
import math

import pytest
import torch
from torch import nn

from nncompress.core import UserError
from nncompress.training.dropout import adjust_dropout, adjusted_dropout_rate, dropout_layers
from nncompress.training.regularizers import WeightRegularizer, weight_penalty


def _net():
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 0.0]]))
        net[0].bias.fill_(100.0)  # biases are not penalized
        net[2].weight.copy_(torch.tensor([[-0.5, 0.5]]))
    return net


def test_weight_penalty_l1_l2_hand_values():
    net = _net()
    assert weight_penalty(net, 1).item() == pytest.approx(1 + 2 + 3 + 0 + 0.5 + 0.5)
    assert weight_penalty(net, 2).item() == pytest.approx(1 + 4 + 9 + 0 + 0.25 + 0.25)
    assert weight_penalty(net, 1, layers=["2"]).item() == pytest.approx(1.0)
    with pytest.raises(UserError):
        weight_penalty(net, 1, layers=["nope"])


def test_regularizer_adds_lambda_times_penalty_and_its_gradient():
    net = _net()
    base = torch.tensor(0.25)
    out = WeightRegularizer(0.1, p=2).loss(net, None, None, None, base)
    assert out.item() == pytest.approx(0.25 + 0.1 * 14.5)
    out.backward()
    # d/dw λ·w² = 2λw
    assert net[0].weight.grad.flatten().tolist() == pytest.approx([0.2, -0.4, 0.6, 0.0])


def test_dropout_rate_formula():
    assert adjusted_dropout_rate(0.5, 100, 25) == pytest.approx(0.25)
    assert adjusted_dropout_rate(0.5, 1000, 1000) == pytest.approx(0.5)
    assert adjusted_dropout_rate(0.4, 300 * 100, 300 * 100 // 10) == pytest.approx(0.4 * math.sqrt(0.1))
    with pytest.raises(UserError):
        adjusted_dropout_rate(0.5, 10, 20)


def test_adjust_dropout_follows_the_pruned_layer():
    net = nn.Sequential(nn.Linear(8, 20), nn.ReLU(), nn.Dropout(0.5), nn.Linear(20, 10), nn.Dropout(0.3), nn.Linear(10, 2))
    with torch.no_grad():
        net[3].weight[:, :15] = 0.0  # 150 of 200 connections pruned → C_r/C_o = 1/4
    assert dropout_layers(net) == {"2": "3", "4": "5"}
    changes = adjust_dropout(net)
    assert changes["2"] == pytest.approx((0.5, 0.25))
    assert changes["4"] == pytest.approx((0.3, 0.3))  # the last layer is dense
    assert net[2].p == pytest.approx(0.25)
    # calling again after more pruning starts from the dense rates, not the already lowered ones
    with torch.no_grad():
        net[3].weight[:, :] = 0.0
        net[3].weight[0, 0] = 1.0
    adjust_dropout(net, original_rates={"2": 0.5, "4": 0.3})
    assert net[2].p == pytest.approx(0.5 * math.sqrt(1 / 200))
