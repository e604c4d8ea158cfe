"""MnasNet-A1 (Tan et al., CVPR 2019, Figure 7): the platform-aware NAS result, built from `InvertedResidual`.

Stem 3×3/2 (32) → SepConv 3×3 (16) → MBConv6 3×3 ×2 (24) → MBConv3 5×5 SE ×3 (40) → MBConv6 3×3 ×4 (80)
→ MBConv6 3×3 SE ×2 (112) → MBConv6 5×5 SE ×3 (160) → MBConv6 3×3 ×1 (320) → 1×1 (1280) → pool → linear.
ReLU everywhere; SE squeezes to a quarter of the block's input channels with a sigmoid gate and BatchNorm
epsilon 1e-3, as in the reference `mnasnet_models.py` (block strings `r3_k5_s22_e3_i24_o40_se0.25` ...).
Published: 3.9 M params, 312 M multiply-adds at 224 (Tan et al. 2019, Table 1). Small inputs (< 64 px) get a
stride-1 stem.
"""
from __future__ import annotations

from torch import nn

from nncompress.architectures.blocks import ConvBNAct, InvertedResidual
from nncompress.architectures.mobilenet import _Sequential, stem_stride

BN_EPS = 1e-3
# expansion, kernel, first stride, output channels, repeats, SE (Figure 7 / reference block strings)
A1_STAGES = [(1, 3, 1, 16, 1, False), (6, 3, 2, 24, 2, False), (3, 5, 2, 40, 3, True), (6, 3, 2, 80, 4, False),
             (6, 3, 1, 112, 2, True), (6, 5, 2, 160, 3, True), (6, 3, 1, 320, 1, False)]


class MnasNetA1(_Sequential):
    """MnasNet-A1: MBConv blocks with per-stage kernel sizes, expansions and SE found by multi-objective search."""

    def __init__(self, in_shape: tuple[int, ...] = (3, 224, 224), num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        c = 32
        layers: list[nn.Module] = [ConvBNAct(in_shape[0], c, 3, stem_stride(in_shape), bn_eps=BN_EPS)]
        for t, k, s, c_out, n, se in A1_STAGES:
            for i in range(n):
                layers.append(InvertedResidual(c, c_out, s if i == 0 else 1, hidden=c * t, kernel_size=k, act=nn.ReLU,
                                               se=se, se_channels=max(1, int(c * 0.25)), se_gate=nn.Sigmoid,
                                               bn_eps=BN_EPS))
                c = c_out
        layers.append(ConvBNAct(c, 1280, 1, bn_eps=BN_EPS))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                        nn.Linear(1280, num_classes))
