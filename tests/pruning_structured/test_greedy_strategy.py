"""Li et al. 2017 (Sec. 3.2) greedy filter selection vs. the independent one, worked by hand (issue 17)."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from nncompress.core.errors import UserError
from nncompress.pruning.structured.prune import prune_channels

from .models import Residual, randomize_bn


class TwoConv(nn.Module):
    """conv1 (1→2) → relu → conv2 (2→2) → relu → conv3 (2→1); 1x1 kernels, no biases."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 1, bias=False)
        self.conv2 = nn.Conv2d(2, 2, 1, bias=False)
        self.conv3 = nn.Conv2d(2, 1, 1, bias=False)
        with torch.no_grad():
            self.conv1.weight.copy_(torch.tensor([1.0, 3.0]).view(2, 1, 1, 1))  # L1: 1, 3 -> channel 0 removed
            # filter 0 = [10, 1], filter 1 = [0, 5]: on all inputs L1 = 11 vs 5 (filter 1 weakest);
            # on the remaining input channel 1 only: 1 vs 5 (filter 0 weakest)
            self.conv2.weight.copy_(torch.tensor([[10.0, 1.0], [0.0, 5.0]]).view(2, 2, 1, 1))
            self.conv3.weight.copy_(torch.tensor([[2.0, 7.0]]).view(1, 2, 1, 1))

    def forward(self, x):
        return self.conv3(F.relu(self.conv2(F.relu(self.conv1(x)))))


X = torch.ones(1, 1, 3, 3)


def test_independent_removes_conv2_filter1():
    out = prune_channels(TwoConv(), X, "l1", 0.5, scope="filters", strategy="independent")
    assert out.conv1.weight.flatten().tolist() == [3.0]
    assert out.conv2.weight.flatten().tolist() == [1.0]  # filter 0 kept, sliced to input channel 1
    assert out.conv3.weight.flatten().tolist() == [2.0]
    assert torch.allclose(out(X), torch.full((1, 1, 3, 3), 6.0))  # 2·relu(1·relu(3·1))


def test_greedy_removes_conv2_filter0_and_leaves_the_model_alone():
    model = TwoConv()
    out = prune_channels(model, X, "l1", 0.5, scope="filters", strategy="greedy")
    assert out.conv1.weight.flatten().tolist() == [3.0]
    assert out.conv2.weight.flatten().tolist() == [5.0]  # filter 1 kept
    assert out.conv3.weight.flatten().tolist() == [7.0]
    assert model.conv2.weight.flatten().tolist() == [10.0, 1.0, 0.0, 5.0]  # zeroing happened on a copy
    assert torch.allclose(out(X), torch.full((1, 1, 3, 3), 105.0))  # 7·relu(5·relu(3·1))


def test_greedy_refuses_non_norm_criteria_and_macs():
    with pytest.raises(UserError, match="greedy"):
        prune_channels(TwoConv(), X, "random", 0.5, strategy="greedy")
    with pytest.raises(UserError, match="greedy"):
        prune_channels(TwoConv(), X, "l1", strategy="greedy", remove_macs=0.3)
    with pytest.raises(UserError, match="strategy"):
        prune_channels(TwoConv(), X, "l1", 0.5, strategy="lazy")


def test_greedy_on_a_residual_net_thins_every_group_and_runs():
    torch.manual_seed(0)
    model = randomize_bn(Residual())
    x = torch.randn(2, 3, 8, 8)
    out = prune_channels(model, x, "l1", 0.5, strategy="greedy")
    assert out.a.out_channels == 3 and out.stem.out_channels == 4 and out.head.out_channels == 2  # 6, 8, 5 halved
    assert out(x).shape == (2, 4)
