"""AlexNet (Krizhevsky et al., NIPS 2012; the single-tower variant of Krizhevsky 2014, "One weird trick", as in
torchvision) and VGG16 (Simonyan & Zisserman, ICLR 2015, Table 1 configuration D): the two ImageNet nets of the
Deep Compression paper (AlexNet 240 MB → 6.9 MB, VGG16 552 MB → 11.3 MB), where nearly all parameters sit in the
fully connected layers (AlexNet 94 %, VGG16 89 %).

ImageNet form: AlexNet 11×11/4 conv 64 → pool → 5×5 192 → pool → 3×3 384, 256, 256 → pool → 6×6 → FC 4096, 4096,
classes (61,100,840 params, 714 M MACs at 224: torchvision `AlexNet_Weights` meta). VGG16: thirteen 3×3 convs in
five stages (64, 128, 256, 512, 512) each closed by a 2×2/2 max pool → 7×7 → FC 4096, 4096, classes (138,357,544
params, 15.47 G MACs at 224: torchvision `VGG16_Weights` meta; the paper's Table 2 gives 138 M).

Small inputs (< 64 px): AlexNet's first conv becomes 3×3 stride 1 and the pools ceil-mode, VGG's pools ceil-mode,
so an 8×8 input is never pooled below 1×1; the feature map is averaged to 1×1 (not 6×6 / 7×7) and the hidden FC
width defaults to 512, the usual CIFAR form: a 4096-wide head on a 1×1 map would be 90 % of the model for nothing.
"""
from __future__ import annotations

import torch
from torch import nn

from nncompress.architectures.mobilenet import SMALL_INPUT

VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def _head(c: int, pool: int, hidden: int, num_classes: int, dropout: float) -> nn.Sequential:
    """Average to pool×pool → flatten → dropout → FC hidden → ReLU → dropout → FC hidden → ReLU → FC classes."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(pool), nn.Flatten(), nn.Dropout(dropout),
                         nn.Linear(c * pool * pool, hidden), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


class AlexNet(nn.Module):
    """AlexNet, single tower (torchvision's layout): five convolutions with biases, three max pools, three FC layers."""

    def __init__(self, in_shape: tuple[int, ...] = (3, 224, 224), num_classes: int = 1000, hidden: int | None = None,
                 dropout: float = 0.5):
        super().__init__()
        small = min(in_shape[1:]) < SMALL_INPUT
        first = nn.Conv2d(in_shape[0], 64, 3, 1, 1) if small else nn.Conv2d(in_shape[0], 64, 11, 4, 2)
        self.features = nn.Sequential(
            first, nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=small),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=small),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=small),
        )
        self.classifier = _head(256, 1 if small else 6, hidden or (512 if small else 4096), num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class VGG(nn.Module):
    """VGG: stacks of 3×3 conv (bias) + ReLU, 2×2/2 max pools ("M"), three FC layers; `batch_norm` adds BN after
    each conv (not in the paper; it lets the deep plain stack train from scratch without the paper's staged init)."""

    def __init__(self, in_shape: tuple[int, ...] = (3, 224, 224), num_classes: int = 1000, config: list | None = None,
                 hidden: int | None = None, batch_norm: bool = False, dropout: float = 0.5):
        super().__init__()
        small = min(in_shape[1:]) < SMALL_INPUT
        layers: list[nn.Module] = []
        c = in_shape[0]
        for v in config or VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=small))
                continue
            layers.append(nn.Conv2d(c, v, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU())
            c = v
        self.features = nn.Sequential(*layers)
        self.classifier = _head(c, 1 if small else 7, hidden or (512 if small else 4096), num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def vgg16(in_shape: tuple[int, ...] = (3, 224, 224), num_classes: int = 1000, **kwargs) -> VGG:
    """VGG16 (configuration D): 138.4 M params, 15.5 G MACs at 224."""
    return VGG(in_shape, num_classes, VGG16, **kwargs)
