"""Criteria against hand-worked scores, ratio bookkeeping, the one-call pruner, sensitivity-derived ratios."""
import numpy as np
import pytest
import torch
from torch import nn

from nncompress.architectures import LeNet5, resnet20
from nncompress.core.errors import UserError
from nncompress.data import load_dataset, make_loaders
from nncompress.pruning.structured import build_dependency_graph, channel_scores, count_macs, n_keep, prune_channels
from nncompress.pruning.structured.prune import channels_to_remove, resolve_ratios
from nncompress.pruning.structured.sensitivity import ratios_from_sensitivity, structured_sensitivity

from .models import Residual


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 3, 1, bias=False)
        self.bn = nn.BatchNorm2d(3)
        self.c2 = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return self.c2(torch.relu(self.bn(self.c1(x))))


def tiny():
    torch.manual_seed(0)
    m = Tiny().eval()
    with torch.no_grad():
        m.c1.weight.copy_(torch.tensor([1.0, -3.0, 2.0]).view(3, 1, 1, 1))
        m.bn.weight.copy_(torch.tensor([0.5, -0.1, 2.0]))
        m.c2.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [1.0, 1.0, -1.0]]).view(2, 3, 1, 1))
    return m


def test_l1_l2_bn_largest_scores_hand_worked():
    m = tiny()
    graph = build_dependency_graph(m, torch.randn(1, 1, 2, 2))
    assert [g.name for g in graph.groups] == ["c1"]
    assert channel_scores(m, graph, "l1", scope="filters")["c1"].tolist() == [1.0, 3.0, 2.0]
    assert channel_scores(m, graph, "l2", scope="filters")["c1"].tolist() == [1.0, 3.0, 2.0]
    assert channel_scores(m, graph, "largest", scope="filters")["c1"].tolist() == [-1.0, -3.0, -2.0]
    # group scope: mean of |filter|, |c2 input column| and |γ|: ([1, 3, 2] + [2, 1, 3] + [0.5, 0.1, 2]) / 3
    assert np.allclose(channel_scores(m, graph, "l1")["c1"], [3.5 / 3, 4.1 / 3, 7.0 / 3])
    l2 = [(1 + 2**0.5 + 0.5) / 3, (3 + 1 + 0.1) / 3, (2 + 5**0.5 + 2) / 3]  # column L2: √2, 1, √5
    assert np.allclose(channel_scores(m, graph, "l2")["c1"], l2)
    assert np.allclose(channel_scores(m, graph, "bn_scale")["c1"], [0.5, 0.1, 2.0])
    r1, r2 = channel_scores(m, graph, "random", seed=1)["c1"], channel_scores(m, graph, "random", seed=1)["c1"]
    assert np.array_equal(r1, r2) and not np.array_equal(r1, channel_scores(m, graph, "random", seed=2)["c1"])


def test_residual_group_score_is_the_mean_over_coupled_filters():
    m = Residual().eval()
    with torch.no_grad():
        m.stem.weight.fill_(1.0)  # each stem filter: 27 weights of 1 → L1 27
        m.b.weight.fill_(-2.0)  # each b filter: 54 weights of -2 → L1 108
    graph = build_dependency_graph(m, torch.randn(1, 3, 8, 8))
    assert np.allclose(channel_scores(m, graph, "l1", scope="filters")["stem"], (27 + 108) / 2)


def test_taylor_equals_squared_gradient_times_weight_summed_over_the_channel():
    m = tiny()
    x, y = torch.randn(4, 1, 2, 2), torch.randint(0, 2, (4, 2, 2), generator=torch.Generator().manual_seed(0))
    graph = build_dependency_graph(m, x)
    scores = channel_scores(m, graph, "taylor", data=[(x, y)])["c1"]
    ref = tiny()  # by hand: one backward pass, then (Σ g·w over the filter and its bn entries)²
    nn.functional.cross_entropy(ref(x), y).backward()
    gw = (ref.c1.weight.grad * ref.c1.weight).flatten(1).sum(1) + ref.bn.weight.grad * ref.bn.weight + ref.bn.bias.grad * ref.bn.bias
    assert np.allclose(scores, (gw**2).detach().numpy(), rtol=1e-5)
    assert m.c1.weight.grad is None  # gradients cleaned up
    with pytest.raises(UserError, match="needs data"):
        channel_scores(m, graph, "taylor")


