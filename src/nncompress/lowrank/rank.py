"""Choosing ranks: by explained energy, by a cost budget, or by empirical variational Bayes (EVBMF).

Explained energy of a rank-r approximation = 1 − ‖W − W_r‖²_F / ‖W‖²_F, which for a truncated SVD is
Σ_{i≤r} s_i² / Σ_i s_i².
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from nncompress.core.errors import UserError


def energy_rank(singular_values: torch.Tensor, energy: float) -> int:
    """Smallest r with Σ_{i≤r} s_i² ≥ energy · Σ_i s_i² (singular values in descending order)."""
    if not 0.0 < energy <= 1.0:
        raise UserError(f"energy must be in (0, 1] (fraction of Σs² kept), got {energy}")
    s2 = singular_values.detach().double().pow(2)
    total = float(s2.sum())
    if total == 0.0:
        return 1
    cum = torch.cumsum(s2, 0) / total
    return min(int(torch.searchsorted(cum, torch.tensor(energy - 1e-12, dtype=cum.dtype))) + 1, len(s2))


def budget_rank(cost: Callable[[int], float], budget: float, max_rank: int) -> int:
    """Largest r in [1, max_rank] with cost(r) ≤ budget (cost increasing in r); 1 if even rank 1 is over budget."""
    lo, hi = 1, max_rank
    if cost(lo) > budget:
        return 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cost(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def unfold(weight: torch.Tensor, mode: int) -> torch.Tensor:
    """Mode-n unfolding: rows indexed by dimension `mode`, columns by all the others."""
    return weight.movedim(mode, 0).reshape(weight.shape[mode], -1)


def evbmf_rank(matrix: torch.Tensor) -> int:
    """Rank of the empirical VB matrix factorization (Nakajima, Sugiyama, Babacan, Tomioka 2013, JMLR 14,
    "Global analytic solution of fully-observed variational Bayesian matrix factorization").

    With Y = L×M (L ≤ M), α = L/M and singular values γ_h, EVB keeps component h iff
    γ_h > σ·sqrt(M·(1 + τ̄)(1 + α/τ̄)), τ̄ ≈ 2.5129·sqrt(α). The noise variance σ² is unknown and is chosen
    to minimize the EVB free energy, which the paper gives in closed form as a function of σ².
    """
    y = matrix.detach().double()
    if y.dim() != 2 or min(y.shape) < 2:
        return 1
    if y.shape[0] > y.shape[1]:
        y = y.t()
    L, M = y.shape
    s = torch.linalg.svdvals(y).numpy()
    alpha = L / M
    tau_bar = 2.5129 * math.sqrt(alpha)
    x_bar = (1 + tau_bar) * (1 + alpha / tau_bar)

    def free_energy(sigma2: float) -> float:
        x = s**2 / (M * sigma2)
        kept, dropped = x[x > x_bar], x[x <= x_bar]
        tau = 0.5 * (kept - (1 + alpha) + np.sqrt((kept - (1 + alpha)) ** 2 - 4 * alpha))
        return float(np.sum(dropped - np.log(np.maximum(dropped, 1e-300)))
                     + np.sum(kept - tau + np.log((tau + 1) / kept) + alpha * np.log(tau / alpha + 1)))

    # search interval for σ² (paper, §3): at most h_max components can be signal
    h_max = min(math.ceil(L / (1 + alpha)) - 1, L) - 1
    upper = float(np.sum(s**2) / (L * M))
    lower = max(float(s[h_max + 1] ** 2 / (M * x_bar)), float(np.mean(s[h_max + 1:] ** 2) / M))
    if not upper > lower > 0:
        return 1
    sigma2 = minimize_scalar(free_energy, bounds=(lower, upper), method="bounded").x
    return max(1, int(np.sum(s > math.sqrt(M * sigma2 * x_bar))))
