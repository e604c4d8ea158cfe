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


RESOURCES = ("latency", "energy")


def energy_reward(acc: float, energy_pj: float, target_pj: float, alpha: float = -0.07, beta: float = -0.07) -> float:
    """ACC · (E/E_target)^w with w = α when E ≤ E_target and β otherwise: MnasNet's reward with the analysis
    package's energy estimate (Horowitz ISSCC 2014, 45 nm costs; see analysis/energy.py) as the platform
    resource instead of measured latency, as energy-aware search (e.g. Yang et al., "Designing energy-efficient
    CNNs using energy-aware pruning", CVPR 2017) targets a battery budget rather than a time budget."""
    if energy_pj <= 0 or target_pj <= 0:
        raise ValueError(f"energy and target must be positive, got {energy_pj} and {target_pj}")
    w = alpha if energy_pj <= target_pj else beta
    return acc * (energy_pj / target_pj) ** w
