"""Small hand-built networks with the structures structured pruning must handle."""
import torch
from torch import nn
from torch.nn import functional as F


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial batch-norm statistics and affine parameters, so equality tests mean something."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.1
    return model.eval()


class Residual(nn.Module):
    """stem → [conv a → bn → relu → conv b → bn] + identity → relu → head (1x1 conv) → pool → fc."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.stem_bn = nn.BatchNorm2d(8)
        self.a = nn.Conv2d(8, 6, 3, padding=1, bias=False)
        self.a_bn = nn.BatchNorm2d(6)
        self.b = nn.Conv2d(6, 8, 3, padding=1, bias=False)
        self.b_bn = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 5, 1)
        self.fc = nn.Linear(5, 4)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        y = self.b_bn(self.b(F.relu(self.a_bn(self.a(x)))))
        x = F.relu(x + y)
        x = F.relu(self.head(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Inception(nn.Module):
    """Four branches (1x1; 1x1→3x3; 1x1→5x5; pool→1x1) concatenated, then a 1x1 conv and a classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.Conv2d(8, 4, 1)
        self.b2_reduce = nn.Conv2d(8, 3, 1)
        self.b2 = nn.Conv2d(3, 5, 3, padding=1)
        self.b3_reduce = nn.Conv2d(8, 2, 1)
        self.b3 = nn.Conv2d(2, 3, 5, padding=2)
        self.b4 = nn.Conv2d(8, 2, 1)
        self.mix = nn.Conv2d(14, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = F.relu(self.stem(x))
        y = torch.cat([
            F.relu(self.b1(x)),
            F.relu(self.b2(F.relu(self.b2_reduce(x)))),
            F.relu(self.b3(F.relu(self.b3_reduce(x)))),
            F.relu(self.b4(F.max_pool2d(x, 3, 1, 1))),
        ], dim=1)
        x = F.relu(self.mix(y))
        return self.fc(x.mean((2, 3)))


class InvertedResidual(nn.Module):
    """MobileNet V2 block: 1x1 expand → BN → ReLU6 → 3x3 depthwise → BN → ReLU6 → 1x1 project → BN (+ x)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, expand: int = 4):
        super().__init__()
        hidden = c_in * expand
        self.expand = nn.Conv2d(c_in, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.dw = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.project = nn.Conv2d(hidden, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.use_res = stride == 1 and c_in == c_out

    def forward(self, x):
        y = F.relu6(self.bn1(self.expand(x)))
        y = F.relu6(self.bn2(self.dw(y)))
        y = self.bn3(self.project(y))
        return x + y if self.use_res else y


class MobileNetV2Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.blocks = nn.Sequential(InvertedResidual(8, 8), InvertedResidual(8, 12, 2), InvertedResidual(12, 12))
        self.head = nn.Sequential(nn.Conv2d(12, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(16, 5)

    def forward(self, x):
        x = self.pool(self.head(self.blocks(self.stem(x))))
        return self.classifier(torch.flatten(x, 1))


class Grouped(nn.Module):
    """A grouped (not depthwise) convolution, 2 groups of 4 channels in and 6 out."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.g = nn.Conv2d(8, 12, 3, padding=1, groups=2)
        self.c2 = nn.Conv2d(12, 4, 1)

    def forward(self, x):
        return self.c2(F.relu(self.g(F.relu(self.c1(x)))))


class DataDependent(nn.Module):
    """Python control flow on a tensor value: fx cannot trace it."""

    def forward(self, x):
        return x if x.sum() > 0 else -x


class Wrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        self.gate = DataDependent()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = self.gate(self.features(x))
        return self.fc(x.mean((2, 3)))
