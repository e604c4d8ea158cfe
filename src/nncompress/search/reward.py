"""The platform-aware reward of MnasNet (Tan et al., CVPR 2019, eq. 2):

    reward(m) = ACC(m) · (LAT(m) / T)^w,   w = α if LAT(m) ≤ T else β.

With α = β = −0.07 (the paper's soft constraint) a model twice as fast as another scores 5% higher at equal
accuracy, on either side of the target T; α = 0, β = −1 makes T a hard budget.
"""
from __future__ import annotations


def latency_reward(acc: float, latency_ms: float, target_ms: float, alpha: float = -0.07, beta: float = -0.07) -> float:
    """ACC · (LAT/T)^w with w = α when LAT ≤ T and β otherwise (MnasNet)."""
    if latency_ms <= 0 or target_ms <= 0:
        raise ValueError(f"latency and target must be positive, got {latency_ms} and {target_ms}")
    w = alpha if latency_ms <= target_ms else beta
    return acc * (latency_ms / target_ms) ** w
