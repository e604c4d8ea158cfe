"""Grouped convolutions lose the same in-group channels in every conv-group (groups kept), through channel shuffles.

Hand-worked toy: c1 (3→8, 1×1) → g1 (8→8, 1×1, 2 groups) → bn1 → relu → shuffle(2) → g2 (8→6, 3×3, 2 groups) → relu
→ pool → fc (6→5). g1 reads c1's channels p and 4+p at in-group position p, so they are one unit (4 units). The
shuffle sends input i·4 + j to output j·2 + i, so g1's output pair u_j (channels j, 4+j, one per conv-group) lands
at g2 inputs 2j, 2j+1: u0, u1 in g2's conv-group 0 and u2, u3 in group 1, so {u0, u2} and {u1, u3} are g1's two
units. g2's outputs v0, v1, v2 repeat in both groups and reach fc's columns (3 units).
"""
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from nncompress.architectures import ShuffleNetV1
from nncompress.architectures.blocks import channel_shuffle
from nncompress.core.errors import UserError
from nncompress.pruning.structured import build_dependency_graph, channel_scores, count_params, prune_channels, remove_channels
from nncompress.pruning.structured import resize_to_state_dict
from nncompress.pruning.structured.criteria import member_positions
from nncompress.pruning.structured.measure import count_macs
from nncompress.pruning.structured.prune import channels_to_remove

from .models import randomize_bn


class ShuffleToy(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 1)
        self.g1 = nn.Conv2d(8, 8, 1, groups=2)
        self.bn1 = nn.BatchNorm2d(8)
        self.g2 = nn.Conv2d(8, 6, 3, padding=1, groups=2)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        y = channel_shuffle(F.relu(self.bn1(self.g1(F.relu(self.c1(x))))), 2)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(F.relu(self.g2(y)), 1), 1))


def toy():
    torch.manual_seed(0)
    return randomize_bn(ShuffleToy()), torch.randn(3, 3, 8, 8)


PLAN = {"c1": [1], "g1": [0], "g2": [1]}  # c1 channels 1, 5; g1 outputs 0, 2, 4, 6 (u0, u2); g2 outputs 1, 4 (v1)


def test_groups_of_the_toy_by_hand():
    model, x = toy()
    graph = build_dependency_graph(model, x)
    groups = {g.name: g for g in graph.groups}
    assert {n: g.size for n, g in groups.items()} == {"c1": 4, "g1": 2, "g2": 3}
    assert groups["c1"].consumers == ("g1",) and groups["g1"].producers == ("g1",) and groups["g1"].consumers == ("g2",)
    assert groups["g1"].norms == ("bn1",) and groups["g2"].consumers == ("fc",)
    c1 = graph.labels[("c1", "out")]
    assert list(c1[:4]) == list(c1[4:]) and len(set(c1[:4].tolist())) == 4  # position p of both conv-groups
    g1 = graph.labels[("g1", "gw_out")]
    assert list(graph.labels[("g2", "gw_in")]) == list(g1[[0, 4, 1, 5, 2, 6, 3, 7]])  # the shuffle's permutation
    assert g1[0] == g1[2] == g1[4] == g1[6] and g1[1] == g1[3] != g1[0]  # {u0, u2} and {u1, u3}


