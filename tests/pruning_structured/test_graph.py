"""Channel groups on hand-built graphs: residual, concat, depthwise, flatten → linear, and the tracing error."""
import numpy as np
import pytest
import torch
from torch import nn

from nncompress.core.errors import UserError
from nncompress.pruning.structured import build_dependency_graph

from .models import Grouped, Inception, MobileNetV2Tiny, Residual, Wrapper


def by_name(graph):
    return {g.name: g for g in graph.groups}


def test_residual_add_joins_both_branches_into_one_group():
    g = by_name(build_dependency_graph(Residual(), torch.randn(2, 3, 8, 8)))
    assert set(g) == {"stem", "a", "head"}
    assert g["stem"].producers == ("stem", "b") and g["stem"].size == 8
    assert g["stem"].consumers == ("a", "head")
    assert g["stem"].norms == ("stem_bn", "b_bn")
    assert g["a"].producers == ("a",) and g["a"].consumers == ("b",) and g["a"].norms == ("a_bn",)
    assert g["head"].consumers == ("fc",)  # fc's outputs reach the model output: pinned, no group


def test_residual_channel_i_of_each_branch_is_the_same_channel():
    graph = build_dependency_graph(Residual(), torch.randn(2, 3, 8, 8))
    assert np.array_equal(graph.labels[("stem", "out")], graph.labels[("b", "out")])
    assert np.array_equal(graph.labels[("stem", "out")], graph.labels[("head", "in")])


def test_concat_gives_each_branch_its_offset_range_in_the_consumer():
    graph = build_dependency_graph(Inception(), torch.randn(2, 3, 8, 8))
    groups = by_name(graph)
    mix_in = graph.labels[("mix", "in")]
    offsets = {"b1": range(0, 4), "b2": range(4, 9), "b3": range(9, 12), "b4": range(12, 14)}
    for name, rng in offsets.items():
        assert groups[name].consumers == ("mix",)
        assert np.array_equal(mix_in[list(rng)], groups[name].channels)
    assert groups["stem"].consumers == ("b1", "b2_reduce", "b3_reduce", "b4")  # max-pool passes channels through
    assert groups["b2_reduce"].consumers == ("b2",)


def test_depthwise_conv_carries_the_expanded_channels_and_residuals_couple_blocks():
    g = by_name(build_dependency_graph(MobileNetV2Tiny(), torch.randn(2, 3, 16, 16)))
    e = g["blocks.0.expand"]
    assert e.size == 32 and e.depthwise == ("blocks.0.dw",) and e.consumers == ("blocks.0.project",)
    assert e.norms == ("blocks.0.bn1", "blocks.0.bn2")
    # block 0 has a residual: the stem's channels and block 0's projection are one group
    assert g["stem.0"].producers == ("stem.0", "blocks.0.project")
    assert g["blocks.1.project"].producers == ("blocks.1.project", "blocks.2.project")
    assert g["head.0"].consumers == ("classifier",)


def test_flatten_to_linear_repeats_each_channel_over_the_spatial_positions():
    from nncompress.architectures import LeNet5

    graph = build_dependency_graph(LeNet5(), torch.randn(2, 1, 28, 28))
    conv2 = by_name(graph)["conv2"]
    fc1_in = graph.labels[("fc1", "in")]
    assert fc1_in.shape == (800,)
    assert np.array_equal(fc1_in[:16], np.repeat(conv2.channels[0], 16))  # channel 0 ↔ fc1 columns 0..15
    assert np.array_equal(fc1_in[16:32], np.repeat(conv2.channels[1], 16))


def test_grouped_conv_couples_whole_conv_groups():
    graph = build_dependency_graph(Grouped(), torch.randn(1, 3, 6, 6), grouped="whole")
    (g,) = graph.groups
    assert g.name == "c1" and g.size == 2 and g.depthwise == ("g",) and g.consumers == ("c2",)
    c1_out, g_out = graph.labels[("c1", "out")], graph.labels[("g", "gw_out")]
    assert len(set(c1_out[:4])) == 1 and len(set(c1_out[4:])) == 1 and c1_out[0] != c1_out[4]  # 4 channels → 1 unit
    assert list(g_out) == [c1_out[0]] * 6 + [c1_out[4]] * 6  # conv-group k writes 6 channels
    assert graph.group_of("c2") is None  # the model output is pinned


def test_a_tensor_split_into_chunks_is_pinned():
    class Split(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 8, 1)
            self.d = nn.Conv2d(4, 2, 1)

        def forward(self, x):
            a, b = self.c(x).chunk(2, dim=1)
            return self.d(a + b)

    assert build_dependency_graph(Split(), torch.randn(1, 3, 4, 4)).groups == []


def test_a_module_called_twice_keeps_one_channel_set():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 3, 1)
            self.d = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            return self.d(self.c(self.c(x)))

    groups = build_dependency_graph(Twice(), torch.randn(1, 3, 4, 4)).groups
    assert groups == []  # c's output feeds c's own input, which is the model input: pinned


def test_untraceable_module_is_kept_whole_named_and_pinned():
    with pytest.warns(RuntimeWarning, match=r"'gate' \(DataDependent"):
        graph = build_dependency_graph(Wrapper(), torch.randn(1, 3, 6, 6))
    assert graph.group_of("features.0") is None  # its channels flow into the opaque gate: never removed


def test_example_input_of_wrong_shape_is_a_user_error():
    with pytest.raises(UserError, match="does not run through the model"):
        build_dependency_graph(Residual(), torch.randn(2, 5, 8, 8))
