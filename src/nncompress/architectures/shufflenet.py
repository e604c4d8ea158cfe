"""ShuffleNet V1 (Zhang et al., CVPR 2018, Table 1) and V2 (Ma et al., ECCV 2018, Table 5).

Stem 3×3/2 conv (24) → 3×3/2 max pool → three stages of 4, 8, 4 units (the first of each at stride 2)
→ [V2: 1×1 conv to 1024] → global pool → linear. Small inputs (< 64 px) get a stride-1 stem.
"""
from __future__ import annotations

from torch import nn

from nncompress.architectures.blocks import ConvBNAct, ShuffleV1Unit, ShuffleV2Unit
from nncompress.architectures.mobilenet import _classifier, _Sequential, stem_stride

# output channels of stages 2-4 at 1× for each group count g (ShuffleNet V1, Table 1)
V1_STAGE_CHANNELS = {1: (144, 288, 576), 2: (200, 400, 800), 3: (240, 480, 960), 4: (272, 544, 1088), 8: (384, 768, 1536)}
# ShuffleNet V2 stage widths and the conv5 width, per model size (V2, Table 5)
V2_STAGE_CHANNELS = {0.5: (48, 96, 192, 1024), 1.0: (116, 232, 464, 1024), 1.5: (176, 352, 704, 1024),
                     2.0: (244, 488, 976, 2048)}
REPEATS = (4, 8, 4)


class ShuffleNetV1(_Sequential):
    """ShuffleNet V1 with `groups` g for the pointwise group convolutions and width scale s (channels ×s, MACs ≈ ×s²)."""

    def __init__(self, in_shape: tuple[int, ...] = (3, 224, 224), num_classes: int = 1000, groups: int = 3,
                 width_mult: float = 1.0):
        super().__init__()
        if groups not in V1_STAGE_CHANNELS:
            raise ValueError(f"groups must be one of {sorted(V1_STAGE_CHANNELS)}, got {groups}")
        # channels must stay divisible by 4·g (bottleneck = out/4 split in g groups)
        stage_channels = [int(round(c * width_mult / (4 * groups))) * 4 * groups for c in V1_STAGE_CHANNELS[groups]]
        c = 24 if width_mult >= 1 else max(12, int(round(24 * width_mult / groups)) * groups)
        layers: list[nn.Module] = [ConvBNAct(in_shape[0], c, 3, stem_stride(in_shape)), nn.MaxPool2d(3, 2, 1)]
        for stage, (c_out, n) in enumerate(zip(stage_channels, REPEATS)):
            for i in range(n):
                layers.append(ShuffleV1Unit(c, c_out, groups, 2 if i == 0 else 1, group_first=not (stage == 0 and i == 0)))
                c = c_out
        self.features = nn.Sequential(*layers)
        self.classifier = _classifier(c, num_classes, 0.0)


class ShuffleNetV2(_Sequential):
    """ShuffleNet V2 at model size 0.5×, 1×, 1.5× or 2× (`width_mult`)."""

    def __init__(self, in_shape: tuple[int, ...] = (3, 224, 224), num_classes: int = 1000, width_mult: float = 1.0):
        super().__init__()
        if width_mult not in V2_STAGE_CHANNELS:
            raise ValueError(f"width_mult must be one of {sorted(V2_STAGE_CHANNELS)}, got {width_mult}")
        *stage_channels, last = V2_STAGE_CHANNELS[width_mult]
        c = 24
        layers: list[nn.Module] = [ConvBNAct(in_shape[0], c, 3, stem_stride(in_shape)), nn.MaxPool2d(3, 2, 1)]
        for c_out, n in zip(stage_channels, REPEATS):
            for i in range(n):
                layers.append(ShuffleV2Unit(c, c_out, 2 if i == 0 else 1))
                c = c_out
        layers.append(ConvBNAct(c, last, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = _classifier(last, num_classes, 0.0)
