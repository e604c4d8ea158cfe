"""Pruning over time: gradual (AGP) and iterative schedules, and splicing (dynamic network surgery).

One-shot pruning is just a pruner's `prune(model)`.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from nncompress.core.errors import UserError
from nncompress.pruning.criteria import check_sparsity, score_view
from nncompress.pruning.mask import apply_shared_mask, dense_tensor, get_mask
from nncompress.pruning.pruners import LevelPruner, PerLayer, SensitivityPruner, resolve_layers, weight_holders
from nncompress.training.callbacks import Callback


def _check_positive_int(value: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{where} must be an integer >= 1, got {value!r}")
    return value


def agp_sparsity(step: int, initial_sparsity: float, final_sparsity: float, start_step: int, n_steps: int,
                 frequency: int = 1) -> float:
    """Automated gradual pruning (Zhu & Gupta 2017, "To prune, or not to prune"):

        s_t = s_f + (s_i − s_f)·(1 − (t − t0)/(n·Δt))³,

    for t0 ≤ t ≤ t0 + n·Δt; s_i before t0 and s_f after the end. Pruning fast at first (when many
    redundant weights exist) and slowly near the end gives the network time to recover.
    """
    s_i = check_sparsity(initial_sparsity, "initial_sparsity")
    s_f = check_sparsity(final_sparsity, "final_sparsity")
    if s_i > s_f:
        raise UserError(f"initial_sparsity ({s_i}) must not exceed final_sparsity ({s_f})")
    _check_positive_int(n_steps, "n_steps")
    _check_positive_int(frequency, "frequency")
    if step <= start_step:
        return s_i
    span = n_steps * frequency
    if step >= start_step + span:
        return s_f
    return s_f + (s_i - s_f) * (1.0 - (step - start_step) / span) ** 3


class AGPPruner(Callback):
    """Raise each layer's level-pruning target along `agp_sparsity` during training.

    Prunes at t = start, start+Δt, …, start+n·Δt, where t counts steps (`unit="step"`) or epochs
    (`unit="epoch"`, at the start of the epoch). Each time the new level mask is computed on the
    masked weight and intersected with the old one, so sparsity never goes down. Train at least a few
    steps past the last pruning point so the network can recover. `history_` lists (t, target).
    """

    def __init__(self, final_sparsity: PerLayer, initial_sparsity: float = 0.0, start: int = 0, n_steps: int = 10,
                 frequency: int = 1, unit: str = "step", scope: str = "layer", layers: Sequence[str] | None = None):
        if unit not in ("step", "epoch"):
            raise UserError(f"unit must be 'step' or 'epoch', got {unit!r}")
        finals = final_sparsity.values() if isinstance(final_sparsity, Mapping) else [final_sparsity]
        for s_f in finals:  # validates every target once, up front
            agp_sparsity(start, initial_sparsity, s_f, start, n_steps, frequency)
        LevelPruner(final_sparsity, scope=scope, layers=layers)  # validates scope vs. dict
        self.final_sparsity, self.initial_sparsity = final_sparsity, initial_sparsity
        self.start, self.n_steps, self.frequency = start, n_steps, frequency
        self.unit, self.scope, self.layers = unit, scope, layers
        self.history_: list[tuple[int, PerLayer]] = []

    def target(self, t: int) -> PerLayer:
        """The sparsity target(s) at step/epoch t."""
        def one(s_f: float) -> float:
            return agp_sparsity(t, self.initial_sparsity, s_f, self.start, self.n_steps, self.frequency)

        if isinstance(self.final_sparsity, Mapping):
            return {name: one(s_f) for name, s_f in self.final_sparsity.items()}
        return one(self.final_sparsity)

    def is_pruning_point(self, t: int) -> bool:
        return self.start <= t <= self.start + self.n_steps * self.frequency and (t - self.start) % self.frequency == 0

    def _maybe_prune(self, t: int, model: nn.Module) -> None:
        if self.is_pruning_point(t):
            target = self.target(t)
            LevelPruner(target, scope=self.scope, layers=self.layers).prune(model)
            self.history_.append((t, target))

    def on_step_begin(self, step: int, model: nn.Module) -> None:
        if self.unit == "step":
            self._maybe_prune(step, model)

    def on_epoch_begin(self, epoch: int, model: nn.Module) -> None:
        if self.unit == "epoch":
            self._maybe_prune(epoch, model)


def iterative_prune(model: nn.Module, fine_tune_fn: Callable[[nn.Module], float | None], levels: Sequence[PerLayer],
                    criterion: str = "level", scope: str = "layer",
                    layers: Sequence[str] | None = None) -> list[tuple[PerLayer, float | None]]:
    """Iterative pruning (Han et al. 2015): for each level, prune, then `fine_tune_fn(model)`.

    `levels` are sparsity targets (criterion="level", with `scope`) or sensitivity s values
    (criterion="sensitivity", threshold s·σ), usually increasing; masks accumulate, so pruned weights
    stay pruned while fine-tuning. `fine_tune_fn` trains the model in place and returns the metric to
    record (e.g. top-1), or None. Returns [(level, metric), ...].
    """
    if criterion not in ("level", "sensitivity"):
        raise UserError(f"criterion must be 'level' or 'sensitivity', got {criterion!r}")
    if not levels:
        raise UserError("levels is empty: give at least one sparsity (or s) value")
    if criterion == "level":
        pruners = [LevelPruner(level, scope=scope, layers=layers) for level in levels]
    else:
        pruners = [SensitivityPruner(level, layers=layers) for level in levels]
    history = []
    for level, pruner in zip(levels, pruners):
        pruner.prune(model)
        metric = fine_tune_fn(model)
        history.append((level, None if metric is None else float(metric)))
    return history


class SplicingPruner(Callback):
    """Dynamic network surgery (Guo, Yao & Chen, NeurIPS 2016): prune and splice during training.

    The dense weights keep training: masks are straight-through (forward w·m, gradient to every w).
    Every `frequency` steps (until `stop_step`), per layer, with μ, σ the mean and std of |W| at the
    start of training and thresholds a = (1 − margin)·max(μ + c·σ, 0), b = (1 + margin)·max(μ + c·σ, 0)
    (Guo et al. use margin 0.1):

        m ← 0 where |w| < a;   m ← 1 where |w| > b;   unchanged in between,

    so a weight pruned by mistake comes back once its dense value grows past b. `c` sets the
    compression (larger c prunes more); `thresholds={layer: (a, b)}` sets them directly. At the end of
    training masks become ordinary (zero-gradient) masks again.
    """

    def __init__(self, c: PerLayer = 0.0, frequency: int = 1, stop_step: int | None = None, margin: float = 0.1,
                 thresholds: Mapping[str, tuple[float, float]] | None = None, layers: Sequence[str] | None = None):
        _check_positive_int(frequency, "frequency")
        if not 0.0 <= margin < 1.0:
            raise UserError(f"margin must be in [0, 1), got {margin!r}")
        for name, ab in (thresholds or {}).items():
            if len(ab) != 2 or not 0.0 <= ab[0] <= ab[1]:
                raise UserError(f"thresholds for layer '{name}' must be (a, b) with 0 <= a <= b, got {ab!r}")
        if isinstance(c, Mapping) and (thresholds is not None or layers is not None):
            raise UserError("give per-layer c (a dict) or thresholds/layers, not both")
        for name, value in (c.items() if isinstance(c, Mapping) else [("all layers", c)]):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UserError(f"c for {name} must be a finite number, got {value!r}")
        self.c, self.frequency, self.stop_step, self.margin = c, frequency, stop_step, margin
        self.thresholds, self.layers = thresholds, layers
        self.thresholds_: dict[str, tuple[float, float]] = {}
        self._modules: dict[str, nn.Module] = {}
        self._holders: dict[str, list[nn.Module]] = {}

    def _layer_thresholds(self, name: str, module: nn.Module) -> tuple[float, float]:
        if self.thresholds is not None and name in self.thresholds:
            a, b = self.thresholds[name]
            return float(a), float(b)
        c = self.c[name] if isinstance(self.c, Mapping) else self.c
        w = dense_tensor(module).detach().abs().double()
        level = max(float(w.mean()) + float(c) * float(w.std(correction=0)), 0.0)
        return (1.0 - self.margin) * level, (1.0 + self.margin) * level

    def on_train_begin(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if self.thresholds is not None and self.layers is None:
            names = list(self.thresholds)
        elif isinstance(self.c, Mapping):
            names = list(self.c)
        else:
            names = self.layers
        self._modules = resolve_layers(model, names)
        holders = weight_holders(model)  # tied weights: every holder shares the one straight-through mask
        self._holders = {name: [m, *(h for h in holders.get(id(dense_tensor(m)), []) if h is not m)]
                         for name, m in self._modules.items()}
        for name, module in self._modules.items():
            self.thresholds_[name] = self._layer_thresholds(name, module)
            current = get_mask(module)
            start = torch.ones_like(module.weight, dtype=torch.bool) if current is None else current.clone()
            apply_shared_mask(self._holders[name], start, replace=True, straight_through=True)

    @torch.no_grad()
    def splice(self) -> None:
        """One pruning-and-splicing update of every layer's mask from its dense weights."""
        for name, module in self._modules.items():
            a, b = self.thresholds_[name]
            w = score_view(dense_tensor(module)).abs()
            old = get_mask(module)
            apply_shared_mask(self._holders[name], (old & (w >= a)) | (w > b), replace=True)

    def on_step_begin(self, step: int, model: nn.Module) -> None:
        if step % self.frequency == 0 and (self.stop_step is None or step < self.stop_step):
            self.splice()

    def on_train_end(self, model: nn.Module) -> None:
        for name, module in self._modules.items():
            apply_shared_mask(self._holders[name], get_mask(module), straight_through=False)
