"""Train and evaluate loops; methods hook in through Callback (masks, schedules, regularizers, distillation)."""
from nncompress.training.callbacks import Callback
from nncompress.training.device import resolve_device
from nncompress.training.loop import TrainConfig, evaluate, predict, train

__all__ = ["Callback", "TrainConfig", "evaluate", "predict", "resolve_device", "train"]
