"""DenseNet-BC (Huang et al., CVPR 2017, Table 1): every layer of a dense block sees the concatenation of all
earlier feature maps of the block.

Layer: BN → ReLU → 1×1 conv (4k, the bottleneck) → BN → ReLU → 3×3 conv (k new channels), k = growth rate 32.
Transition: BN → ReLU → 1×1 conv halving the channels (compression θ = 0.5) → 2×2/2 average pool.
DenseNet-121: 7×7/2 conv 64 → 3×3/2 max pool → blocks of 6, 12, 24, 16 layers → BN → ReLU → pool → linear.
Published: 7,978,856 parameters and 2.834 G multiply-adds at 224 (torchvision `DenseNet121_Weights` meta: the
LuaTorch port of the authors' model; 2.87 G is a figure quoted elsewhere for the same net, 1.3 % above this count).
Small inputs (< 64 px) get a 3×3 stride-1 stem without the max pool, and transitions pool in ceil mode so an 8×8
input keeps a 1×1 grid to the end.
"""
from __future__ import annotations

import torch
from torch import nn

from nncompress.architectures.mobilenet import SMALL_INPUT

DENSENET121 = (6, 12, 24, 16)


class DenseLayer(nn.Module):
    """BN-ReLU-1×1 conv (bn_size·k) → BN-ReLU-3×3 conv (k); the output is concatenated to the input."""

    def __init__(self, c_in: int, growth: int, bn_size: int = 4):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(c_in), nn.ReLU(), nn.Conv2d(c_in, bn_size * growth, 1, bias=False),
            nn.BatchNorm2d(bn_size * growth), nn.ReLU(), nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x, self.body(x)), 1)


def transition(c_in: int, c_out: int, small: bool) -> nn.Sequential:
    """BN-ReLU-1×1 conv to `c_out` then 2×2/2 average pool (ceil mode for small inputs, so 1×1 stays 1×1)."""
    return nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU(), nn.Conv2d(c_in, c_out, 1, bias=False),
                         nn.AvgPool2d(2, 2, ceil_mode=small))


class DenseNet(nn.Module):
    """DenseNet-BC with `block_config` layers per dense block, growth rate `growth`, compression 0.5."""

    def __init__(self, in_shape: tuple[int, ...] = (3, 224, 224), num_classes: int = 1000,
                 block_config: tuple[int, ...] = DENSENET121, growth: int = 32, init_features: int = 64,
                 bn_size: int = 4, dropout: float = 0.0):
        super().__init__()
        small = min(in_shape[1:]) < SMALL_INPUT
        stem = ([nn.Conv2d(in_shape[0], init_features, 3, 1, 1, bias=False)] if small else
                [nn.Conv2d(in_shape[0], init_features, 7, 2, 3, bias=False)])
        stem += [nn.BatchNorm2d(init_features), nn.ReLU()]
        if not small:
            stem.append(nn.MaxPool2d(3, 2, 1))
        layers: list[nn.Module] = stem
        c = init_features
        for i, n in enumerate(block_config):
            for _ in range(n):
                layers.append(DenseLayer(c, growth, bn_size))
                c += growth
            if i < len(block_config) - 1:
                layers.append(transition(c, c // 2, small))
                c //= 2
        layers += [nn.BatchNorm2d(c), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                        nn.Linear(c, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def densenet121(in_shape: tuple[int, ...] = (3, 224, 224), num_classes: int = 1000, **kwargs) -> DenseNet:
    """DenseNet-121 (k = 32, blocks 6-12-24-16): 7.98 M params, 2.83 G MACs at 224."""
    return DenseNet(in_shape, num_classes, DENSENET121, **kwargs)
