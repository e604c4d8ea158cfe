"""SqueezeNet 1.0 (Iandola et al. 2016, Table 1) and 1.1 (the authors' repository: 3×3/64 first conv, pooling
moved earlier; ~2.4× fewer MACs for the same accuracy).

At ImageNet size the model is the paper's: convolutions carry biases and no BatchNorm; the classifier is a 1×1
conv to the classes, ReLU and global average pooling (no fully connected layer).

Small inputs (< 64 px) keep the stride-2 first conv (padded) but drop the max pool after it, so a 28×28 input
still reaches the last Fire module at 3×3 (2×2 for 1.1). They also differ in two ways that make them trainable
in a couple of epochs with plain SGD (without them a 28×28 SqueezeNet stays at chance on MNIST):

* no ReLU on the logits. With conv10 → ReLU → average pool, a class whose conv10 outputs are negative at every
  position gets a logit of exactly 0 and no gradient; cross-entropy pushes the wrong classes' logits down, so
  early in training they fall below 0 and stay dead (1.1 on mnist5k, 2 epochs of SGD: 9 of 10 classes dead and
  10% top-1 at lr 0.01; even with BatchNorm, 8 dead and 29% at lr 0.1).
* BatchNorm after every convolution (conv without bias → BN → ReLU, as in most later re-implementations).
  Without it, 9 Fire modules deep, SGD is very learning-rate sensitive: with the logit ReLU removed but no BN,
  1.1 reaches 12% at lr 0.01 and 10% at lr 0.1 in 2 epochs; with both changes 97% at lr 0.1.

Both are switches (`batch_norm`, `relu_logits`; None = chosen from the input size) so either form can be built
at any size.
"""
from __future__ import annotations

import torch
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


def _conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, padding: int = 0) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, padding, bias=False), nn.BatchNorm2d(c_out))


class FireBN(nn.Module):
    """A Fire module with BatchNorm after each convolution (conv without bias → BN → ReLU); same channels as `Fire`."""

    def __init__(self, c_in: int, squeeze: int, expand1x1: int, expand3x3: int):
        super().__init__()
        self.squeeze = _conv_bn(c_in, squeeze, 1)
        self.expand1x1 = _conv_bn(squeeze, expand1x1, 1)
        self.expand3x3 = _conv_bn(squeeze, expand3x3, 3, padding=1)
        self.out_channels = expand1x1 + expand3x3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.squeeze(x))
        return torch.cat((torch.relu(self.expand1x1(s)), torch.relu(self.expand3x3(s))), 1)


class SqueezeNet(_Sequential):
    """SqueezeNet `version` '1.0' or '1.1': conv1 → max pool → Fire modules with max pools → dropout → conv10 → pool.

    `batch_norm` and `relu_logits` default (None) to the paper's form at ImageNet size (False, True) and to the
    trainable small-input form below 64 px (True, False); see the module docstring for why.
    """

    def __init__(self, in_shape: tuple[int, ...] = (3, 224, 224), num_classes: int = 1000, version: str = "1.0",
                 dropout: float = 0.5, batch_norm: bool | None = None, relu_logits: bool | None = None):
        super().__init__()
        if version not in LAYOUTS:
            raise ValueError(f"version must be '1.0' or '1.1', got {version!r}")
        c, k, layout = LAYOUTS[version]
        small = stem_stride(in_shape) == 1
        batch_norm = small if batch_norm is None else batch_norm
        relu_logits = not small if relu_logits is None else relu_logits
        pad = k // 2 if small else 0
        stem = _conv_bn(in_shape[0], c, k, 2, pad) if batch_norm else nn.Conv2d(in_shape[0], c, k, 2, pad)
        layers: list[nn.Module] = [stem, nn.ReLU()]
        if not small:
            layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
        fire_cls = FireBN if batch_norm else Fire
        for item in layout:
            if item == "M":
                layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
            else:
                fire = fire_cls(c, *_FIRES[item])
                layers.append(fire)
                c = fire.out_channels
        self.features = nn.Sequential(*layers)
        final = nn.Conv2d(c, num_classes, 1)
        head: list[nn.Module] = [nn.Dropout(dropout), final] + ([nn.ReLU()] if relu_logits else [])
        self.classifier = nn.Sequential(*head, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        # He initialisation for the ReLU convs (keeps the activation scale through 9 Fire modules without BN),
        # N(0, 0.01) for conv10 as in the reference model, zero biases (BN layers keep PyTorch's 1 and 0)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m is final:
                    nn.init.normal_(m.weight, 0.0, 0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


def squeezenet1_0(in_shape: tuple[int, ...] = (3, 224, 224), num_classes: int = 1000, **kwargs) -> SqueezeNet:
    """SqueezeNet 1.0: 7×7/96 first conv, Fire modules 2-9 (Iandola et al. 2016, Table 1)."""
    return SqueezeNet(in_shape, num_classes, version="1.0", **kwargs)


def squeezenet1_1(in_shape: tuple[int, ...] = (3, 224, 224), num_classes: int = 1000, **kwargs) -> SqueezeNet:
    """SqueezeNet 1.1: 3×3/64 first conv and earlier pooling, ~2.4× fewer MACs than 1.0 at the same accuracy."""
    return SqueezeNet(in_shape, num_classes, version="1.1", **kwargs)