def test_toy_thins_keeping_groups_and_matches_the_zeroed_reference():
    model, x = toy()
    pruned = remove_channels(model, build_dependency_graph(model, x), PLAN, x)
    assert (pruned.g1.in_channels, pruned.g1.out_channels, pruned.g1.groups) == (6, 4, 2)
    assert (pruned.g2.in_channels, pruned.g2.out_channels, pruned.g2.groups) == (4, 4, 2)
    torch.testing.assert_close(pruned.c1.weight, model.c1.weight[[0, 2, 3, 4, 6, 7]])
    torch.testing.assert_close(pruned.g1.weight, model.g1.weight[[1, 3, 5, 7]][:, [0, 2, 3]])
    torch.testing.assert_close(pruned.bn1.running_mean, model.bn1.running_mean[[1, 3, 5, 7]])
    torch.testing.assert_close(pruned.g2.weight, model.g2.weight[[0, 2, 3, 5]][:, [2, 3]])
    torch.testing.assert_close(pruned.fc.weight, model.fc.weight[:, [0, 2, 3, 5]])
    with torch.no_grad():  # the reference: the same channels silenced by hand in the full model
        before = model(x)
        for layer, idx in ((model.c1, [1, 5]), (model.g1, [0, 2, 4, 6]), (model.bn1, [0, 2, 4, 6]), (model.g2, [1, 4])):
            layer.weight[idx] = 0
            layer.bias[idx] = 0
        reference = model(x)
        assert not torch.allclose(reference, before, atol=1e-3)  # the removed channels mattered
        torch.testing.assert_close(pruned(x), reference, rtol=1e-5, atol=1e-5)


def test_toy_params_and_macs_by_hand():
    model, x = toy()
    pruned = remove_channels(model, build_dependency_graph(model, x), PLAN, x)
    # c1 3·8+8, g1 8·4+8, bn1 2·8, g2 6·4·9+6, fc 6·5+5  →  after: 3·6+6, 4·3+4, 2·4, 4·2·9+4, 4·5+5
    assert count_params(model) == 32 + 40 + 16 + 222 + 35 == 345
    assert count_params(pruned) == 24 + 16 + 8 + 76 + 25 == 149
    # 8×8 maps: c1 64·8·3, g1 64·8·4, g2 64·6·4·9, fc 6·5  →  64·6·3, 64·4·3, 64·4·2·9, 4·5
    assert count_macs(model, x) == 1536 + 2048 + 13824 + 30
    assert count_macs(pruned, x) == 1152 + 768 + 4608 + 20


@pytest.mark.parametrize("strategy", ["independent", "greedy"])
def test_prune_channels_on_the_toy_keeps_groups(strategy):
    model, x = toy()
    pruned = prune_channels(model, x, "l1", 0.5, strategy=strategy)
    assert (pruned.g1.groups, pruned.g2.groups) == (2, 2)
    assert (pruned.c1.out_channels, pruned.g1.out_channels, pruned.g2.out_channels) == (4, 4, 4)  # 2 of 4, 1 of 2, 1.5→2 of 3 units
    assert pruned(x).shape == (3, 5)


def test_whole_mode_and_literal_shuffle_shapes():
    model, x = toy()
    with pytest.raises(UserError, match="grouped-conv mode"):
        build_dependency_graph(model, x, grouped="halves")

    class Literal(ShuffleToy):  # view(n, 2, 4, h, w) hard-codes the width: thinning would break it, so it is pinned
        def forward(self, x):
            y = F.relu(self.bn1(self.g1(F.relu(self.c1(x)))))
            y = y.view(y.shape[0], 2, 4, 8, 8).transpose(1, 2).reshape(y.shape[0], 8, 8, 8)
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(F.relu(self.g2(y)), 1), 1))

    graph = build_dependency_graph(Literal().eval(), x)
    assert graph.group_of("g1") is None and graph.group_of("c1") is not None