def test_bn_scale_needs_batch_norm_and_unknown_criterion_is_refused():
    m = LeNet5()
    graph = build_dependency_graph(m, torch.randn(1, 1, 28, 28))
    with pytest.raises(UserError, match="needs a batch norm after layer 'conv1'"):
        channel_scores(m, graph, "bn_scale")
    with pytest.raises(UserError, match="unknown criterion 'l3'"):
        channel_scores(m, graph, "l3")


def test_n_keep_rounding():
    assert n_keep(64, 0.5) == 32
    assert n_keep(20, 0.25) == 15
    assert n_keep(3, 0.99) == 1  # never an empty layer
    assert n_keep(64, 0.3, round_to=8) == 48  # 44.8 → 45 → nearest multiple of 8
    assert n_keep(6, 0.5, round_to=8) == 3  # narrower than the multiple: plain rounding


def test_channels_to_remove_drops_the_lowest_scores():
    plan = channels_to_remove({"a": np.array([0.3, 0.1, 0.9, 0.2])}, {"a": 0.5})
    assert plan == {"a": [1, 3]}


def test_prune_channels_uniform_and_by_hand():
    torch.manual_seed(0)
    m = tiny()
    x = torch.randn(2, 1, 4, 4)
    p = prune_channels(m, x, "l1", 1 / 3, scope="filters")
    assert p.c1.out_channels == 2 and p.c1.weight.flatten().tolist() == [-3.0, 2.0]  # the weakest filter went
    p = prune_channels(m, x, "l1", 1 / 3)
    assert p.c1.weight.flatten().tolist() == [-3.0, 2.0] and p.c2.weight[:, :, 0, 0].tolist() == [[0.0, 2.0], [1.0, -1.0]]
    model = resnet20((1, 8, 8), 10)
    graph = build_dependency_graph(model, torch.randn(2, 1, 8, 8))
    ratios = resolve_ratios(graph, 0.25, {"layer3.1.conv1": 0.75})
    assert ratios["layer3.1.conv1"] == 0.75 and ratios["layer1.0.conv1"] == 0.25
    p = prune_channels(model, torch.randn(2, 1, 8, 8), "l1", 0.25, ratios={"layer3.1.conv1": 0.75})
    assert p.layer3[1].conv1.out_channels == 16 and p.layer1[0].conv1.out_channels == 12 and p.conv1.out_channels == 12
    with pytest.raises(UserError, match=r"in \[0, 1\)"):
        prune_channels(model, torch.randn(2, 1, 8, 8), "l1", 1.0)


def test_remove_macs_hits_the_target():
    model, x = resnet20((1, 12, 12), 10), torch.randn(2, 1, 12, 12)
    p = prune_channels(model, x, "l1", remove_macs=0.5)
    kept = count_macs(p, x) / count_macs(model, x)
    assert 0.44 <= kept <= 0.5


def test_sensitivity_scan_and_ratios():
    ds = load_dataset("digits").subset(300, 200)
    _, loader = make_loaders(ds)
    torch.manual_seed(0)
    model = LeNet5(ds.input_shape, 10).eval()
    scan = structured_sensitivity(model, ds.x_test[:2], loader, ratios=(0.5, 0.9))
    assert set(scan) == {"conv1", "conv2", "fc1"} and set(scan["conv1"]) == {0.5, 0.9}
    fake = {"a": {0.25: 95.0, 0.5: 94.5, 0.75: 80.0}, "b": {0.25: 90.0, 0.5: 70.0}}
    assert ratios_from_sensitivity(fake, 95.2, max_drop=1.0) == {"a": 0.5, "b": 0.0}
