"""SqueezeNet 1.0 (Iandola et al. 2016, Table 1) and 1.1 (the authors' repository: 3×3/64 first conv, pooling
moved earlier; ~2.4× fewer MACs for the same accuracy).

Convolutions carry biases and no BatchNorm, as in the paper. The classifier is a 1×1 conv to the classes,
ReLU and global average pooling (no fully connected layer). Small inputs (< 64 px) keep the stride-2 first conv
(padded) but drop the max pool after it, so a 28×28 input still reaches the last Fire module at 3×3 (2×2 for 1.1).
"""
from __future__ import annotations

from torch import nn

from nncompress.architectures.blocks import Fire
from nncompress.architectures.mobilenet import _Sequential, stem_stride

# (squeeze, expand1x1, expand3x3) per Fire module 2..9; "M" = 3×3/2 max pool (ceil mode)
_FIRES = {"2": (16, 64, 64), "3": (16, 64, 64), "4": (32, 128, 128), "5": (32, 128, 128),
          "6": (48, 192, 192), "7": (48, 192, 192), "8": (64, 256, 256), "9": (64, 256, 256)}
LAYOUTS = {
    "1.0": (96, 7, ["2", "3", "4", "M", "5", "6", "7", "8", "M", "9"]),
    "1.1": (64, 3, ["2", "3", "M", "4", "5", "M", "6", "7", "8", "9"]),
}


class SqueezeNet(_Sequential):
    """SqueezeNet `version` '1.0' or '1.1': conv1 → max pool → Fire modules with max pools → dropout → conv10 → pool."""

    def __init__(self, in_shape: tuple[int, ...] = (3, 224, 224), num_classes: int = 1000, version: str = "1.0",
                 dropout: float = 0.5):
        super().__init__()
        if version not in LAYOUTS:
            raise ValueError(f"version must be '1.0' or '1.1', got {version!r}")
        c, k, layout = LAYOUTS[version]
        small = stem_stride(in_shape) == 1
        layers: list[nn.Module] = [nn.Conv2d(in_shape[0], c, k, 2, k // 2 if small else 0), nn.ReLU()]
        if not small:
            layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
        for item in layout:
            if item == "M":
                layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
            else:
                fire = Fire(c, *_FIRES[item])
                layers.append(fire)
                c = fire.out_channels
        self.features = nn.Sequential(*layers)
        final = nn.Conv2d(c, num_classes, 1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), final, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        # He initialisation for the ReLU convs (keeps the activation scale through 9 Fire modules without BN),
        # N(0, 0.01) for conv10 as in the reference model, zero biases; with smaller weights the net stays at chance
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m is final:
                    nn.init.normal_(m.weight, 0.0, 0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)


def squeezenet1_0(in_shape: tuple[int, ...] = (3, 224, 224), num_classes: int = 1000, **kwargs) -> SqueezeNet:
    """SqueezeNet 1.0: 7×7/96 first conv, Fire modules 2-9 (Iandola et al. 2016, Table 1)."""
    return SqueezeNet(in_shape, num_classes, version="1.0", **kwargs)


def squeezenet1_1(in_shape: tuple[int, ...] = (3, 224, 224), num_classes: int = 1000, **kwargs) -> SqueezeNet:
    """SqueezeNet 1.1: 3×3/64 first conv and earlier pooling, ~2.4× fewer MACs than 1.0 at the same accuracy."""
    return SqueezeNet(in_shape, num_classes, version="1.1", **kwargs)