def test_a_shuffle_after_a_concat_removes_the_same_position_from_both_halves():
    """cat(a, b) → shuffle(2) → c: after thinning, shuffle interleaves the kept a's and b's again, which equals the
    old order restricted to the kept channels only if a and b lose the same positions: a_j and b_j are one unit."""

    class CatShuffle(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(8, 3, 1)

        def forward(self, x):
            return self.c(channel_shuffle(torch.cat((self.a(x), self.b(x)), 1), 2))

    torch.manual_seed(0)
    model, x = CatShuffle().eval(), torch.randn(2, 3, 5, 5)
    graph = build_dependency_graph(model, x)
    (group,) = graph.groups
    assert group.producers == ("a", "b") and group.size == 4 and group.consumers == ("c",)
    pruned = remove_channels(model, graph, {"a": [1]}, x)
    assert (pruned.a.out_channels, pruned.b.out_channels, pruned.c.in_channels) == (3, 3, 6)
    torch.testing.assert_close(pruned.c.weight, model.c.weight[:, [0, 1, 4, 5, 6, 7]])  # shuffled a1, b1 sat at 2, 3
    with torch.no_grad():
        for layer in (model.a, model.b):
            layer.weight[1] = 0
            layer.bias[1] = 0
        torch.testing.assert_close(pruned(x), model(x), rtol=1e-5, atol=1e-5)


def _zero_plan(model, graph, plan):
    """Silence the planned channels in the full model: every filter, bias and batch-norm entry that carries them."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for g in graph.groups:
            gone = np.isin(np.arange(g.size), plan.get(g.name, []))
            for name, role, js in member_positions(graph, g):
                if role in ("out", "dw", "gw_out", "bn"):
                    idx = torch.from_numpy(np.flatnonzero((js >= 0) & gone[np.maximum(js, 0)]))
                    modules[name].weight[idx] = 0
                    if modules[name].bias is not None:
                        modules[name].bias[idx] = 0


@pytest.mark.parametrize("groups", [2, 3])
def test_shufflenet_v1_channel_prunes_exactly_and_keeps_groups(groups):
    torch.manual_seed(0)
    model, x = randomize_bn(ShuffleNetV1((3, 32, 32), 10, groups=groups, width_mult=0.25)), torch.randn(2, 3, 32, 32)
    graph = build_dependency_graph(model, x)
    # stage-2 unit 2: reduce → shuffle → expand with k = 12/g channels per conv-group. g = 2: k = 6, column u_j
    # of the shuffle sits at expand inputs 2j, 2j+1: u0-u2 in conv-group 0, u3-u5 in 1 → 3 units {u_j, u_j+3}.
    # g = 3: k = 5, u_j at 3j..3j+2: u0, u2, u4 lie in groups 0, 1, 2 (3 each), u1 and u3 straddle (2+1, 1+2):
    # units {u0, u2, u4} and {u1, u3}.
    bottleneck = graph.group_of("features.3.reduce.0")
    assert bottleneck.size == {2: 3, 3: 2}[groups]
    plan = channels_to_remove(channel_scores(model, graph, "l1"), {g.name: 0.4 for g in graph.groups})
    pruned = remove_channels(model, graph, plan, x)
    assert count_params(pruned) < 0.75 * count_params(model)
    for (name, before), after in zip(model.named_modules(), pruned.modules()):
        if isinstance(before, nn.Conv2d) and before.groups > 1 and before.groups != before.in_channels:
            assert after.groups == before.groups == groups, name
    _zero_plan(model, graph, plan)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), rtol=1e-5, atol=1e-5)
    fresh = resize_to_state_dict(ShuffleNetV1((3, 32, 32), 10, groups=groups, width_mult=0.25), pruned.state_dict())
    fresh.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), pruned(x))


def test_conv_groups_may_lose_different_positions_when_the_counts_match():
    torch.manual_seed(0)
    model, x = randomize_bn(ShuffleNetV1((3, 32, 32), 10, groups=3, width_mult=0.25)), torch.randn(2, 3, 32, 32)
    graph = build_dependency_graph(model, x)
    f = graph.labels[("features.3.reduce.0", "gw_out")][:5]  # the reduce conv's 5 in-group outputs = shuffle columns
    assert f[0] == f[2] == f[4] and f[1] == f[3] != f[0]
    unit = graph.group_of("features.3.reduce.0")
    pruned = remove_channels(model, graph, {unit.name: [1]}, x)  # {u1, u3}: expand inputs 3, 4 | 5, 9 | 10, 11
    w, new = model.features[3].expand[0].weight, pruned.features[3].expand[0]
    assert (new.in_channels, new.groups) == (9, 3)
    torch.testing.assert_close(new.weight, torch.cat((w[:20][:, [0, 1, 2]], w[20:40][:, [1, 2, 3]], w[40:][:, [2, 3, 4]])))
    unit3 = model.features[3]
    with torch.no_grad():  # u1, u3: reduce outputs 1, 3 of each group of 5; after the shuffle, channels 3-5 and 9-11
        for layers, idx in (((unit3.reduce[0], unit3.reduce[1]), [1, 3, 6, 8, 11, 13]), ((unit3.depthwise[1],), [3, 4, 5, 9, 10, 11])):
            for layer in layers:
                layer.weight[idx] = 0
                if layer.bias is not None:
                    layer.bias[idx] = 0
        torch.testing.assert_close(pruned(x), model(x), rtol=1e-5, atol=1e-5)


def test_prune_channels_on_zoo_shufflenet_v1_runs_and_shrinks():
    torch.manual_seed(0)
    model, x = ShuffleNetV1((3, 32, 32), 10, groups=3, width_mult=0.25).eval(), torch.randn(2, 3, 32, 32)
    pruned = prune_channels(model, x, "l1", 0.5)
    assert count_params(pruned) < count_params(model) * 0.6
    assert pruned(x).shape == (2, 10)


def test_dead_channels_read_by_a_grouped_conv_only_when_its_slices_are_zero():
    from nncompress.pruning.structured import remove_dead_channels

    torch.manual_seed(0)
    model, x = randomize_bn(ShuffleNetV1((3, 32, 32), 10, groups=2, width_mult=0.25)), torch.randn(2, 3, 32, 32)
    assert remove_dead_channels(model, x)[1] == {}  # every bottleneck channel is read by the expand conv
    graph = build_dependency_graph(model, x)
    (positions,) = [js for name, role, js in member_positions(graph, graph.group_of("features.3.reduce.0")) if role == "gw_in"]
    expand = model.features[3].expand[0]  # 2 groups, 6 inputs and 24 filters each: input q is read by w[q // 6 · 24 ...][:, q % 6]
    with torch.no_grad():
        for q in np.flatnonzero(positions == 0).tolist():
            expand.weight[(q // 6) * 24:(q // 6 + 1) * 24, q % 6] = 0
    pruned, removed = remove_dead_channels(model, x)
    assert removed == {"features.3.reduce.0": 1}
    assert pruned.features[3].expand[0].in_channels == 12 - 4 and pruned.features[3].expand[0].groups == 2
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), rtol=1e-5, atol=1e-5)


def test_a_depthwise_multiplier_conv_still_loses_whole_conv_groups():
    """One input per conv-group (groups = in_channels, 2 outputs each): an input channel and its 2 outputs go together."""

    class Multiplier(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 4, 1)
            self.dm = nn.Conv2d(4, 8, 3, padding=1, groups=4)
            self.c2 = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.c2(F.relu(self.dm(F.relu(self.c1(x)))))

    torch.manual_seed(0)
    model, x = Multiplier().eval(), torch.randn(2, 3, 6, 6)
    graph = build_dependency_graph(model, x)
    assert graph.group("c1").size == 4 and graph.group("c1").depthwise == ("dm",) and graph.grouped_modes == {"dm": "whole"}
    pruned = remove_channels(model, graph, {"c1": [2]}, x)
    assert (pruned.dm.in_channels, pruned.dm.out_channels, pruned.dm.groups) == (3, 6, 3)
    torch.testing.assert_close(pruned.c2.weight, model.c2.weight[:, [0, 1, 2, 3, 6, 7]])
    with torch.no_grad():
        for layer, idx in ((model.c1, [2]), (model.dm, [4, 5])):
            layer.weight[idx] = 0
            layer.bias[idx] = 0
        torch.testing.assert_close(pruned(x), model(x), rtol=1e-5, atol=1e-5)
