"""GoogLeNet / Inception V1 (Szegedy et al., CVPR 2015, Table 1) and BN-Inception / Inception V2 (Ioffe & Szegedy,
ICML 2015, Figure 5): multi-branch Inception modules concatenated along channels.

Both use conv → BatchNorm (ε = 1e-3) → ReLU. GoogLeNet had no BatchNorm in 2014 (and an LRN after the stem); BN
adds only 2 parameters per channel (~0.13 %) and makes the model trainable from scratch with plain SGD.

GoogLeNet module: 1×1 | 1×1 → 3×3 | 1×1 → 5×5 | 3×3 max pool → 1×1 projection. The paper's 5×5 is kept (the
torchvision port uses a 3×3 there, 6.62 M params; with the 5×5 and BN we count 7.0 M). Two auxiliary classifiers
(after 4a and 4d: 5×5/3 average pool → 1×1 conv 128 → FC 1024 → dropout 0.7 → FC) regularize training; their
losses are added with weight 0.3 and they are dropped at inference (§5).

BN-Inception module: the 5×5 becomes two 3×3 (the "double 3×3" branch), the pool branch is an average pool (max
in 5b), and two modules (3c, 4e) reduce the grid with stride-2 3×3s and a max pool passed through without a
projection.

Small inputs (< 64 px) get a 3×3 stride-1 stem without its two max pools, so 28×28 reaches the last stage at
7×7 and 8×8 at 2×2 (the grid reductions use ceil-mode pooling, as the Caffe models did).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from nncompress.architectures.blocks import ConvBNAct
from nncompress.architectures.mobilenet import SMALL_INPUT

EPS = 1e-3
AUX_WEIGHT = 0.3  # Szegedy et al. 2015 §5: "their loss is added to the total loss of the network with a discount weight"


def _conv(c_in: int, c_out: int, k: int = 1, stride: int = 1) -> ConvBNAct:
    return ConvBNAct(c_in, c_out, k, stride, bn_eps=EPS)


class Inception(nn.Module):
    """Parallel branches concatenated: [1×1 c1] | 1×1 c3r → 3×3 c3 | 1×1 c5r → 5×5 c5 (or, `double=True`, two 3×3)
    | 3×3 pool (`pool` = 'max' or 'avg') → [1×1 proj]. `stride=2` turns it into a grid reduction (BN-Inception 3c,
    4e): no 1×1 branch, the last conv of the 3×3 branches at stride 2 and the max pool passed through unprojected.
    """

    def __init__(self, c_in: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, proj: int, pool: str = "max",
                 double: bool = False, stride: int = 1, wide_kernel: int = 5):
        super().__init__()
        branches: list[nn.Module] = []
        if c1:
            branches.append(_conv(c_in, c1))
        branches.append(nn.Sequential(_conv(c_in, c3r), _conv(c3r, c3, 3, stride)))
        if double:
            branches.append(nn.Sequential(_conv(c_in, c5r), _conv(c5r, c5, 3), _conv(c5, c5, 3, stride)))
        else:
            branches.append(nn.Sequential(_conv(c_in, c5r), _conv(c5r, c5, wide_kernel, stride)))
        # stride 1: padded 3×3 pool keeps the grid; stride 2: unpadded, ceil mode (28 → 14, 14 → 7 as the convs)
        pooling = (nn.MaxPool2d if pool == "max" else nn.AvgPool2d)(3, stride, 1 if stride == 1 else 0,
                                                                    ceil_mode=stride > 1)
        branches.append(nn.Sequential(pooling, _conv(c_in, proj)) if proj else pooling)
        self.branches = nn.ModuleList(branches)
        self.out_channels = c1 + c3 + c5 + (proj or c_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.branches], 1)


class AuxClassifier(nn.Module):
    """GoogLeNet auxiliary head: 5×5/3 average pool (4×4 out of the 14×14 grid) → 1×1 conv 128 → FC 1024 → ReLU →
    dropout 0.7 → FC to the classes (Szegedy et al. 2015 §5). The pool is adaptive to 4×4, as in torchvision, so the
    head works on any grid; on 14×14 it averages 4-5 pixel windows instead of the paper's overlapping 5×5, with the
    same output size, parameters and MACs."""

    def __init__(self, c_in: int, num_classes: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.conv = _conv(c_in, 128)
        self.fc1 = nn.Linear(128 * 16, 1024)
        self.dropout = nn.Dropout(0.7)
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.conv(self.pool(x)), 1)
        return self.fc2(self.dropout(torch.relu(self.fc1(x))))


class GoogLeNetOutputs(NamedTuple):
    logits: torch.Tensor
    aux1: torch.Tensor
    aux2: torch.Tensor


def aux_loss(output: torch.Tensor | tuple, target: torch.Tensor, weight: float = AUX_WEIGHT) -> torch.Tensor:
    """Cross-entropy of the main logits plus `weight` × that of each auxiliary head (0.3 in GoogLeNet, §5).

    Pass as `nncompress.training.train(..., loss_fn=aux_loss)` to train a model built with `aux_logits=True`: in
    training mode it returns (logits, aux1, aux2). A plain tensor (eval mode, or no aux heads) gives plain
    cross-entropy, so the same loss works for any model.
    """
    if isinstance(output, torch.Tensor):
        return nn.functional.cross_entropy(output, target)
    main, *aux = output
    loss = nn.functional.cross_entropy(main, target)
    for a in aux:
        loss = loss + weight * nn.functional.cross_entropy(a, target)
    return loss


def _stem(in_shape: tuple[int, ...]) -> list[nn.Module]:
    """7×7/2 conv 64 → 3×3/2 max pool → 1×1 conv 64 → 3×3 conv 192 → 3×3/2 max pool (224 → 28); small inputs: a
    3×3 stride-1 first conv and no pools."""
    if min(in_shape[1:]) < SMALL_INPUT:
        return [_conv(in_shape[0], 64, 3), _conv(64, 64), _conv(64, 192, 3)]
    return [_conv(in_shape[0], 64, 7, 2), nn.MaxPool2d(3, 2, ceil_mode=True), _conv(64, 64), _conv(64, 192, 3),
            nn.MaxPool2d(3, 2, ceil_mode=True)]


# GoogLeNet Table 1: #1×1, #3×3 reduce, #3×3, #5×5 reduce, #5×5, pool proj; "M" = 3×3/2 max pool
V1_MODULES = [("3a", (64, 96, 128, 16, 32, 32)), ("3b", (128, 128, 192, 32, 96, 64)), "M",
              ("4a", (192, 96, 208, 16, 48, 64)), ("4b", (160, 112, 224, 24, 64, 64)),
              ("4c", (128, 128, 256, 24, 64, 64)), ("4d", (112, 144, 288, 32, 64, 64)),
              ("4e", (256, 160, 320, 32, 128, 128)), "M",
              ("5a", (256, 160, 320, 32, 128, 128)), ("5b", (384, 192, 384, 48, 128, 128))]


class GoogLeNet(nn.Module):
    """GoogLeNet (Inception V1): stem → nine Inception modules → global average pool → dropout 0.4 → linear.

    `aux_logits=True` builds the two auxiliary heads (on 4a and 4d): in training mode the forward then returns
    `GoogLeNetOutputs(logits, aux1, aux2)`, to be trained with `loss_fn=aux_loss` (weight 0.3); in eval mode it
    returns the logits alone. The default (`False`) is the inference network the paper counts (6.8 M parameters,
    Table 1), a plain classifier that any loop trains with cross-entropy. `wide_kernel=3` builds the torchvision
    port's 3×3 in place of the 5×5 (the layout of the widely used pretrained weights: 6,624,904 params, 1.498 G MACs).
    """

    def __init__(self, in_shape: tuple[int, ...] = (3, 224, 224), num_classes: int = 1000, aux_logits: bool = False,
                 dropout: float = 0.4, wide_kernel: int = 5):
        super().__init__()
        layers = _stem(in_shape)
        c, self.aux_at = 192, {}
        for item in V1_MODULES:
            if item == "M":
                layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
                continue
            name, cfg = item
            layers.append(Inception(c, *cfg, wide_kernel=wide_kernel))
            c = layers[-1].out_channels
            if name in ("4a", "4d"):
                self.aux_at[len(layers)] = name  # heads read the output of 4a and of 4d
        self.features = nn.Sequential(*layers)
        self.aux1 = AuxClassifier(512, num_classes) if aux_logits else None
        self.aux2 = AuxClassifier(528, num_classes) if aux_logits else None
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                        nn.Linear(c, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor | GoogLeNetOutputs:
        if self.aux1 is None or not self.training:
            return self.classifier(self.features(x))
        aux = []
        for i, layer in enumerate(self.features, 1):
            x = layer(x)
            if i in self.aux_at:
                aux.append((self.aux1 if self.aux_at[i] == "4a" else self.aux2)(x))
        return GoogLeNetOutputs(self.classifier(x), *aux)


# BN-Inception (Ioffe & Szegedy 2015, Figure 5): #1×1, #3×3 reduce, #3×3, double #3×3 reduce, double #3×3,
# pool, pool proj (0 = pass through), stride
BN_MODULES = [(64, 64, 64, 64, 96, "avg", 32, 1), (64, 64, 96, 64, 96, "avg", 64, 1),
              (0, 128, 160, 64, 96, "max", 0, 2),
              (224, 64, 96, 96, 128, "avg", 128, 1), (192, 96, 128, 96, 128, "avg", 128, 1),
              (160, 128, 160, 128, 160, "avg", 128, 1), (96, 128, 192, 160, 192, "avg", 128, 1),
              (0, 128, 192, 192, 256, "max", 0, 2),
              (352, 192, 320, 160, 224, "avg", 128, 1), (352, 192, 320, 192, 224, "max", 128, 1)]


class BNInception(nn.Module):
    """BN-Inception (Inception V2): GoogLeNet with BatchNorm, 5×5 → double 3×3, strided reduction modules, no aux
    heads and no dropout in our build (the paper removes dropout, §4.2.1)."""

    def __init__(self, in_shape: tuple[int, ...] = (3, 224, 224), num_classes: int = 1000, dropout: float = 0.0):
        super().__init__()
        layers = _stem(in_shape)
        c = 192
        for c1, c3r, c3, d3r, d3, pool, proj, stride in BN_MODULES:
            layers.append(Inception(c, c1, c3r, c3, d3r, d3, proj, pool, double=True, stride=stride))
            c = layers[-1].out_channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                        nn.Linear(c, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
