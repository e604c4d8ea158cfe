"""Cross-layer equalization and high-bias absorption (Nagel et al. 2019): the float function is kept, ranges meet."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nncompress.core.errors import UserError
from nncompress.quantization.equalization import (
    ChannelClamp,
    absorb_high_biases,
    batchnorm_statistics,
    channel_ranges,
    cross_layer_equalization,
    equalization_scales,
    equalize,
    find_layer_pairs,
)
from nncompress.quantization.fusion import fuse_conv_bn


def _imbalance(first: nn.Module, second: nn.Module, a: torch.Tensor) -> None:
    """Function-preserving range imbalance: output channel i of `first` × a_i, input channel i of `second` ÷ a_i."""
    with torch.no_grad():
        first.weight.mul_(a.reshape([-1] + [1] * (first.weight.dim() - 1)))
        if first.bias is not None:
            first.bias.mul_(a)
        g = 1 if isinstance(second, nn.Linear) else second.groups
        o, cg = second.weight.shape[:2]
        second.weight.copy_((second.weight.reshape(g, o // g, cg, -1) / a.reshape(g, 1, cg, 1)).reshape(second.weight.shape))


def _chain_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),       # depthwise: channel i → channel i
        nn.Conv2d(8, 6, 1),                                        # identity activation between dw and this
        nn.Conv2d(6, 4, 1), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 5 * 5, 7), nn.ReLU(), nn.Linear(7, 3),
    ).eval()


def test_hand_worked_scales_single_pair():
    # W1 rows have ranges r1 = (4, 1); W2 columns have ranges r2 = (1, 4): s = sqrt(r1/r2) = (2, 0.5)
    l1, l2 = nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        l1.weight.copy_(torch.tensor([[4.0, -2.0], [0.5, -1.0]]))
        l2.weight.copy_(torch.tensor([[1.0, -4.0]]))
    assert torch.allclose(equalization_scales(*channel_ranges(l1, l2)), torch.tensor([2.0, 0.5]))
    m = nn.Sequential(l1, nn.ReLU(), l2)
    cross_layer_equalization(m)
    assert torch.allclose(l1.weight, torch.tensor([[2.0, -1.0], [1.0, -2.0]]))
    assert torch.allclose(l2.weight, torch.tensor([[2.0, -2.0]]))


def test_cle_keeps_outputs_and_equalizes_ranges_relu_depthwise_identity():
    m = _chain_model()
    g = torch.Generator().manual_seed(1)
    _imbalance(m[0], m[2], torch.logspace(-2, 2, 8)[torch.randperm(8, generator=g)])
    _imbalance(m[4], m[5], torch.logspace(-1.5, 1.5, 6))
    _imbalance(m[8], m[10], torch.logspace(-2, 1, 7))
    x = torch.randn(16, 3, 5, 5, generator=g)
    with torch.no_grad():
        y0 = m(x)
    pairs = cross_layer_equalization(m)
    assert [(p.first, p.second, p.act) for p in pairs] == [("0", "2", "relu"), ("2", "4", "relu"), ("4", "5", "identity"),
                                                          ("8", "10", "relu")]
    with torch.no_grad():
        y1 = m(x)
    assert (y1 - y0).abs().max() < 1e-5 * max(1.0, float(y0.abs().max()))
    for p in pairs:  # the paper's property: r1_i == r2_i for every channel of every pair, chains included
        r1, r2 = channel_ranges(m.get_submodule(p.first), m.get_submodule(p.second))
        assert torch.allclose(r1, r2, rtol=1e-5), (p.first, p.second)
    r_before = torch.logspace(-2, 2, 8)
    assert r_before.max() / r_before.min() > 1e3  # the imbalance CLE removed was large


def test_fx_pairs_functional_relu_and_residual_not_paired():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c, self.d = nn.Conv2d(2, 4, 1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 3, 1)

        def forward(self, x):
            y = F.relu(self.a(x))
            z = self.b(y)
            z = z + self.c(z)          # b's output goes to c and to the add: b → c cannot be rescaled
            return self.d(F.max_pool2d(torch.relu(z), 2))

    pairs = find_layer_pairs(Net())
    assert [(p.first, p.second, p.act, p.pools) for p in pairs] == [("a", "b", "relu", False)]


def test_relu6_modes():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU6(), nn.Linear(6, 2)).eval()
    _imbalance(m[0], m[2], torch.logspace(-1, 1, 6))
    x_big = torch.randn(256, 4) * 20        # pre-activations far beyond 6: the clip matters
    with torch.no_grad():
        pre = m[0](x_big)
        y_big = m(x_big)
    assert float(pre.max()) > 6
    # "skip": nothing changes
    ms = nn.Sequential(*[__import__("copy").deepcopy(l) for l in m])
    pairs = cross_layer_equalization(ms, relu6="skip")
    assert pairs[0].notes and torch.equal(ms[0].weight, m[0].weight)
    # "clamp": exact everywhere, the bound moves to 6/s per channel
    mc = __import__("copy").deepcopy(m)
    cross_layer_equalization(mc, relu6="clamp")
    assert isinstance(mc[1], ChannelClamp) and not torch.allclose(mc[1].upper, torch.full((6,), 6.0))
    with torch.no_grad():
        assert (mc(x_big) - y_big).abs().max() < 1e-5 * float(y_big.abs().max())
    # "replace" (the paper): ReLU6 → ReLU; exact while pre-activations stay below 6, not beyond
    mr = __import__("copy").deepcopy(m)
    cross_layer_equalization(mr, relu6="replace")
    assert isinstance(mr[1], nn.ReLU)
    x_small = x_big[(pre < 6).all(1)]
    assert len(x_small) > 10
    with torch.no_grad():
        assert (mr(x_small) - m(x_small)).abs().max() < 1e-5
        assert (mr(x_big) - y_big).abs().max() > 1e-2
    with pytest.raises(UserError, match="relu6"):
        cross_layer_equalization(m, relu6="bound")


def test_functional_relu6_in_graph_module_clamp_exact():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(2, 5, 1), nn.Conv2d(5, 3, 1)

        def forward(self, x):
            return self.b(F.relu6(self.a(x)))

    torch.manual_seed(0)
    net = Net().eval()
    _imbalance(net.a, net.b, torch.logspace(-1.5, 1.5, 5))
    gm = torch.fx.symbolic_trace(net)
    x = torch.randn(8, 2, 4, 4) * 10
    with torch.no_grad():
        y0 = net(x)
    pairs = cross_layer_equalization(gm, relu6="clamp")
    assert pairs[0].act == "clamp"
    with torch.no_grad():
        assert (gm(x) - y0).abs().max() < 1e-5 * float(y0.abs().max())
    r1, r2 = channel_ranges(gm.a, gm.b)
    assert torch.allclose(r1, r2, rtol=1e-5)


def test_unfolded_bn_is_refused():
    m = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 2, 1))
    with pytest.raises(UserError, match="fold BN first"):
        cross_layer_equalization(m)


def _bn_net(second: nn.Module) -> tuple[nn.Module, torch.Tensor]:
    """Linear/conv → BN → ReLU → `second`, BN running statistics set to the true statistics of the layer's output."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 1)
    bn = nn.BatchNorm2d(4)
    m = nn.Sequential(conv, bn, nn.ReLU(), second).eval()
    x = torch.randn(4096, 3, 1, 1)
    with torch.no_grad():
        y = conv(x)
        bn.running_mean.copy_(y.mean((0, 2, 3)))
        bn.running_var.copy_(y.var((0, 2, 3)) - bn.eps)
        bn.weight.copy_(torch.tensor([1.0, 0.5, 2.0, 1.0]))
        bn.bias.copy_(torch.tensor([5.0, 2.0, -1.0, 3.5]))   # c = max(0, β − 3|γ|) = (2, 0.5, 0, 0.5)
    return m, x


