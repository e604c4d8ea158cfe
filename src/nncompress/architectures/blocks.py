"""Building blocks of compact networks, each a small module with the paper it comes from.

- `DepthwiseSeparable`: 3×3 depthwise + 1×1 pointwise (MobileNet V1, Howard et al. 2017); cost
  H·W·C_in·9 + H·W·C_in·C_out MACs instead of H·W·C_in·C_out·9.
- `InvertedResidual`: 1×1 expand → k×k depthwise → (SE) → 1×1 linear projection, residual when the
  shape is kept (MobileNet V2, Sandler et al. 2018; V3, Howard et al. 2019).
- `SqueezeExcite`: channel gates s = σ(W₂·ReLU(W₁·avgpool(x))), y = s ⊙ x (Hu et al. 2018).
- `HSigmoid`, `HSwish`: h-sigmoid(x) = ReLU6(x + 3)/6, h-swish(x) = x·h-sigmoid(x) (MobileNet V3).
- `channel_shuffle`, `ShuffleV1Unit`, `ShuffleV2Unit`: grouped 1×1 convolutions made to talk to each
  other by a channel permutation (ShuffleNet, Zhang et al. 2018; V2, Ma et al. 2018).
- `Fire`: 1×1 squeeze then 1×1 and 3×3 expand, concatenated (SqueezeNet, Iandola et al. 2016).
- `factorized_5x5`, `asymmetric_conv`: a 5×5 as two 3×3 (25 → 18 weights per in/out pair) and an n×n as
  1×n then n×1 (n² → 2n) (Inception V3, Szegedy et al. 2016).
"""
from __future__ import annotations

import torch
from torch import nn


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to the nearest multiple of `divisor`, never going below 90% of `value`.

    The rule of the MobileNet V2/V3 reference code, which the published parameter counts assume.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class HSigmoid(nn.Module):
    """h-sigmoid(x) = ReLU6(x + 3) / 6: a piecewise-linear sigmoid that is cheap on fixed-point hardware."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.relu6(x + 3.0) / 6.0


class HSwish(nn.Module):
    """h-swish(x) = x · ReLU6(x + 3) / 6 (MobileNet V3): swish without the exponential."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * nn.functional.relu6(x + 3.0) / 6.0


def _pad(kernel_size: int | tuple[int, int]) -> int | tuple[int, int]:
    if isinstance(kernel_size, tuple):
        return kernel_size[0] // 2, kernel_size[1] // 2
    return kernel_size // 2


