"""Distillation losses as pure functions of logits and features.

- Hinton, Vinyals, Dean (2015), "Distilling the Knowledge in a Neural Network": soft targets at temperature T.
- Zagoruyko, Komodakis (2017), "Paying More Attention to Attention": attention transfer (AT).
- Park, Kim, Lu, Cho (2019), "Relational Knowledge Distillation": distance-wise and angle-wise RKD.
- Romero et al. (2015), "FitNets: Hints for Thin Deep Nets": hint regression.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from nncompress.core.errors import UserError


def soft_targets(teacher_logits: torch.Tensor | Sequence[torch.Tensor], temperature: float = 4.0,
                 weights: Sequence[float] | None = None) -> torch.Tensor:
    """Teacher probabilities softmax(z/T); several teachers are averaged, optionally weighted.

    p = Σ_k w_k · softmax(z_k / T) with Σ w_k = 1 (equal weights when `weights` is None).
    """
    logits = [teacher_logits] if isinstance(teacher_logits, torch.Tensor) else list(teacher_logits)
    if not logits:
        raise ValueError("soft_targets needs at least one teacher's logits")
    w = torch.ones(len(logits)) if weights is None else torch.as_tensor(list(weights), dtype=torch.float32)
    if len(w) != len(logits) or (w < 0).any() or float(w.sum()) <= 0:
        raise ValueError(f"teacher weights must be {len(logits)} non-negative numbers with a positive sum, got {list(map(float, w))}")
    w = w / w.sum()
    return sum(float(wk) * F.softmax(z / temperature, dim=class_dim(z)) for wk, z in zip(w, logits))


def class_dim(logits: torch.Tensor) -> int:
    """Where the classes are: last for sequence logits (B, T, V) of a language model or token classifier,
    dimension 1 otherwise ((B, C) classifiers, (B, C, H, W) segmentation)."""
    return -1 if logits.dim() == 3 else 1


def _rows(logits: torch.Tensor) -> torch.Tensor:
    """(N, C) view with one row per distribution: (B, T, V) → (B·T, V); (B, C, H, W) → (B·H·W, C)."""
    if logits.dim() == 3:
        return logits.reshape(-1, logits.shape[-1])
    if logits.dim() > 3:
        return logits.movedim(1, -1).reshape(-1, logits.shape[1])
    return logits


def soft_target_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """T² · KL(p_teacher ‖ softmax(z_s/T)), averaged over the batch.

    The T² factor keeps the soft-target gradients the same size as the hard-label ones when T changes (Hinton 2015, §2).
    Sequence logits (B, T, V) are one distribution per token and the mean is per token (as the LM's own loss);
    (B, C, H, W) maps are one distribution per pixel.
    """
    if student_logits.shape != teacher_probs.shape:
        raise UserError(f"student logits {list(student_logits.shape)} and teacher probabilities {list(teacher_probs.shape)} "
                        "differ in shape: the student and teacher must predict the same classes at the same positions")
    log_p_student = F.log_softmax(_rows(student_logits) / temperature, dim=1)
    return F.kl_div(log_p_student, _rows(teacher_probs), reduction="batchmean") * temperature**2


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | Sequence[torch.Tensor], labels: torch.Tensor,
            temperature: float = 4.0, alpha: float = 0.9, teacher_weights: Sequence[float] | None = None) -> torch.Tensor:
    """Hinton's loss: α · T² · KL(softmax(z_t/T) ‖ softmax(z_s/T)) + (1 − α) · CE(z_s, y)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    p = soft_targets(teacher_logits, temperature, teacher_weights)
    hard = F.cross_entropy(_rows(student_logits), labels.reshape(-1)) if student_logits.dim() == 3 else F.cross_entropy(student_logits, labels)
    return alpha * soft_target_loss(student_logits, p, temperature) + (1 - alpha) * hard


def attention_map(features: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Spatial attention Q = vec(Σ_c |A_c|^p) / ‖·‖₂ for features [N, C, H, W] → [N, H·W] (AT, eq. 2)."""
    if features.dim() != 4:
        raise UserError(f"attention transfer needs 4-D feature maps [N, C, H, W], got shape {list(features.shape)}")
    q = features.abs().pow(p).sum(dim=1).flatten(1)
    return F.normalize(q, p=2, dim=1)


def attention_transfer_loss(student_features: torch.Tensor, teacher_features: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """AT loss ‖Q_s − Q_t‖₂ averaged over the batch (channel counts may differ; spatial sizes are matched by pooling).

    The paper's β/2 factor is left to the caller's weight.
    """
    s, t = student_features, teacher_features
    if s.dim() != 4 or t.dim() != 4:
        raise UserError(f"attention transfer needs 4-D feature maps [N, C, H, W] from both models, got {list(s.shape)} and {list(t.shape)}: pick convolutional layers")
    if s.shape[-2:] != t.shape[-2:]:  # pool the larger map down to the smaller one
        size = (min(s.shape[-2], t.shape[-2]), min(s.shape[-1], t.shape[-1]))
        s, t = F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size)
    return (attention_map(s, p) - attention_map(t, p)).norm(p=2, dim=1).mean()


def _pairwise_distances(e: torch.Tensor) -> torch.Tensor:
    """‖e_i − e_j‖₂ for all pairs; clamped before the square root so the gradient stays finite (diagonal unused)."""
    sq = e.pow(2).sum(1)
    return (sq[:, None] + sq[None, :] - 2 * e @ e.t()).clamp_min(1e-12).sqrt()


def rkd_distance_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Distance-wise RKD: Huber(ψ_D(s_i, s_j), ψ_D(t_i, t_j)), ψ_D = ‖e_i − e_j‖₂ / μ, μ the mean off-diagonal distance."""
    s, t = student.flatten(1), teacher.detach().flatten(1)
    n = len(s)
    if n < 2:
        return s.sum() * 0
    off = ~torch.eye(n, dtype=torch.bool, device=s.device)
    ds, dt = _pairwise_distances(s), _pairwise_distances(t)
    ds = ds / ds[off].mean().clamp_min(1e-12)
    dt = dt / dt[off].mean().clamp_min(1e-12)
    return F.smooth_l1_loss(ds[off], dt[off])


def _angles(e: torch.Tensor) -> torch.Tensor:
    """cos∠(e_i, e_j, e_k) = ⟨(e_i − e_j)/‖·‖, (e_k − e_j)/‖·‖⟩ for all triplets, shape [N, N, N] indexed [j, i, k]."""
    diff = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)  # diff[j, i] = unit(e_i - e_j)
    return diff @ diff.transpose(1, 2)


def rkd_angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Angle-wise RKD: Huber(ψ_A(s_i, s_j, s_k), ψ_A(t_i, t_j, t_k)), ψ_A the cosine of the angle at e_j."""
    s, t = student.flatten(1), teacher.detach().flatten(1)
    if len(s) < 3:
        return s.sum() * 0
    return F.smooth_l1_loss(_angles(s), _angles(t))


def hint_loss(student_regressed: torch.Tensor, teacher_hint: torch.Tensor) -> torch.Tensor:
    """FitNets hint loss ½ · mean((r(v_s) − u_t)²): the student's guided layer, mapped by a regressor r, imitates the teacher's hint layer."""
    if student_regressed.shape != teacher_hint.shape:
        raise ValueError(f"hint shapes differ: regressed student {list(student_regressed.shape)} vs teacher {list(teacher_hint.shape)}")
    return 0.5 * F.mse_loss(student_regressed, teacher_hint.detach())
