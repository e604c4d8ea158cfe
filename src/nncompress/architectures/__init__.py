"""Model families by name. `build_model(name, in_shape, num_classes)` is how recipes and the CLI make a model."""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from nncompress.architectures.densenet import densenet121
from nncompress.architectures.efficientnet import efficientnet_b0, efficientnet_lite0
from nncompress.architectures.googlenet import BNInception, GoogLeNet
from nncompress.architectures.inception import InceptionV3
from nncompress.architectures.lenet import LeNet5, LeNet300100
from nncompress.architectures.mnasnet import MnasNetA1
from nncompress.architectures.mobilenet import MobileNetV1, MobileNetV2, mobilenet_v3_large, mobilenet_v3_small
from nncompress.architectures.resnet_cifar import resnet20, resnet56
from nncompress.architectures.shufflenet import ShuffleNetV1, ShuffleNetV2
from nncompress.architectures.squeezenet import squeezenet1_0, squeezenet1_1
from nncompress.architectures.vgg_alexnet import AlexNet, vgg16
from nncompress.architectures.xception import Xception
from nncompress.core.errors import UserError

MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet300": LeNet300100,
    "lenet5": LeNet5,
    "mobilenet_v1": MobileNetV1,
    "mobilenet_v2": MobileNetV2,
    "mobilenet_v3_large": mobilenet_v3_large,
    "mobilenet_v3_small": mobilenet_v3_small,
    "shufflenet_v1": ShuffleNetV1,
    "shufflenet_v2": ShuffleNetV2,
    "squeezenet1_0": squeezenet1_0,
    "squeezenet1_1": squeezenet1_1,
    "inception_v3": InceptionV3,
    "resnet20": resnet20,
    "resnet56": resnet56,
    "googlenet": GoogLeNet,
    "bn_inception": BNInception,
    "xception": Xception,
    "mnasnet_a1": MnasNetA1,
    "efficientnet_b0": efficientnet_b0,
    "efficientnet_lite0": efficientnet_lite0,
    "densenet121": densenet121,
    "alexnet": AlexNet,
    "vgg16": vgg16,
}


def build_model(name: str, in_shape: tuple[int, ...] = (1, 28, 28), num_classes: int = 10, **kwargs) -> nn.Module:
    """Build a registered model for inputs of `in_shape` (C, H, W) and `num_classes` outputs, or the user's own:
    `package.module:factory` / `path/to/file.py:factory` (see `nncompress.core.model_ref`), called with the
    arguments among in_shape, num_classes and `kwargs` it declares."""
    if name not in MODELS:
        from nncompress.core.model_ref import is_factory_ref, resolve_model

        if is_factory_ref(name):
            return resolve_model(name, in_shape=tuple(in_shape), num_classes=num_classes, **kwargs)
        raise UserError(f"unknown model '{name}': choose one of {', '.join(sorted(MODELS))}, "
                        "or name your own as package.module:factory or path/to/file.py:factory")
    return MODELS[name](in_shape=tuple(in_shape), num_classes=num_classes, **kwargs)


__all__ = ["MODELS", "LeNet300100", "LeNet5", "build_model"]