class ConvBNAct(nn.Sequential):
    """Convolution (no bias) → BatchNorm → activation; 'same' padding for odd kernels.

    `act=None` gives a linear layer (the projection of an inverted residual).
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int | tuple[int, int] = 3, stride: int = 1,
                 groups: int = 1, act: type[nn.Module] | None = nn.ReLU, padding: int | tuple[int, int] | None = None,
                 bn_eps: float = 1e-5):
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, c_out, kernel_size, stride, _pad(kernel_size) if padding is None else padding,
                      groups=groups, bias=False),
            nn.BatchNorm2d(c_out, eps=bn_eps),
        ]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)
        self.out_channels = c_out


class DepthwiseSeparable(nn.Sequential):
    """3×3 depthwise conv (one filter per channel) → BN → ReLU → 1×1 pointwise conv → BN → ReLU (MobileNet V1).

    Ratio of cost to a standard 3×3 conv: 1/C_out + 1/9.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, kernel_size: int = 3, act: type[nn.Module] = nn.ReLU):
        super().__init__(
            ConvBNAct(c_in, c_in, kernel_size, stride, groups=c_in, act=act),
            ConvBNAct(c_in, c_out, 1, act=act),
        )
        self.out_channels = c_out


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: y = x ⊙ gate(W₂·ReLU(W₁·mean_hw(x) + b₁) + b₂) (Hu et al., CVPR 2018).

    W₁, W₂ are 1×1 convolutions with bias; `squeeze_channels` defaults to C/4 rounded to a multiple of 8
    (the MobileNet V3 choice); `gate` is h-sigmoid in V3, sigmoid in SENet.
    """

    def __init__(self, channels: int, squeeze_channels: int | None = None, gate: type[nn.Module] = HSigmoid,
                 act: type[nn.Module] | None = None):
        super().__init__()
        squeeze_channels = squeeze_channels or make_divisible(channels // 4, 8)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.gate = gate()
        self.act = act() if act is not None else None  # None: ReLU (V3, SENet); EfficientNet uses swish (SiLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.fc1(x.mean((2, 3), keepdim=True))
        s = torch.relu(s) if self.act is None else self.act(s)
        return x * self.gate(self.fc2(s))


class InvertedResidual(nn.Module):
    """Inverted residual with linear bottleneck (MobileNet V2, Sandler et al. CVPR 2018; V3 adds SE and h-swish).

    c_in → 1×1 expand to `hidden` (skipped when hidden == c_in) → act → k×k depthwise (stride) → act
    → optional SE → 1×1 linear projection to c_out (no activation: ReLU would destroy information in the
    low-dimensional bottleneck) → + x when stride == 1 and c_in == c_out.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, hidden: int | None = None, expand_ratio: float = 6.0,
                 kernel_size: int = 3, se: bool = False, act: type[nn.Module] = nn.ReLU6,
                 se_channels: int | None = None, se_gate: type[nn.Module] = HSigmoid,
                 se_act: type[nn.Module] | None = None, bn_eps: float = 1e-5):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = hidden if hidden is not None else int(round(c_in * expand_ratio))
        layers: list[nn.Module] = []
        if hidden != c_in:
            layers.append(ConvBNAct(c_in, hidden, 1, act=act, bn_eps=bn_eps))
        layers.append(ConvBNAct(hidden, hidden, kernel_size, stride, groups=hidden, act=act, bn_eps=bn_eps))
        if se:  # V3: squeeze to hidden/4 (÷8), h-sigmoid; MnasNet/EfficientNet: c_in/4, sigmoid (se_channels, se_gate)
            layers.append(SqueezeExcite(hidden, se_channels, se_gate, se_act))
        layers.append(ConvBNAct(hidden, c_out, 1, act=None, bn_eps=bn_eps))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and c_in == c_out
        self.out_channels = c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_residual else y


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of `groups` groups: [N, g·k, H, W] → view [N, g, k] → transpose → [N, k·g].

    Output channel j·g + i is input channel i·k + j, so the next grouped conv sees every group.
    Written with unflatten/transpose/flatten and no Python use of the shape, so torch.fx can trace it (a proxy's
    shape cannot be unpacked) and torch.export keeps the batch and spatial sizes symbolic.
    """
    if isinstance(x, torch.Tensor) and x.shape[1] % groups:
        raise ValueError(f"channels ({x.shape[1]}) must be divisible by groups ({groups})")
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups)


class ShuffleV1Unit(nn.Module):
    """ShuffleNet unit (Zhang et al., CVPR 2018): 1×1 GConv → BN → ReLU → shuffle → 3×3 DWConv (stride) → BN
    → 1×1 GConv → BN, then ReLU(x + y) at stride 1 or ReLU(concat(avgpool₃ₓ₃(x), y)) at stride 2.

    Bottleneck width is c_out/4; at stride 2 the branch outputs c_out − c_in so the concat has c_out channels.
    `group_first=False` for the first unit of stage 2 whose input (24 channels) is too thin to group.
    """

    def __init__(self, c_in: int, c_out: int, groups: int = 3, stride: int = 1, group_first: bool = True):
        super().__init__()
        mid = c_out // 4
        branch_out = c_out - c_in if stride == 2 else c_out
        if stride == 1 and c_in != c_out:
            raise ValueError(f"a stride-1 ShuffleNet unit keeps its width: c_in {c_in} != c_out {c_out}")
        g1 = groups if group_first else 1
        self.reduce = ConvBNAct(c_in, mid, 1, groups=g1, act=nn.ReLU)
        self.shuffle = ChannelShuffle(groups) if g1 > 1 else nn.Identity()
        self.depthwise = ConvBNAct(mid, mid, 3, stride, groups=mid, act=None)
        self.expand = ConvBNAct(mid, branch_out, 1, groups=groups, act=None)
        self.pool = nn.AvgPool2d(3, 2, 1) if stride == 2 else None
        self.out_channels = c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(self.depthwise(self.shuffle(self.reduce(x))))
        if self.pool is None:
            return torch.relu(x + y)
        return torch.relu(torch.cat((self.pool(x), y), 1))


class ShuffleV2Unit(nn.Module):
    """ShuffleNet V2 unit (Ma et al., ECCV 2018): equal in/out widths per branch, no grouped 1×1, concat not add.

    Stride 1: split channels in half; one half passes, the other goes 1×1 → 3×3 DW → 1×1; concat; shuffle(2).
    Stride 2: no split; both branches downsample (DW 3×3/2 → 1×1 and 1×1 → DW 3×3/2 → 1×1); concat; shuffle(2).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        if c_out % 2:
            raise ValueError(f"ShuffleNet V2 needs an even output width, got {c_out}")
        half = c_out // 2
        if stride == 1 and c_in != c_out:
            raise ValueError(f"a stride-1 ShuffleNet V2 unit keeps its width: c_in {c_in} != c_out {c_out}")
        branch_in = c_in if stride == 2 else half
        self.shortcut = nn.Sequential(
            ConvBNAct(c_in, c_in, 3, stride, groups=c_in, act=None),
            ConvBNAct(c_in, half, 1),
        ) if stride == 2 else None
        self.branch = nn.Sequential(
            ConvBNAct(branch_in, half, 1),
            ConvBNAct(half, half, 3, stride, groups=half, act=None),
            ConvBNAct(half, half, 1),
        )
        self.out_channels = c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut is None:
            a, b = x.chunk(2, dim=1)
            out = torch.cat((a, self.branch(b)), 1)
        else:
            out = torch.cat((self.shortcut(x), self.branch(x)), 1)
        return channel_shuffle(out, 2)