def test_high_bias_absorption_keeps_outputs_inside_the_band():
    m, x = _bn_net(nn.Conv2d(4, 2, 1))
    stats = batchnorm_statistics(m)
    assert torch.allclose(stats["0"][0], torch.tensor([5.0, 2.0, -1.0, 3.5]))
    gm = fuse_conv_bn(m)
    with torch.no_grad():
        pre = gm.get_submodule("0")(x)
        y0 = gm(x)
    b1 = gm.get_submodule("0").bias.detach().clone()
    absorbed = absorb_high_biases(gm, stats)
    assert torch.allclose(absorbed["0"], torch.tensor([2.0, 0.5, 0.0, 0.5]))
    assert torch.allclose(gm.get_submodule("0").bias, b1 - absorbed["0"])
    c = absorbed["0"].reshape(1, -1, 1, 1)
    inside = ((pre >= c) | (c == 0)).all(1).flatten()  # pre-activations within the 3σ band where something moved
    assert 0.9 < float(inside.float().mean()) < 1.0
    with torch.no_grad():
        y1 = gm(x)
    assert (y1[inside] - y0[inside]).abs().max() < 1e-5
    assert (y1[~inside] - y0[~inside]).abs().max() > 1e-4   # outside the band it is an approximation, as stated
    assert torch.allclose(stats["0"][0], torch.tensor([3.0, 1.5, -1.0, 3.0]))  # the statistics follow


def test_high_bias_absorption_skips_zero_padded_second_layer():
    m, _ = _bn_net(nn.Conv2d(4, 2, 3, padding=1))
    stats = batchnorm_statistics(m)
    gm = fuse_conv_bn(m)
    assert absorb_high_biases(gm, stats) == {}


def test_untraceable_model_uses_sequential_module_order():
    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Sequential(nn.Linear(6, 5), nn.ReLU()), nn.Linear(5, 3))

        def forward(self, x):
            if x.sum() > 1e9:       # data-dependent control flow: torch.fx cannot trace this
                return x
            return self.body(x)

    net = Gate().eval()
    with pytest.raises(Exception):
        torch.fx.symbolic_trace(net)
    pairs = find_layer_pairs(net)
    assert [(p.first, p.second, p.act) for p in pairs] == [("body.0", "body.2.0", "relu"), ("body.2.0", "body.3", "relu")]
    _imbalance(net.body[0], net.body[2][0], torch.logspace(-2, 1, 6))
    x = torch.randn(32, 4)
    with torch.no_grad():
        y0 = net(x)
    model, pairs = equalize(net)
    assert model is net
    with torch.no_grad():
        assert (net(x) - y0).abs().max() < 1e-5
    for p in pairs:
        r1, r2 = channel_ranges(net.get_submodule(p.first), net.get_submodule(p.second))
        assert torch.allclose(r1, r2, rtol=1e-5)
