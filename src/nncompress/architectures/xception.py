"""Xception (Chollet, CVPR 2017, Figure 5): Inception modules taken to the limit, i.e. depthwise-separable
convolutions in residual blocks.

Entry flow: 3×3/2 conv 32 → 3×3 conv 64 (both unpadded) → three blocks (128, 256, 728 channels) of
[ReLU → SepConv → BN] ×2 → 3×3/2 max pool, each with a 1×1/2 conv + BN shortcut. Middle flow: eight blocks of
[ReLU → SepConv 728 → BN] ×3 with identity shortcuts. Exit flow: [ReLU → SepConv 728 → BN → ReLU → SepConv 1024
→ BN] → 3×3/2 max pool (+ 1×1/2 shortcut), SepConv 1536 → BN → ReLU, SepConv 2048 → BN → ReLU, global pool,
linear. A "SepConv" is a 3×3 depthwise conv then a 1×1 pointwise conv, no BN or ReLU between them and no biases
(the paper found an intermediate non-linearity hurts, §4.7).

Published: 22,855,952 parameters (paper Table 3; the Keras application's 22,910,480 adds BatchNorm running
statistics) and 8.4 G multiply-adds at 299×299 (osmr/imgclsmob table: 8,403.63 M). Small inputs (< 64 px) get
a stride-1, padded stem and keep their first entry-block pool at stride 1, so 28×28 reaches the exit flow at 4×4
and 8×8 at 1×1.
"""
from __future__ import annotations

import torch
from torch import nn

from nncompress.architectures.blocks import ConvBNAct
from nncompress.architectures.mobilenet import SMALL_INPUT


class SeparableConv(nn.Sequential):
    """3×3 depthwise → 1×1 pointwise, no bias, no BN or activation in between (Xception's SeparableConv2D)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(nn.Conv2d(c_in, c_in, 3, 1, 1, groups=c_in, bias=False), nn.Conv2d(c_in, c_out, 1, bias=False))


class XceptionBlock(nn.Module):
    """[ReLU →] SepConv → BN, repeated over `widths`, then an optional 3×3 max pool (`stride`); the shortcut is
    identity, or a 1×1 conv + BN when the width or the grid changes. `first_relu=False` for the first entry block,
    whose input has just passed a ReLU."""

    def __init__(self, c_in: int, widths: list[int], stride: int = 1, first_relu: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        c = c_in
        for i, w in enumerate(widths):
            if i > 0 or first_relu:
                layers.append(nn.ReLU())
            layers += [SeparableConv(c, w), nn.BatchNorm2d(w)]
            c = w
        if stride > 1:
            layers.append(nn.MaxPool2d(3, stride, 1))
        self.body = nn.Sequential(*layers)
        self.shortcut = (nn.Sequential(nn.Conv2d(c_in, c, 1, stride, bias=False), nn.BatchNorm2d(c))
                         if stride > 1 or c != c_in else nn.Identity())
        self.out_channels = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class Xception(nn.Module):
    """Xception: 36 convolution layers in 14 modules, all but the first and last with linear residual connections."""

    def __init__(self, in_shape: tuple[int, ...] = (3, 299, 299), num_classes: int = 1000, dropout: float = 0.0):
        super().__init__()
        small = min(in_shape[1:]) < SMALL_INPUT
        pad = 1 if small else 0
        layers: list[nn.Module] = [ConvBNAct(in_shape[0], 32, 3, 1 if small else 2, padding=pad),
                                   ConvBNAct(32, 64, 3, padding=pad)]
        c = 64
        for i, w in enumerate((128, 256, 728)):
            layers.append(XceptionBlock(c, [w, w], 1 if small and i == 0 else 2, first_relu=i > 0))
            c = w
        layers += [XceptionBlock(728, [728] * 3) for _ in range(8)]
        layers.append(XceptionBlock(728, [728, 1024], 2))
        layers += [SeparableConv(1024, 1536), nn.BatchNorm2d(1536), nn.ReLU(),
                   SeparableConv(1536, 2048), nn.BatchNorm2d(2048), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                        nn.Linear(2048, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
