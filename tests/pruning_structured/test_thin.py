"""Physical removal: smaller dense modules, copied weights, outputs unchanged when removed channels were zero."""
import pytest
import torch

from nncompress.architectures import LeNet5, LeNet300100, resnet20
from nncompress.core.errors import UserError
from nncompress.core.io import load_weights, save_weights
from nncompress.pruning.structured import (
    build_dependency_graph,
    count_params,
    remove_channels,
    remove_dead_channels,
    resize_to_state_dict,
)

from .models import Grouped, Inception, MobileNetV2Tiny, Residual, randomize_bn


@torch.no_grad()
def zero(model, producers=(), norms=(), depthwise=(), idx=()):
    """Silence channels `idx` by hand: filters and biases of the producers, γ and β of the batch norms."""
    idx = list(idx)
    for n in (*producers, *depthwise):
        m = model.get_submodule(n)
        m.weight[idx] = 0
        if m.bias is not None:
            m.bias[idx] = 0
    for n in norms:
        m = model.get_submodule(n)
        m.weight[idx] = 0
        m.bias[idx] = 0


def check_equal(model, pruned, x):
    with torch.no_grad():
        torch.testing.assert_close(pruned.eval()(x), model.eval()(x), rtol=1e-5, atol=1e-5)


def test_lenet5_zeroed_filters_removed_exactly():
    torch.manual_seed(0)
    model, x = LeNet5().eval(), torch.randn(4, 1, 28, 28)
    zero(model, ["conv1"], idx=[0, 3, 7])
    zero(model, ["conv2"], idx=range(0, 50, 2))
    zero(model, ["fc1"], idx=range(100))
    graph = build_dependency_graph(model, x)
    pruned = remove_channels(model, graph, {"conv1": [0, 3, 7], "conv2": list(range(0, 50, 2)), "fc1": list(range(100))}, x)
    assert pruned.conv1.weight.shape == (17, 1, 5, 5)
    assert pruned.conv2.weight.shape == (25, 17, 5, 5)
    assert pruned.fc1.weight.shape == (400, 25 * 16)  # 25 channels × 4×4 positions
    assert pruned.fc2.weight.shape == (10, 400)
    check_equal(model, pruned, x)
    assert model.conv1.weight.shape == (20, 1, 5, 5)  # the original is untouched


def test_residual_group_removed_from_every_branch_and_shortcut():
    torch.manual_seed(0)
    model, x = randomize_bn(Residual()), torch.randn(3, 3, 8, 8)
    zero(model, ["stem", "b"], ["stem_bn", "b_bn"], idx=[1, 6])
    zero(model, ["a"], ["a_bn"], idx=[2])
    pruned = remove_channels(model, build_dependency_graph(model, x), {"stem": [1, 6], "a": [2]}, x)
    assert (pruned.stem.out_channels, pruned.b.out_channels, pruned.head.in_channels) == (6, 6, 6)
    assert (pruned.a.in_channels, pruned.a.out_channels, pruned.b.in_channels) == (6, 5, 5)
    assert pruned.stem_bn.num_features == pruned.b_bn.num_features == 6
    check_equal(model, pruned, x)


def test_resnet20_with_downsampling_shortcuts():
    torch.manual_seed(0)
    model, x = randomize_bn(resnet20((1, 12, 12), 10)), torch.randn(2, 1, 12, 12)
    graph = build_dependency_graph(model, x)
    stage2 = graph.group("layer2.0.conv2")
    zero(model, stage2.producers, stage2.norms, idx=[0, 5, 31])
    zero(model, ["layer3.1.conv1"], ["layer3.1.bn1"], idx=range(0, 64, 3))
    pruned = remove_channels(model, graph, {"layer2.0.conv2": [0, 5, 31], "layer3.1.conv1": list(range(0, 64, 3))}, x)
    assert pruned.layer2[0].shortcut[0].weight.shape == (29, 16, 1, 1)
    assert pruned.layer3[0].shortcut[0].weight.shape == (64, 29, 1, 1)
    assert pruned.layer3[1].conv2.weight.shape == (64, 64 - 22, 3, 3)
    check_equal(model, pruned, x)


def test_mobilenet_v2_blocks_depthwise_and_residual():
    torch.manual_seed(0)
    model, x = randomize_bn(MobileNetV2Tiny()), torch.randn(2, 3, 16, 16)
    zero(model, ["blocks.1.expand"], ["blocks.1.bn1", "blocks.1.bn2"], ["blocks.1.dw"], idx=[0, 1, 30])
    zero(model, ["blocks.1.project", "blocks.2.project"], ["blocks.1.bn3", "blocks.2.bn3"], idx=[4])
    graph = build_dependency_graph(model, x)
    pruned = remove_channels(model, graph, {"blocks.1.expand": [0, 1, 30], "blocks.1.project": [4]}, x)
    dw = pruned.blocks[1].dw
    assert (dw.in_channels, dw.out_channels, dw.groups) == (29, 29, 29)
    assert pruned.blocks[1].project.weight.shape == (11, 29, 1, 1)
    assert pruned.blocks[2].expand.in_channels == 11 and pruned.head[0].in_channels == 11
    check_equal(model, pruned, x)


