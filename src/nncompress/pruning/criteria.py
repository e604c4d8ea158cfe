"""Which weights to prune: pure functions from a tensor to a boolean keep-mask (True = keep).

Magnitude pruning (Han et al., "Learning both Weights and Connections", NeurIPS 2015) removes the
weights of smallest |w|; random and largest-magnitude removal are the ablations that show the
magnitude criterion is what matters (cf. Li et al. 2017).
"""
from __future__ import annotations

import math

import torch

from nncompress.core.errors import UserError


def check_sparsity(sparsity: float, where: str = "sparsity") -> float:
    """Sparsity is the pruned fraction, in [0, 1): 1 would remove every weight."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= float(sparsity) < 1.0:
        raise UserError(f"{where} must be in [0, 1) (the fraction of weights to remove), got {sparsity!r}")
    return float(sparsity)


def check_nonnegative(value: float, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value) >= 0.0 or math.isinf(value):
        raise UserError(f"{where} must be a finite number >= 0, got {value!r}")
    return float(value)


def score_view(w: torch.Tensor) -> torch.Tensor:
    """`w` detached, in float32 (float64 stays float64) for comparisons and sums.

    A float16/bfloat16 comparison rounds the threshold to the weight's coarse grid first: with fp16
    weights `w > 0.09997` is False for w = 0.0999756 (0.09997 rounds up to it), so a weight above the
    threshold would be pruned. Scores are computed at float32 or better; the model keeps its dtype.
    """
    w = w.detach()
    return w if w.dtype in (torch.float32, torch.float64) else w.float()


def prune_count(sparsity: float, numel: int) -> int:
    """k = round(sparsity·numel), halves rounded up (Python's round() would round 2.5 to 2)."""
    return min(numel, int(math.floor(sparsity * numel + 0.5)))


def smallest_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Remove exactly the k lowest scores; among equal scores the lower flat index is removed first."""
    if not 0 <= k <= scores.numel():
        raise UserError(f"cannot remove {k} of {scores.numel()} entries")
    order = torch.argsort(scores.detach().flatten(), stable=True)
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    keep[order[:k]] = False
    return keep.view_as(scores)


def magnitude_threshold_mask(w: torch.Tensor, threshold: float) -> torch.Tensor:
    """Keep |w| > threshold (an entry equal to the threshold is pruned)."""
    threshold = check_nonnegative(threshold, "threshold")
    return score_view(w).abs() > threshold


def level_mask(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Remove exactly round(sparsity·numel) entries of smallest |w|; ties: lower flat index removed first."""
    sparsity = check_sparsity(sparsity)
    return smallest_k_mask(score_view(w).abs(), prune_count(sparsity, w.numel()))


def sensitivity_threshold(w: torch.Tensor, s: float) -> float:
    """Han et al. (2015): threshold = s·σ(w), σ over all entries of the layer's dense weight tensor.

    σ is the population standard deviation (divide by N, `correction=0`): the layer's weights are the
    whole population, not a sample. For w = [1, 2, 3, 4]: σ = sqrt(5/4) ≈ 1.1180.
    """
    s = check_nonnegative(s, "sensitivity s")
    return s * float(w.detach().double().std(correction=0)) if w.numel() > 1 else 0.0


def sensitivity_mask(w: torch.Tensor, s: float) -> torch.Tensor:
    """Keep |w| > s·σ(w) (see `sensitivity_threshold`)."""
    return magnitude_threshold_mask(w, sensitivity_threshold(w, s))


def random_mask(w: torch.Tensor, sparsity: float, seed: int = 0) -> torch.Tensor:
    """Ablation: remove exactly round(sparsity·numel) entries chosen uniformly at random (seeded)."""
    sparsity = check_sparsity(sparsity)
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(w.shape, generator=g).to(w.device)
    return smallest_k_mask(scores, prune_count(sparsity, w.numel()))


def largest_magnitude_mask(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Ablation: remove the round(sparsity·numel) entries of *largest* |w| (the opposite of magnitude pruning)."""
    sparsity = check_sparsity(sparsity)
    return smallest_k_mask(-score_view(w).abs(), prune_count(sparsity, w.numel()))
