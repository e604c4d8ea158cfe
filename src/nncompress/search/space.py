"""A MobileNet-style search space: one width multiplier, and a depth and a depthwise kernel size per stage.

Each stage is a run of inverted residual blocks (MobileNet V2) with the stage's kernel; the first block of a
stage may downsample. The space is small enough to sample and mutate by hand, like MnasNet's factorized
hierarchical space (Tan et al. 2019) without per-layer choices.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from torch import nn

from nncompress.architectures.blocks import ConvBNAct, InvertedResidual, make_divisible
from nncompress.architectures.mobilenet import _classifier, _Sequential, stem_stride


@dataclass(frozen=True)
class Arch:
    width_mult: float
    depths: tuple[int, ...]
    kernels: tuple[int, ...]

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"w{self.width_mult:g}-d{''.join(map(str, self.depths))}-k{''.join(map(str, self.kernels))}"


class SearchNet(_Sequential):
    """The network an `Arch` describes: stem → stages of inverted residuals → 1×1 conv → classifier."""

    def __init__(self, arch: Arch, stages: tuple[tuple[int, int], ...], in_shape: tuple[int, ...], num_classes: int,
                 expand_ratio: float, last_channels: int):
        super().__init__()
        w = arch.width_mult
        c = make_divisible(16 * w)
        layers: list[nn.Module] = [ConvBNAct(in_shape[0], c, 3, stem_stride(in_shape), act=nn.ReLU6)]
        for (c_out, stride), depth, k in zip(stages, arch.depths, arch.kernels):
            c_out = make_divisible(c_out * w)
            for i in range(depth):
                layers.append(InvertedResidual(c, c_out, stride if i == 0 else 1, expand_ratio=expand_ratio,
                                               kernel_size=k, act=nn.ReLU6))
                c = c_out
        last = make_divisible(last_channels * w)
        layers.append(ConvBNAct(c, last, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.classifier = _classifier(last, num_classes, 0.0)


class MobileNetSpace:
    """Choices: `widths` for the whole net; per stage a depth from `depths` and a kernel from `kernels`.

    `stages` holds each stage's (base output channels, stride of its first block).
    """

    def __init__(self, widths: tuple[float, ...] = (0.25, 0.35, 0.5, 0.75, 1.0), depths: tuple[int, ...] = (1, 2, 3),
                 kernels: tuple[int, ...] = (3, 5, 7),
                 stages: tuple[tuple[int, int], ...] = ((24, 2), (40, 2), (80, 2), (112, 1)),
                 expand_ratio: float = 4.0, last_channels: int = 256):
        if not widths or not depths or not kernels or not stages:
            raise ValueError("every choice list of the search space must be non-empty")
        self.widths, self.depths, self.kernels = tuple(widths), tuple(depths), tuple(kernels)
        self.stages, self.expand_ratio, self.last_channels = tuple(stages), expand_ratio, last_channels

    @property
    def size(self) -> int:
        """Number of distinct architectures: |widths| · (|depths| · |kernels|)^stages."""
        return len(self.widths) * (len(self.depths) * len(self.kernels)) ** len(self.stages)

    def sample(self, rng: random.Random) -> Arch:
        n = len(self.stages)
        return Arch(rng.choice(self.widths), tuple(rng.choice(self.depths) for _ in range(n)),
                    tuple(rng.choice(self.kernels) for _ in range(n)))

    def mutate(self, arch: Arch, rng: random.Random) -> Arch:
        """Change exactly one choice (the width, or one stage's depth or kernel) to a different value."""
        while True:
            gene = rng.randrange(1 + 2 * len(self.stages))
            if gene == 0 and len(self.widths) > 1:
                return Arch(rng.choice([w for w in self.widths if w != arch.width_mult]), arch.depths, arch.kernels)
            stage = (gene - 1) // 2
            if gene > 0 and gene % 2 == 1 and len(self.depths) > 1:
                depths = list(arch.depths)
                depths[stage] = rng.choice([d for d in self.depths if d != depths[stage]])
                return Arch(arch.width_mult, tuple(depths), arch.kernels)
            if gene > 0 and gene % 2 == 0 and len(self.kernels) > 1:
                kernels = list(arch.kernels)
                kernels[stage] = rng.choice([k for k in self.kernels if k != kernels[stage]])
                return Arch(arch.width_mult, arch.depths, tuple(kernels))
            if len(self.widths) == len(self.depths) == len(self.kernels) == 1:
                return arch  # a space of one architecture has nothing to mutate to

    def build(self, arch: Arch, in_shape: tuple[int, ...], num_classes: int) -> SearchNet:
        if len(arch.depths) != len(self.stages) or len(arch.kernels) != len(self.stages):
            raise ValueError(f"{arch} needs {len(self.stages)} depths and kernels")
        return SearchNet(arch, self.stages, in_shape, num_classes, self.expand_ratio, self.last_channels)
