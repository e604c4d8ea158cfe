"""Inception V3 (Szegedy et al., CVPR 2016): an Inception net built from factorized convolutions.

- 5×5 → two 3×3 (`factorized_5x5`, the double-3×3 branch of the 35×35 modules, §3.1),
- n×n → 1×n then n×1 (`asymmetric_conv`, n = 7 in the 17×17 modules and 1×3 / 3×1 splits at 8×8, §3.2),
- grid reduction by parallel stride-2 conv and pooling branches (§5).

At 299×299 with 1000 classes and the auxiliary head it has 27.16 M parameters and 5.71 G MACs
(the reference implementation's count; 23.83 M without the auxiliary head). `width_mult` scales every
branch; inputs smaller than 75 px get a stride-1 stem without its pools so the 8×8 stage keeps ≥ 2×2 pixels
(28×28 → 13 → 6 → 2); inputs under 15 px also lose the last stem pool and get padded grid reductions (8 → 4 → 2).
"""
from __future__ import annotations

import torch
from torch import nn

from nncompress.architectures.blocks import ConvBNAct, asymmetric_conv, factorized_5x5

EPS = 1e-3  # BatchNorm epsilon of the reference implementation


def _conv(c_in: int, c_out: int, k: int | tuple[int, int] = 1, stride: int = 1, padding: int | None = None) -> ConvBNAct:
    return ConvBNAct(c_in, c_out, k, stride, padding=padding, bn_eps=EPS)


class _Branches(nn.Module):
    """Parallel branches concatenated along channels."""

    def __init__(self, *branches: nn.Module, out_channels: int):
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.branches], 1)


def _pool_proj(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.AvgPool2d(3, 1, 1), _conv(c_in, c_out))


def inception_a(c_in: int, pool_features: int, w) -> _Branches:
    """35×35 module: 1×1 | 1×1 → 5×5 | 1×1 → factorized 5×5 (two 3×3) | pool → 1×1 (Fig. 5)."""
    return _Branches(
        _conv(c_in, w(64)),
        nn.Sequential(_conv(c_in, w(48)), _conv(w(48), w(64), 5)),
        nn.Sequential(_conv(c_in, w(64)), factorized_5x5(w(64), w(96), w(96))),
        _pool_proj(c_in, w(pool_features)),
        out_channels=w(64) * 2 + w(96) + w(pool_features),
    )


def reduction_a(c_in: int, w, pad: int = 0) -> _Branches:
    """35 → 17 grid reduction: 3×3/2 | 1×1 → two 3×3 (the second /2) | max pool /2 (Fig. 10).

    `pad=1` pads the strided convolutions and the pool (n → ⌈n/2⌉ instead of ⌊(n−3)/2⌋+1): tiny inputs only."""
    last = factorized_5x5(w(64), w(96), w(96), stride=2)
    if pad:
        last[1][0].padding = (pad, pad)
    return _Branches(
        _conv(c_in, w(384), 3, 2, padding=pad),
        nn.Sequential(_conv(c_in, w(64)), last),
        nn.MaxPool2d(3, 2, pad),
        out_channels=w(384) + w(96) + c_in,
    )


def inception_b(c_in: int, c7: int, w) -> _Branches:
    """17×17 module with asymmetric 7×7s: 1×1 | 1×1 → 1×7 → 7×1 | 1×1 → 7×1 → 1×7 → 7×1 → 1×7 | pool → 1×1 (Fig. 6)."""
    c7 = w(c7)
    return _Branches(
        _conv(c_in, w(192)),
        nn.Sequential(_conv(c_in, c7), asymmetric_conv(c7, c7, w(192), 7)),
        nn.Sequential(_conv(c_in, c7), asymmetric_conv(c7, c7, c7, 7, column_first=True),
                      asymmetric_conv(c7, c7, w(192), 7, column_first=True)),
        _pool_proj(c_in, w(192)),
        out_channels=4 * w(192),
    )


def reduction_b(c_in: int, w, pad: int = 0) -> _Branches:
    """17 → 8 grid reduction: 1×1 → 3×3/2 | 1×1 → 1×7 → 7×1 → 3×3/2 | max pool /2 (`pad` as in `reduction_a`)."""
    return _Branches(
        nn.Sequential(_conv(c_in, w(192)), _conv(w(192), w(320), 3, 2, padding=pad)),
        nn.Sequential(_conv(c_in, w(192)), asymmetric_conv(w(192), w(192), w(192), 7),
                      _conv(w(192), w(192), 3, 2, padding=pad)),
        nn.MaxPool2d(3, 2, pad),
        out_channels=w(320) + w(192) + c_in,
    )


