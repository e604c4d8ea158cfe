"""Blocks against hand-worked shapes, parameter and MAC counts, and numerics against independent references."""
import pytest
import torch
from torch import nn

from nncompress.architectures.blocks import (
    DepthwiseSeparable, Fire, HSigmoid, HSwish, InvertedResidual, ShuffleV1Unit, ShuffleV2Unit, SqueezeExcite,
    asymmetric_conv, channel_shuffle, factorized_5x5, make_divisible,
)
from nncompress.architectures.summary import count_macs, count_params


def out_shape(m, shape):
    m.eval()
    with torch.no_grad():
        return tuple(m(torch.randn(2, *shape)).shape[1:])


def test_depthwise_separable_counts():
    m = DepthwiseSeparable(32, 64, stride=1)
    # dw 32·9 = 288, BN 2·32; pw 32·64 = 2048, BN 2·64
    assert count_params(m) == 288 + 64 + 2048 + 128
    # 8×8 map: dw 64·32·9 = 18,432; pw 64·32·64 = 131,072 -> 1/64 + 1/9 of a 3×3 conv (1,179,648)
    assert count_macs(m, (32, 8, 8)) == 18_432 + 131_072
    assert out_shape(DepthwiseSeparable(32, 64, stride=2), (32, 8, 8)) == (64, 4, 4)


def test_inverted_residual_counts_and_shape():
    m = InvertedResidual(16, 24, stride=2, expand_ratio=6)  # hidden 96
    # expand 16·96 + BN 192; dw 96·9 + BN 192; project 96·24 + BN 48
    assert count_params(m) == 1536 + 192 + 864 + 192 + 2304 + 48
    # expand on 8×8: 64·16·96; dw at stride 2 on 4×4: 16·96·9; project 16·96·24
    assert count_macs(m, (16, 8, 8)) == 98_304 + 13_824 + 36_864
    assert out_shape(m, (16, 8, 8)) == (24, 4, 4)
    assert not m.use_residual
    assert not any(isinstance(x, (nn.ReLU, nn.ReLU6)) for x in m.block[-1])  # linear bottleneck
    assert isinstance(m.block[0][2], nn.ReLU6)


def test_inverted_residual_adds_the_input():
    m = InvertedResidual(8, 8, stride=1, expand_ratio=4).eval()
    assert m.use_residual
    nn.init.zeros_(m.block[-1][1].weight)  # projection BN γ = 0, β = 0: the branch outputs 0
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(m(x), x)


def test_hswish_and_hsigmoid_values():
    x = torch.tensor([-4.0, -3.0, -1.0, 0.0, 1.0, 3.0, 5.0])
    # h-sigmoid = ReLU6(x+3)/6 by hand: 0, 0, 2/6, 3/6, 4/6, 1, 1
    torch.testing.assert_close(HSigmoid()(x), torch.tensor([0, 0, 1 / 3, 0.5, 2 / 3, 1, 1]))
    torch.testing.assert_close(HSwish()(x), torch.tensor([0, 0, -1 / 3, 0, 2 / 3, 3, 5]))
    y = torch.linspace(-6, 6, 101)
    torch.testing.assert_close(HSwish()(y), nn.functional.hardswish(y))
    torch.testing.assert_close(HSigmoid()(y), nn.functional.hardsigmoid(y))


def test_squeeze_excite_numerics():
    se = SqueezeExcite(16)
    assert se.fc1.out_channels == 8  # make_divisible(16 // 4, 8)
    assert count_params(se) == 16 * 8 + 8 + 8 * 16 + 16
    x = torch.randn(2, 16, 4, 4)
    for p in se.parameters():
        nn.init.zeros_(p)
    torch.testing.assert_close(se(x), 0.5 * x)  # gate = h-sigmoid(0) = 1/2
    nn.init.constant_(se.fc2.bias, 3.0)
    torch.testing.assert_close(se(x), x)  # gate = h-sigmoid(3) = 1
    # a hand-worked gate: one channel, mean 2, W1 = 1, W2 = 1, b = 0 -> s = h-sigmoid(ReLU(2)) = 5/6
    se1 = SqueezeExcite(1, squeeze_channels=1)
    for p in (se1.fc1.weight, se1.fc2.weight):
        nn.init.ones_(p)
    for p in (se1.fc1.bias, se1.fc2.bias):
        nn.init.zeros_(p)
    x1 = torch.tensor([[[[1.0, 3.0], [2.0, 2.0]]]])
    torch.testing.assert_close(se1(x1), x1 * 5 / 6)


