"""MobileNet V1, V2, V3-Large and V3-Small with the layer tables of their papers.

Every family here is `features` (an nn.Sequential of blocks) followed by `classifier` (pool → flatten →
dropout → linear), so early exits can be attached between blocks. Inputs smaller than 64 pixels (28×28
MNIST, 32×32 CIFAR, 8×8 digits) get a stride-1 stem, so the feature map is downsampled 16× instead of 32×
and does not vanish before the last stage.
"""
from __future__ import annotations

import torch
from torch import nn

from nncompress.architectures.blocks import ConvBNAct, DepthwiseSeparable, HSwish, InvertedResidual, make_divisible

SMALL_INPUT = 64  # inputs below this side length get a stride-1 stem


def stem_stride(in_shape: tuple[int, ...]) -> int:
    """2 at ImageNet size, 1 for small inputs (28×28, 32×32) so the last feature map keeps ≥ 2×2 pixels."""
    return 1 if min(in_shape[1:]) < SMALL_INPUT else 2


def _classifier(c_in: int, num_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in, num_classes))


class _Sequential(nn.Module):
    """features → classifier; the layout early exit relies on."""

    features: nn.Sequential
    classifier: nn.Sequential

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# MobileNet V1 body (Howard et al. 2017, Table 1): (output channels, stride) of each depthwise-separable layer
V1_LAYERS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]


class MobileNetV1(_Sequential):
    """MobileNet V1 with width multiplier α (channels ×α: MACs and params ≈ ×α²) and resolution multiplier ρ.

    ρ < 1 resizes the input to round(ρ·H) × round(ρ·W) (bilinear) before the first layer, so MACs scale by ≈ ρ²
    (paper §3.4; e.g. 1.0-224: 569 M MACs, 1.0-192 (ρ = 6/7): 418 M). Channels follow the reference code,
    max(int(c·α), 8).
    """

    def __init__(self, in_shape: tuple[int, ...] = (3, 224, 224), num_classes: int = 1000, width_mult: float = 1.0,
                 resolution_mult: float = 1.0, dropout: float = 0.001):
        super().__init__()
        if width_mult <= 0 or not 0 < resolution_mult <= 1:
            raise ValueError(f"need width_mult > 0 and 0 < resolution_mult <= 1, got {width_mult}, {resolution_mult}")
        self.resolution_mult = resolution_mult

        def ch(c: int) -> int:
            return max(int(c * width_mult), 8)

        c = ch(32)
        layers: list[nn.Module] = [ConvBNAct(in_shape[0], c, 3, stem_stride(in_shape))]
        for c_out, s in V1_LAYERS:
            layers.append(DepthwiseSeparable(c, ch(c_out), s))
            c = ch(c_out)
        self.features = nn.Sequential(*layers)
        self.classifier = _classifier(c, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resolution_mult != 1.0:
            size = (round(x.shape[-2] * self.resolution_mult), round(x.shape[-1] * self.resolution_mult))
            x = nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return super().forward(x)


# MobileNet V2 (Sandler et al. 2018, Table 2): expansion t, output channels c, repeats n, first stride s
V2_SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


class MobileNetV2(_Sequential):
    """MobileNet V2: inverted residuals with linear bottlenecks, ReLU6, last 1×1 conv to 1280 (kept at 1280 for α < 1)."""

    def __init__(self, in_shape: tuple[int, ...] = (3, 224, 224), num_classes: int = 1000, width_mult: float = 1.0,
                 dropout: float = 0.2):
        super().__init__()
        c = make_divisible(32 * width_mult)
        last = make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [ConvBNAct(in_shape[0], c, 3, stem_stride(in_shape), act=nn.ReLU6)]
        for t, c_out, n, s in V2_SETTINGS:
            c_out = make_divisible(c_out * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(c, c_out, s if i == 0 else 1, expand_ratio=t, act=nn.ReLU6))
                c = c_out
        layers.append(ConvBNAct(c, last, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.classifier = _classifier(last, num_classes, dropout)


# MobileNet V3 (Howard et al. ICCV 2019, Tables 1 and 2): kernel, expansion size, output channels, SE, h-swish, stride
V3_LARGE = [
    (3, 16, 16, False, False, 1), (3, 64, 24, False, False, 2), (3, 72, 24, False, False, 1),
    (5, 72, 40, True, False, 2), (5, 120, 40, True, False, 1), (5, 120, 40, True, False, 1),
    (3, 240, 80, False, True, 2), (3, 200, 80, False, True, 1), (3, 184, 80, False, True, 1),
    (3, 184, 80, False, True, 1), (3, 480, 112, True, True, 1), (3, 672, 112, True, True, 1),
    (5, 672, 160, True, True, 2), (5, 960, 160, True, True, 1), (5, 960, 160, True, True, 1),
]
V3_SMALL = [
    (3, 16, 16, True, False, 2), (3, 72, 24, False, False, 2), (3, 88, 24, False, False, 1),
    (5, 96, 40, True, True, 2), (5, 240, 40, True, True, 1), (5, 240, 40, True, True, 1),
    (5, 120, 48, True, True, 1), (5, 144, 48, True, True, 1), (5, 288, 96, True, True, 2),
    (5, 576, 96, True, True, 1), (5, 576, 96, True, True, 1),
]


class MobileNetV3(_Sequential):
    """MobileNet V3: V2 blocks plus squeeze-and-excitation and h-swish, with the searched layer tables.

    Head: 1×1 conv (960 / 576, h-swish) → pool → linear 1280 / 1024 (h-swish, no BN) → dropout → linear.
    """

    def __init__(self, in_shape: tuple[int, ...] = (3, 224, 224), num_classes: int = 1000, mode: str = "large",
                 width_mult: float = 1.0, dropout: float = 0.2):
        super().__init__()
        if mode not in ("large", "small"):
            raise ValueError(f"mode must be 'large' or 'small', got {mode!r}")
        table, last_conv, hidden = (V3_LARGE, 960, 1280) if mode == "large" else (V3_SMALL, 576, 1024)
        c = make_divisible(16 * width_mult)
        layers: list[nn.Module] = [ConvBNAct(in_shape[0], c, 3, stem_stride(in_shape), act=HSwish)]
        for k, exp, c_out, se, hs, s in table:
            c_out = make_divisible(c_out * width_mult)
            layers.append(InvertedResidual(c, c_out, s, hidden=make_divisible(exp * width_mult), kernel_size=k, se=se,
                                           act=HSwish if hs else nn.ReLU))
            c = c_out
        last = make_divisible(last_conv * width_mult)
        layers.append(ConvBNAct(c, last, 1, act=HSwish))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(last, hidden), HSwish(),
                                        nn.Dropout(dropout), nn.Linear(hidden, num_classes))


def mobilenet_v3_large(in_shape: tuple[int, ...] = (3, 224, 224), num_classes: int = 1000, **kwargs) -> MobileNetV3:
    """MobileNet V3-Large (15 bneck layers, SE and h-swish; Howard et al. 2019 Table 1)."""
    return MobileNetV3(in_shape, num_classes, mode="large", **kwargs)


def mobilenet_v3_small(in_shape: tuple[int, ...] = (3, 224, 224), num_classes: int = 1000, **kwargs) -> MobileNetV3:
    """MobileNet V3-Small (11 bneck layers, SE and h-swish; Howard et al. 2019 Table 2)."""
    return MobileNetV3(in_shape, num_classes, mode="small", **kwargs)