class Fire(nn.Module):
    """SqueezeNet Fire module: s₁ₓ₁ squeeze filters, then e₁ₓ₁ and e₃ₓ₃ expand filters concatenated, ReLU after each.

    Keeping s < e₁ + e₃ limits the input channels that the 3×3 filters see (Iandola et al. 2016, strategy 2).
    Parameters: C_in·s + s + s·e₁ + e₁ + 9·s·e₃ + e₃ (convolutions with bias, no BN, as in the paper).
    """

    def __init__(self, c_in: int, squeeze: int, expand1x1: int, expand3x3: int):
        super().__init__()
        self.squeeze = nn.Conv2d(c_in, squeeze, 1)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)
        self.out_channels = expand1x1 + expand3x3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.squeeze(x))
        return torch.cat((torch.relu(self.expand1x1(s)), torch.relu(self.expand3x3(s))), 1)


def factorized_5x5(c_in: int, c_mid: int, c_out: int, stride: int = 1, bn_eps: float = 1e-3) -> nn.Sequential:
    """A 5×5 receptive field as two stacked 3×3 conv-BN-ReLU (Inception V3 §3.1): 18/25 of the weights for c_mid = c_out."""
    return nn.Sequential(
        ConvBNAct(c_in, c_mid, 3, bn_eps=bn_eps),
        ConvBNAct(c_mid, c_out, 3, stride, padding=1 if stride == 1 else 0, bn_eps=bn_eps),
    )


def asymmetric_conv(c_in: int, c_mid: int, c_out: int, n: int, column_first: bool = False,
                    bn_eps: float = 1e-3) -> nn.Sequential:
    """An n×n receptive field as a 1×n then an n×1 conv-BN-ReLU (Inception V3 §3.2): 2n instead of n² weights
    per channel pair. `column_first` puts the n×1 first."""
    first, second = ((n, 1), (1, n)) if column_first else ((1, n), (n, 1))
    return nn.Sequential(
        ConvBNAct(c_in, c_mid, first, bn_eps=bn_eps),
        ConvBNAct(c_mid, c_out, second, bn_eps=bn_eps),
    )
