"""Hooks the training loop calls, so compression methods act during training without owning the loop."""
from __future__ import annotations

import torch
from torch import nn


class Callback:
    """Override what you need; every hook is a no-op by default.

    Order per step: on_step_begin → forward → loss() (may add terms) → backward →
    on_after_backward (may edit gradients) → optimizer.step → on_step_end.
    """

    def on_train_begin(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None: ...

    def on_epoch_begin(self, epoch: int, model: nn.Module) -> None: ...

    def on_step_begin(self, step: int, model: nn.Module) -> None: ...

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, output: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """Return the loss to minimize (e.g. loss + λ·regularizer, or a distillation loss)."""
        return loss

    def on_after_backward(self, model: nn.Module) -> None: ...

    def on_step_end(self, step: int, model: nn.Module) -> None: ...

    def on_epoch_end(self, epoch: int, model: nn.Module, metrics: dict[str, float]) -> None: ...

    def on_train_end(self, model: nn.Module) -> None: ...