def test_inception_concat_removes_the_right_consumer_columns():
    torch.manual_seed(0)
    model, x = Inception().eval(), torch.randn(2, 3, 8, 8)
    zero(model, ["b2"], idx=[1, 3])
    zero(model, ["b4"], idx=[0])
    zero(model, ["stem"], idx=[5])
    pruned = remove_channels(model, build_dependency_graph(model, x), {"b2": [1, 3], "b4": [0], "stem": [5]}, x)
    assert pruned.mix.in_channels == 14 - 3
    assert pruned.b1.in_channels == pruned.b4.in_channels == 7
    check_equal(model, pruned, x)


def test_grouped_conv_loses_a_whole_conv_group():
    torch.manual_seed(0)
    model, x = Grouped().eval(), torch.randn(2, 3, 6, 6)
    zero(model, ["c1"], idx=range(4, 8))  # the second conv-group's inputs
    with torch.no_grad():
        model.g.bias[6:] = 0  # ... and its outputs' bias: relu(0) = 0 reaches c2
    pruned = remove_channels(model, build_dependency_graph(model, x, grouped="whole"), {"c1": [1]}, x)
    assert (pruned.c1.out_channels, pruned.g.in_channels, pruned.g.out_channels, pruned.g.groups) == (4, 4, 6, 1)
    assert pruned.c2.in_channels == 6
    check_equal(model, pruned, x)
    fresh = resize_to_state_dict(Grouped(), pruned.state_dict(), grouped="whole")
    fresh.load_state_dict(pruned.state_dict())
    assert fresh.g.groups == 1
    check_equal(pruned, fresh, x)


def test_removing_nonzero_channels_changes_output_so_equality_tests_can_fail():
    torch.manual_seed(0)
    model, x = Inception().eval(), torch.randn(2, 3, 8, 8)
    pruned = remove_channels(model, build_dependency_graph(model, x), {"b2": [1]}, x)
    assert not torch.allclose(pruned(x), model(x), atol=1e-4)


def test_cannot_remove_every_channel_or_out_of_range():
    model, x = Residual().eval(), torch.randn(1, 3, 8, 8)
    graph = build_dependency_graph(model, x)
    with pytest.raises(UserError, match="keep at least one"):
        remove_channels(model, graph, {"a": range(6)})
    with pytest.raises(UserError, match="has 6 channels"):
        remove_channels(model, graph, {"a": [6]})
    with pytest.raises(UserError, match="no prunable channel group 'fc'"):
        remove_channels(model, graph, {"fc": [0]})


def test_hard_coded_view_is_reported_clearly():
    class HardCoded(LeNet5):
        def forward(self, x):
            x = torch.max_pool2d(self.conv1(x), 2)
            x = torch.max_pool2d(self.conv2(x), 2)
            return self.fc2(torch.relu(self.fc1(x.view(-1, 800))))

    model, x = HardCoded().eval(), torch.randn(2, 1, 28, 28)
    with pytest.raises(UserError, match="hard-codes a channel count"):
        remove_channels(model, build_dependency_graph(model, x), {"conv2": [0]}, x)


def test_dead_neurons_in_an_mlp_are_removed_and_outputs_kept():
    torch.manual_seed(0)
    model, x = LeNet300100().eval(), torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        model.fc2.weight[:, :40] = 0  # fc1 units 0..39: no outgoing connections
        model.fc1.weight[40:70] = 0  # fc1 units 40..69: no incoming ones, output relu(bias) is a constant
        model.fc3.weight[:, 90:] = 0  # fc2 units 90..99: no outgoing connections
    pruned, removed = remove_dead_channels(model, x)
    assert removed == {"fc1": 70, "fc2": 10}
    assert pruned.fc1.weight.shape == (230, 784) and pruned.fc2.weight.shape == (90, 230) and pruned.fc3.weight.shape == (10, 90)
    check_equal(model, pruned, x)
    assert count_params(pruned) == 230 * 785 + 90 * 231 + 10 * 91


def test_thinned_weights_round_trip_through_safetensors(tmp_path):
    torch.manual_seed(0)
    model, x = randomize_bn(resnet20((1, 12, 12), 10)), torch.randn(2, 1, 12, 12)
    pruned = remove_channels(model, build_dependency_graph(model, x), {"layer1.0.conv1": [0, 1, 2], "conv1": [4]}, x)
    save_weights(pruned.state_dict(), tmp_path / "w.safetensors")
    fresh = resize_to_state_dict(resnet20((1, 12, 12), 10), load_weights(tmp_path / "w.safetensors"))
    fresh.load_state_dict(load_weights(tmp_path / "w.safetensors"))
    check_equal(pruned, fresh, x)


def test_dead_conv_channels_only_removed_when_exact():
    torch.manual_seed(0)
    model, x = Inception().eval(), torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        model.b1.weight[0] = 0
        model.b1.bias[0] = -1.0  # relu(-1) = 0 everywhere: the mix conv reads exact zeros → removable
        model.b1.weight[1] = 0
        model.b1.bias[1] = 0.5  # relu(0.5) = 0.5: a 1x1 conv consumer could fold it, but we only fold into linears
        model.mix.weight[:, 13] = 0  # b4 channel 1 has no outgoing connections
    pruned, removed = remove_dead_channels(model, x)
    assert removed == {"b1": 1, "b4": 1}
    assert pruned.b1.out_channels == 3 and pruned.b4.out_channels == 1 and pruned.mix.in_channels == 12
    check_equal(model, pruned, x)
