"""Dense-Sparse-Dense training (Han et al. 2017, "DSD: Dense-Sparse-Dense Training for Deep Neural Networks").

Dense: train normally. Sparse: prune the smallest-|w| fraction per layer and retrain under the mask.
Re-dense: lift the mask (pruned weights restart from zero) and retrain at a lower learning rate (paper: 1/10).
The sparse phase regularizes; the re-dense phase gives the recovered capacity back, usually for higher accuracy.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from torch import nn
from torch.utils.data import DataLoader

from nncompress.training.callbacks import Callback
from nncompress.training.loop import TrainConfig, evaluate, train
from nncompress.training.masking import MaskCallback, Masks, magnitude_masks


@dataclass
class DSDResult:
    top1: dict[str, float] = field(default_factory=dict)  # after each phase: dense, sparse, redense (if val_loader)
    history: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    masks: Masks = field(default_factory=dict)


def dsd(model: nn.Module, train_loader: DataLoader, cfg: TrainConfig | None = None, sparsity: float = 0.3,
        dense_epochs: int | None = None, redense_lr_scale: float = 0.1, layers: Sequence[str] | None = None,
        val_loader: DataLoader | None = None, callbacks: Sequence[Callback] = ()) -> DSDResult:
    """Run dense → sparse → re-dense on `model` in place, each phase `cfg.epochs` long.

    dense_epochs: length of the first phase (0 for an already trained model; default cfg.epochs).
    sparsity: fraction of each layer's weights removed in the sparse phase (paper: 0.3–0.5).
    """
    cfg = cfg or TrainConfig()
    result = DSDResult()

    def phase(name: str, phase_cfg: TrainConfig, extra: list[Callback]) -> None:
        result.history[name] = train(model, train_loader, replace(phase_cfg, history=[]), callbacks=[*extra, *callbacks])
        if val_loader is not None:
            result.top1[name] = evaluate(model, val_loader)

    n_dense = cfg.epochs if dense_epochs is None else dense_epochs
    if n_dense > 0:
        phase("dense", replace(cfg, epochs=n_dense), [])
    result.masks = magnitude_masks(model, sparsity, layers=layers)
    phase("sparse", cfg, [MaskCallback(result.masks)])
    phase("redense", replace(cfg, lr=cfg.lr * redense_lr_scale), [])
    return result