class _SplitAsymmetric(nn.Module):
    """x → [1×3 conv, 3×1 conv] concatenated: the expanded filter bank of the 8×8 modules (Fig. 7)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.row = _conv(c_in, c_out, (1, 3))
        self.col = _conv(c_in, c_out, (3, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.row(x), self.col(x)), 1)


def inception_c(c_in: int, w) -> _Branches:
    """8×8 module: 1×1 | 1×1 → [1×3, 3×1] | 1×1 → 3×3 → [1×3, 3×1] | pool → 1×1."""
    return _Branches(
        _conv(c_in, w(320)),
        nn.Sequential(_conv(c_in, w(384)), _SplitAsymmetric(w(384), w(384))),
        nn.Sequential(_conv(c_in, w(448)), _conv(w(448), w(384), 3), _SplitAsymmetric(w(384), w(384))),
        _pool_proj(c_in, w(192)),
        out_channels=w(320) + 4 * w(384) + w(192),
    )


class AuxHead(nn.Module):
    """Auxiliary classifier on the 17×17 grid: pool to 5×5 → 1×1 (128) → 5×5 (768) → global pool → linear."""

    def __init__(self, c_in: int, num_classes: int, w):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(5)  # = avg pool 5/3 on the 17×17 grid
        self.conv0 = _conv(c_in, w(128))
        self.conv1 = _conv(w(128), w(768), 5, padding=0)
        self.fc = nn.Linear(w(768), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.conv0(self.pool(x)))
        return self.fc(torch.flatten(x, 1))


class InceptionV3(nn.Module):
    """Inception V3 (factorized 5×5 and asymmetric 1×n/n×1 convolutions) as `features` + `classifier`.

    `aux_logits=True` adds the auxiliary head, used in training only: train-mode forward returns (logits, aux).
    """

    def __init__(self, in_shape: tuple[int, ...] = (3, 299, 299), num_classes: int = 1000, width_mult: float = 1.0,
                 aux_logits: bool = False, dropout: float = 0.5):
        super().__init__()

        def w(c: int) -> int:
            return max(8, int(round(c * width_mult)))

        small = min(in_shape[1:]) < 75
        # tiny inputs (the 8×8 digits): also no stem pool and padded grid reductions, 8 → 8 → 4 → 2. Below 15 px
        # the unpadded 3×3/2 pool and reductions leave reduction B less than 3×3 (8 → 3 → 1), and its 3×3 conv fails
        tiny = min(in_shape[1:]) < 15
        pad = 1 if tiny else 0
        s = 1 if small else 2
        stem: list[nn.Module] = [
            _conv(in_shape[0], w(32), 3, s, padding=1 if small else 0),
            _conv(w(32), w(32), 3, padding=1 if small else 0),
            _conv(w(32), w(64), 3, padding=1),
        ]
        if not small:
            stem.append(nn.MaxPool2d(3, 2))
        stem += [_conv(w(64), w(80)), _conv(w(80), w(192), 3, padding=1 if small else 0)]
        if not tiny:
            stem.append(nn.MaxPool2d(3, 2))
        blocks: list[nn.Module] = []
        c = w(192)
        for pf in (32, 64, 64):
            blocks.append(inception_a(c, pf, w))
            c = blocks[-1].out_channels
        blocks.append(reduction_a(c, w, pad))
        c = blocks[-1].out_channels
        for c7 in (128, 160, 160, 192):
            blocks.append(inception_b(c, c7, w))
            c = blocks[-1].out_channels
        self.aux_index = len(stem) + len(blocks)  # the aux head reads the output of the last 17×17 module
        self.aux = AuxHead(c, num_classes, w) if aux_logits else None
        blocks.append(reduction_b(c, w, pad))
        c = blocks[-1].out_channels
        for _ in range(2):
            blocks.append(inception_c(c, w))
            c = blocks[-1].out_channels
        self.features = nn.Sequential(*stem, *blocks)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                        nn.Linear(c, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.aux is None or not self.training:
            return self.classifier(self.features(x))
        x = self.features[: self.aux_index](x)
        aux = self.aux(x)
        return self.classifier(self.features[self.aux_index:](x)), aux
