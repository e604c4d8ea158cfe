"""Distillation as a training callback, so it composes with pruning and quantization callbacks in one run.

The loop computes the student's output and the task loss; `DistillationCallback.loss` runs the frozen
teacher(s) on the same batch and swaps the hard-label term for Hinton's mix, then adds the feature terms:

    L = loss + α·(T²·KL(p_T ‖ p_S) − CE(z_s, y)) + Σ w_at·AT + Σ w_hint·hint + Σ (w_d·RKD_D + w_a·RKD_A)

With the default cross-entropy task loss this is exactly α·T²·KL + (1 − α)·CE plus the feature terms, and any
terms other callbacks added to `loss` (regularizers) are kept whatever the callback order.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from nncompress.core.errors import UserError
from nncompress.core.guards import check_hyperparameter
from nncompress.core.model_io import ForwardFn, call_model
from nncompress.distillation.features import FeatureTaps
from nncompress.distillation.losses import (
    attention_transfer_loss,
    hint_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    soft_target_loss,
    soft_targets,
)
from nncompress.training import Callback, TrainConfig, train
from nncompress.training.device import module_device

LayerPairs = Sequence[tuple[str, str]]


def _is_sequence(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> bool:
    """Token features [batch, positions, channels] of the same length: hidden states of a transformer."""
    return student_feature.dim() == 3 and teacher_feature.dim() == 3 and student_feature.shape[1] == teacher_feature.shape[1]


def _regressor(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> nn.Module:
    """FitNets regressor: a 1×1 convolution for feature maps; for token sequences one linear map of the channels
    shared by every position (TinyBERT's W_h: a dense map over positions × channels would have (T·C)² weights and
    tie the student to one sequence length); a linear map of the flattened feature otherwise.

    When the two widths match (a student cut from its teacher's own layers) the map starts as the identity, so
    the hint term begins as plain feature matching instead of pulling the student's layers toward a random
    projection of the teacher's (measured on the GPT-2 testbed: a random start raised the student's perplexity
    above training it alone)."""
    if student_feature.dim() == 4 and teacher_feature.dim() == 4:
        reg: nn.Module = nn.Conv2d(student_feature.shape[1], teacher_feature.shape[1], kernel_size=1)
    elif _is_sequence(student_feature, teacher_feature):
        reg = nn.Linear(student_feature.shape[-1], teacher_feature.shape[-1])
    else:
        reg = nn.Linear(student_feature[0].numel(), teacher_feature[0].numel())
    w = reg.weight.data.view(reg.weight.shape[0], -1)
    if w.shape[0] == w.shape[1]:
        with torch.no_grad():
            w.copy_(torch.eye(w.shape[0]))
            reg.bias.zero_()
    return reg


class DistillationCallback(Callback):
    """Distil one or more frozen teachers into the model being trained.

    teachers: a module or a list; several are combined by averaging their softened outputs with `teacher_weights`.
    temperature, alpha: Hinton's T and the weight of the soft-target term (the hard-label term gets 1 − α).
    attention / hints / rkd: (student_module, teacher_module) name pairs; feature terms use the first teacher.
    Teachers and FitNets regressors follow the student's device for the run (teachers go back where they
    were at the end; regressors stay with the callback and follow the student again in the next run).
    """

    def __init__(self, teachers: nn.Module | Sequence[nn.Module], temperature: float = 4.0, alpha: float = 0.9,
                 teacher_weights: Sequence[float] | None = None, attention: LayerPairs = (), attention_weight: float = 1.0,
                 hints: LayerPairs = (), hint_weight: float = 1.0, rkd: LayerPairs = (),
                 rkd_distance_weight: float = 1.0, rkd_angle_weight: float = 2.0):
        self.teachers = [teachers] if isinstance(teachers, nn.Module) else list(teachers)
        if not self.teachers:
            raise UserError("distillation needs at least one teacher model")
        if teacher_weights is not None and len(teacher_weights) != len(self.teachers):
            raise UserError(f"got {len(teacher_weights)} teacher weights for {len(self.teachers)} teachers: give one weight per teacher")
        if not 0.0 <= alpha <= 1.0:
            raise UserError(f"alpha must be in [0, 1] (weight of the soft-target loss), got {alpha}")
        temperature = check_hyperparameter("temperature", temperature)  # nan/inf passed `<= 0` and made the loss nan
        for name, w in (("attention_weight", attention_weight), ("hint_weight", hint_weight), ("rkd_distance_weight", rkd_distance_weight),
                        ("rkd_angle_weight", rkd_angle_weight), *((f"teacher weight {i}", w) for i, w in enumerate(teacher_weights or ()))):
            if check_hyperparameter(name, w, positive=False) < 0:
                raise UserError(f"{name} must be ≥ 0, got {w}")
        self.temperature, self.alpha, self.teacher_weights = temperature, alpha, teacher_weights
        self.attention, self.hints, self.rkd = list(attention), list(hints), list(rkd)
        self.attention_weight, self.hint_weight = attention_weight, hint_weight
        self.rkd_distance_weight, self.rkd_angle_weight = rkd_distance_weight, rkd_angle_weight
        self.regressors = nn.ModuleDict()
        self.last_terms: dict[str, float] = {}
        self._optimizer: torch.optim.Optimizer | None = None
        self._groups: list[dict] = []
        self._student_taps: FeatureTaps | None = None
        self._teacher_taps: FeatureTaps | None = None
        self._teacher_homes: list[torch.device] = []

    def _pairs(self) -> list[tuple[str, str]]:
        return self.attention + self.hints + self.rkd

    def on_train_begin(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self._optimizer = optimizer
        device = module_device(model)
        self._teacher_homes = [module_device(t) for t in self.teachers]
        # frozen for the run only: the caller's teacher gets its trainable flags (and train/eval mode) back at the end
        self._teacher_state = [(t.training, [p.requires_grad for p in t.parameters()]) for t in self.teachers]
        for t in self.teachers:
            t.to(device).eval()
            t.requires_grad_(False)
        self.regressors.to(device)
        pairs = self._pairs()
        if pairs:
            self._student_taps = FeatureTaps(model, [s for s, _ in pairs], role="student")
            self._teacher_taps = FeatureTaps(self.teachers[0], [t for _, t in pairs], role="teacher")
        self._groups = []
        for reg in self.regressors.values():  # regressors kept from an earlier run keep training
            self._add_to_optimizer(reg)

    def _add_to_optimizer(self, reg: nn.Module) -> None:
        if self._optimizer is not None:
            self._optimizer.add_param_group({"params": list(reg.parameters())})
            self._groups.append(self._optimizer.param_groups[-1])

    def on_step_begin(self, step: int, model: nn.Module) -> None:
        # regressor groups join after the loop built its LR schedule: make them follow the student's LR
        if self._optimizer is not None:
            for g in self._groups:
                g["lr"] = self._optimizer.param_groups[0]["lr"]

    def _hint_term(self, s_name: str, t_name: str, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        key = f"{s_name}->{t_name}".replace(".", "_")
        if s.dim() == 4 and t.dim() == 4 and s.shape[-2:] != t.shape[-2:]:
            size = (min(s.shape[-2], t.shape[-2]), min(s.shape[-1], t.shape[-1]))
            s, t = F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size)
        if key not in self.regressors:
            reg = _regressor(s, t).to(s.device)
            self.regressors[key] = reg
            self._add_to_optimizer(reg)
        reg = self.regressors[key]
        out = reg(s) if isinstance(reg, nn.Conv2d) or _is_sequence(s, t) else reg(s.flatten(1))
        return hint_loss(out, t.reshape(out.shape))

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, output: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = [call_model(t, x) for t in self.teachers]  # x: the batch's inputs, any format
        p = soft_targets(teacher_logits, self.temperature, self.teacher_weights)
        soft = soft_target_loss(output, p, self.temperature)
        # The loop's loss is the task (hard-label) loss: cross-entropy for (x, y), or the model's own loss when it
        # takes labels (a causal LM shifts its labels; recomputing CE here would not). KD is the first callback, so
        # nothing else has been added to it yet.
        hard = loss
        total = (1 - self.alpha) * hard + self.alpha * soft
        terms = {"soft": float(soft.detach()), "hard": float(hard.detach())}
        if self._student_taps is not None and self._teacher_taps is not None:
            st, tt = self._student_taps, self._teacher_taps
            for s_name, t_name in self.attention:
                at = attention_transfer_loss(st[s_name], tt[t_name])
                total = total + self.attention_weight * at
                terms[f"at:{s_name}"] = float(at.detach())
            for s_name, t_name in self.hints:
                h = self._hint_term(s_name, t_name, st[s_name], tt[t_name])
                total = total + self.hint_weight * h
                terms[f"hint:{s_name}"] = float(h.detach())
            for s_name, t_name in self.rkd:
                d, a = rkd_distance_loss(st[s_name], tt[t_name]), rkd_angle_loss(st[s_name], tt[t_name])
                total = total + self.rkd_distance_weight * d + self.rkd_angle_weight * a
                terms[f"rkd_d:{s_name}"], terms[f"rkd_a:{s_name}"] = float(d.detach()), float(a.detach())
        self.last_terms = terms
        return total

    def on_train_end(self, model: nn.Module) -> None:
        for taps in (self._student_taps, self._teacher_taps):
            if taps is not None:
                taps.remove()
        self._student_taps = self._teacher_taps = None
        self._optimizer = None
        for t, home in zip(self.teachers, self._teacher_homes):
            t.to(home)
        for t, (training, flags) in zip(self.teachers, getattr(self, "_teacher_state", [])):
            t.train(training)
            for p, flag in zip(t.parameters(), flags):
                p.requires_grad_(flag)
        self._teacher_homes, self._teacher_state = [], []


def distill(student: nn.Module, teachers: nn.Module | Sequence[nn.Module], train_loader: DataLoader,
            cfg: TrainConfig | None = None, *, temperature: float = 4.0, alpha: float = 0.9,
            teacher_weights: Sequence[float] | None = None, attention: LayerPairs = (), hints: LayerPairs = (),
            rkd: LayerPairs = (), callbacks: Sequence[Callback] = (), val_loader: DataLoader | None = None,
            forward_fn: ForwardFn | None = None, **weights: float) -> list[dict[str, float]]:
    """Train `student` in place against the teacher(s); other callbacks (pruning, QAT) run in the same loop.

    Batches may be in any format `nncompress.core.model_io` understands ((x, y), dicts with `labels`); teachers
    are called on the batch's inputs the same way. `forward_fn(model, batch)` replaces the student's call.
    `weights` may set attention_weight, hint_weight, rkd_distance_weight, rkd_angle_weight. Returns the epoch history.
    """
    kd = DistillationCallback(teachers, temperature, alpha, teacher_weights, attention=attention, hints=hints, rkd=rkd, **weights)
    return train(student, train_loader, cfg, callbacks=[kd, *callbacks], val_loader=val_loader, forward_fn=forward_fn)
