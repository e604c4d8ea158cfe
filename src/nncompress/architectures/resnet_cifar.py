"""ResNet-20/56 for small images (He et al., "Deep Residual Learning", CVPR 2016, Sec. 4.2).

Three stages of basic blocks at widths 16/32/64 (×`width` / 16), n = (depth - 2) / 6 blocks per stage;
identity shortcuts where shapes match, 1×1 conv + BN where they change (option B).
Published sizes: ResNet-20 0.27 M parameters, ResNet-56 0.85 M.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from nncompress.core.errors import UserError


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    def __init__(self, depth: int = 20, in_shape: tuple[int, ...] = (3, 32, 32), num_classes: int = 10, width: int = 16):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise UserError(f"ResNetCifar depth must be 6n+2 with n >= 1 (20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        widths = (width, 2 * width, 4 * width)
        self.conv1 = nn.Conv2d(in_shape[0], width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, c_in = [], width
        for stage, c_out in enumerate(widths):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(c_in, c_out, 2 if stage > 0 and i == 0 else 1))
                c_in = c_out
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(torch.flatten(x, 1))


def resnet20(in_shape: tuple[int, ...] = (3, 32, 32), num_classes: int = 10, **kwargs) -> ResNetCifar:
    return ResNetCifar(20, in_shape, num_classes, **kwargs)


def resnet56(in_shape: tuple[int, ...] = (3, 32, 32), num_classes: int = 10, **kwargs) -> ResNetCifar:
    return ResNetCifar(56, in_shape, num_classes, **kwargs)