def test_channel_shuffle_is_the_interleaving_permutation():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 3).flatten().tolist() == [0, 2, 4, 1, 3, 5]
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    x = torch.randn(2, 12, 3, 3)
    y = channel_shuffle(x, 3)
    assert sorted(y[0, :, 0, 0].tolist()) == sorted(x[0, :, 0, 0].tolist())
    torch.testing.assert_close(channel_shuffle(y, 4), x)  # shuffling by k = C/g undoes it
    with pytest.raises(ValueError):
        channel_shuffle(torch.randn(1, 5, 1, 1), 3)


def test_shufflenet_units_counts():
    u = ShuffleV1Unit(240, 240, groups=3, stride=1)
    # mid 60: 1×1 GConv 240·60/3 + BN 120; DW 60·9 + BN 120; 1×1 GConv 60·240/3 + BN 480
    assert count_params(u) == 4800 + 120 + 540 + 120 + 4800 + 480
    assert out_shape(u, (240, 7, 7)) == (240, 7, 7)
    first = ShuffleV1Unit(24, 240, groups=3, stride=2, group_first=False)
    # ungrouped 24·60 + BN 120; DW 540 + BN 120; GConv 60·216/3 + BN 432 (216 = 240 − 24 concatenated with the pool)
    assert count_params(first) == 1440 + 120 + 540 + 120 + 4320 + 432
    assert out_shape(first, (24, 8, 8)) == (240, 4, 4)
    v2 = ShuffleV2Unit(116, 116)
    # one branch on 58 channels: 1×1 58·58 + BN 116, DW 58·9 + BN 116, 1×1 58·58 + BN 116
    assert count_params(v2) == 3364 + 116 + 522 + 116 + 3364 + 116
    assert out_shape(ShuffleV2Unit(24, 116, stride=2), (24, 8, 8)) == (116, 4, 4)


def test_fire_module_matches_squeezenet_table():
    f = Fire(96, 16, 64, 64)
    assert count_params(f) == 11_920  # SqueezeNet Table 1, fire2
    assert count_macs(f, (96, 55, 55)) == 55 * 55 * (96 * 16 + 16 * 64 + 16 * 64 * 9)
    assert out_shape(f, (96, 9, 9)) == (128, 9, 9)


def _receptive_field(m, c, size=11):
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):
            nn.init.constant_(bn.bias, 10.0)  # keep every ReLU in its linear part
    x = torch.randn(1, c, size, size, requires_grad=True)
    m.eval()
    m(x)[0, :, size // 2, size // 2].sum().backward()
    nz = x.grad[0].abs().sum(0).nonzero()
    return tuple((nz.max(0).values - nz.min(0).values + 1).tolist())


def test_factorized_and_asymmetric_convolutions():
    torch.manual_seed(0)
    f = factorized_5x5(8, 8, 8)
    weights = sum(m.weight.numel() for m in f.modules() if isinstance(m, nn.Conv2d))
    assert weights == 2 * 9 * 8 * 8  # vs 25·8·8 = 1600 for one 5×5: 28% fewer
    assert _receptive_field(f, 8) == (5, 5)
    a = asymmetric_conv(4, 4, 4, 7)
    assert [m.kernel_size for m in a.modules() if isinstance(m, nn.Conv2d)] == [(1, 7), (7, 1)]
    assert sum(m.weight.numel() for m in a.modules() if isinstance(m, nn.Conv2d)) == 2 * 7 * 16
    assert _receptive_field(a, 4) == (7, 7)
    assert out_shape(a, (4, 9, 9)) == (4, 9, 9)


def test_make_divisible_rule():
    assert make_divisible(32 * 0.35) == 16  # 11.2: nearest multiple of 8 is 8 < 0.9·11.2, so 16
    assert make_divisible(24) == 24 and make_divisible(20) == 24 and make_divisible(12) == 16
