"""Platform-aware architecture search (MnasNet reward, random and evolutionary strategies, Pareto front) and
early exit (exit branches, joint training, calibrated confidence thresholds)."""
from nncompress.search.early_exit import (
    EarlyExitNet, ExitHead, ExitLoss, calibrate_thresholds, early_exit_report, run_early_exit, simulate_exits,
    thresholds_for_budget, to_sequential, tradeoff_curve,
)
from nncompress.search.evaluator import Candidate, Evaluator
from nncompress.search.pareto import pareto_front, plot_pareto
from nncompress.search.platform_search import run_search, validation_split
from nncompress.search.reward import energy_reward, latency_reward
from nncompress.search.space import Arch, MobileNetSpace, SearchNet
from nncompress.search.strategies import ReinforceController, evolutionary_search, random_search, reinforce_search

__all__ = [
    "ReinforceController",
    "reinforce_search",
    "Arch", "Candidate", "EarlyExitNet", "Evaluator", "ExitHead", "ExitLoss", "MobileNetSpace", "SearchNet",
    "calibrate_thresholds", "early_exit_report", "energy_reward", "evolutionary_search", "latency_reward", "pareto_front",
    "plot_pareto", "random_search", "run_early_exit", "run_search", "simulate_exits", "thresholds_for_budget", "to_sequential",
    "tradeoff_curve", "validation_split",
]

# conditional computation: coarse-to-fine cascade (Sun et al. 2013), SBNet sparse blocks (Ren et al. 2018), selective attention
from nncompress.search.cascade import (
    CascadeLevel, LevelSpec, LocalizationCascade, PointRegressor, cascade_experiment, localization_error_px, train_cascade,
    train_crop_classifier,
)
from nncompress.search.sbnet import (
    ForegroundMask, SBNetConv2d, SparseBlockConv2d, block_macs, reduce_mask, sbnet_experiment, sparse_gather, sparse_scatter,
)
from nncompress.search.selective_attention import SelectiveAttention, lenet5_macs, selective_attention_experiment

__all__ += [
    "CascadeLevel", "LevelSpec", "LocalizationCascade", "PointRegressor", "cascade_experiment", "localization_error_px",
    "train_cascade", "train_crop_classifier",
    "ForegroundMask", "SBNetConv2d", "SparseBlockConv2d", "block_macs", "reduce_mask", "sbnet_experiment", "sparse_gather",
    "sparse_scatter",
    "SelectiveAttention", "lenet5_macs", "selective_attention_experiment",
]
