"""LeNet-300-100 and LeNet-5 in the Caffe variants used by Han et al. (Deep Compression, 2016).

LeNet-300-100: 784-300-100-10 fully connected, ReLU (266,610 parameters).
LeNet-5 (Caffe): conv 20@5x5 → maxpool 2 → conv 50@5x5 → maxpool 2 → fc 500 → ReLU → fc 10 (431,080 parameters).
"""
from __future__ import annotations

import torch
from torch import nn


class LeNet300100(nn.Module):
    def __init__(self, in_shape: tuple[int, ...] = (1, 28, 28), num_classes: int = 10):
        super().__init__()
        n_in = 1
        for s in in_shape:
            n_in *= s
        self.fc1 = nn.Linear(n_in, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    def __init__(self, in_shape: tuple[int, ...] = (1, 28, 28), num_classes: int = 10):
        super().__init__()
        c, h, w = in_shape
        # small inputs (8x8 digits) get padded convolutions so the feature map never vanishes
        pad = 0 if min(h, w) >= 28 else 2
        self.conv1 = nn.Conv2d(c, 20, 5, padding=pad)
        self.conv2 = nn.Conv2d(20, 50, 5, padding=pad)
        h1, w1 = (h + 2 * pad - 4) // 2, (w + 2 * pad - 4) // 2
        h2, w2 = (h1 + 2 * pad - 4) // 2, (w1 + 2 * pad - 4) // 2
        self.fc1 = nn.Linear(50 * h2 * w2, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(self.conv1(x), 2)
        x = torch.max_pool2d(self.conv2(x), 2)
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)
