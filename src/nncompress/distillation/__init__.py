"""Knowledge distillation: Hinton soft targets, attention transfer, relational KD, FitNets hints, several teachers.

`DistillationCallback` plugs into `nncompress.training.train`, so a student can be pruned or quantized while it learns.
"""
from nncompress.distillation.features import FeatureTaps
from nncompress.distillation.losses import (
    attention_map,
    attention_transfer_loss,
    hint_loss,
    kd_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    soft_target_loss,
    soft_targets,
)
from nncompress.distillation.trainer import DistillationCallback, distill

__all__ = [
    "DistillationCallback",
    "FeatureTaps",
    "attention_map",
    "attention_transfer_loss",
    "distill",
    "hint_loss",
    "kd_loss",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "soft_target_loss",
    "soft_targets",
]
