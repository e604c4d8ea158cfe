"""Iterative magnitude pruning with three ways to restart after each pruning round.

- "rewind": reset surviving weights to their values at an early step k and retrain the full schedule
  (Frankle & Carbin 2019, "The Lottery Ticket Hypothesis", k = 0; Frankle et al. 2020, "Linear Mode
  Connectivity and the Lottery Ticket Hypothesis", small k > 0).
- "finetune": keep the trained weights and continue at a small constant learning rate (Han et al. 2015).
- "reinit": draw fresh random weights under the same mask (the random re-initialisation control).

Each round removes the same fraction of the remaining weights: after r of n rounds the sparsity is
1 − (1 − s_target)^{r/n}.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn
from torch.utils.data import DataLoader

from nncompress.core.errors import UserError
from nncompress.training.callbacks import Callback
from nncompress.training.loop import TrainConfig, evaluate, train
from nncompress.training.masking import (
    MaskCallback,
    Masks,
    apply_masks,
    magnitude_masks,
    mask_sparsity,
)

RESETS = ("rewind", "finetune", "reinit")


def round_sparsities(target: float, rounds: int) -> list[float]:
    """Sparsity after each round when every round prunes the same fraction of what is left."""
    if not 0.0 < target < 1.0 or rounds < 1:
        raise UserError(f"need 0 < target sparsity < 1 and rounds >= 1, got {target} and {rounds}")
    return [1.0 - (1.0 - target) ** (r / rounds) for r in range(1, rounds + 1)]


class _Snapshot(Callback):
    """Copies the weights as they are before optimizer step `step` (0: the initialization)."""

    def __init__(self, step: int):
        self.step, self.state = step, None

    def on_step_begin(self, step: int, model: nn.Module) -> None:
        if step == self.step:
            self.state = copy.deepcopy(model.state_dict())

    def on_train_end(self, model: nn.Module) -> None:
        if self.state is None:  # rewind point past the end of training
            self.state = copy.deepcopy(model.state_dict())


def _reinitialize(model: nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    for m in model.modules():
        if m is not model and hasattr(m, "reset_parameters"):
            m.reset_parameters()


@dataclass
class LotteryResult:
    reset: str
    sparsity: list[float] = field(default_factory=list)  # measured after each round (0.0 first: the dense model)
    top1: list[float] = field(default_factory=list)      # test top-1 after each round's training
    masks: Masks = field(default_factory=dict)


def iterative_magnitude_pruning(model: nn.Module, train_loader: DataLoader, val_loader: DataLoader,
                                cfg: TrainConfig | None = None, target_sparsity: float = 0.9, rounds: int = 3,
                                reset: str = "rewind", rewind_step: int | None = None, finetune_lr_scale: float = 0.1,
                                scope: str = "layer", layers: Sequence[str] | None = None, reinit_seed: int = 1,
                                callbacks: Sequence[Callback] = ()) -> LotteryResult:
    """Train dense, then `rounds` times: prune by magnitude, restart per `reset`, train `cfg.epochs` under the mask.

    rewind_step: optimizer step to rewind to (default: one epoch, len(train_loader)); 0 is the original init.
    The model is left at the last round's trained, masked weights.
    """
    if reset not in RESETS:
        raise UserError(f"reset must be one of {', '.join(RESETS)}, got '{reset}'")
    cfg = cfg or TrainConfig()
    k = len(train_loader) if rewind_step is None else rewind_step
    snap = _Snapshot(k)
    train(model, train_loader, replace(cfg, history=[]), callbacks=[snap, *callbacks])
    result = LotteryResult(reset=reset, sparsity=[0.0], top1=[evaluate(model, val_loader)])
    masks: Masks | None = None
    for r, s in enumerate(round_sparsities(target_sparsity, rounds)):
        masks = magnitude_masks(model, s, layers=layers, scope=scope, current=masks)
        round_cfg = replace(cfg, history=[])
        if reset == "rewind":
            model.load_state_dict(snap.state)
        elif reset == "reinit":
            _reinitialize(model, reinit_seed + r)
        else:
            round_cfg = replace(round_cfg, lr=cfg.lr * finetune_lr_scale, lr_schedule="constant")
        apply_masks(model, masks)
        train(model, train_loader, round_cfg, callbacks=[MaskCallback(masks), *callbacks])
        result.sparsity.append(mask_sparsity(masks))
        result.top1.append(evaluate(model, val_loader))
    result.masks = masks or {}
    return result
