"""Unstructured pruning: masks (parametrizations), criteria, one-shot pruners, schedules, sensitivity.

Beyond magnitude: data-driven element scores (taylor, obd, snip, apoz) and data-free synflow in saliency.py;
kernel / vector / block granularity and `ScorePruner` (any criterion at any granularity) in granularity.py.

    from nncompress.pruning import LevelPruner, finalize
    LevelPruner(0.92, scope="global").prune(model)   # masks attached; fine-tune with them on
    finalize(model)                                   # bake weight·mask into plain weights
"""
from nncompress.pruning.criteria import (
    largest_magnitude_mask,
    level_mask,
    magnitude_threshold_mask,
    random_mask,
    sensitivity_mask,
    sensitivity_threshold,
    smallest_k_mask,
)
from nncompress.pruning.granularity import (
    GRANULARITIES,
    ScorePruner,
    block_mask,
    group_ids,
    group_mask,
    kernel_mask,
    vector_mask,
)
from nncompress.pruning.mask import (
    Mask,
    apply_mask,
    apply_shared_mask,
    dense_tensor,
    finalize,
    get_mask,
    load_masked_state_dict,
    load_masks,
    mask_state_dict,
    masked_layers,
    remove_mask,
)
from nncompress.pruning.pruners import LevelPruner, MagnitudePruner, SensitivityPruner, level_prune_inplace, resolve_layers
from nncompress.pruning.rnn import RNNPruner, rnn_layers, rnn_sparsity
from nncompress.pruning.saliency import (
    apoz,
    apoz_scores,
    obd_scores,
    snip_scores,
    synflow_scores,
    taylor_scores,
)
from nncompress.pruning.schedules import AGPPruner, SplicingPruner, agp_sparsity, iterative_prune
from nncompress.pruning.sensitivity import DEFAULT_LEVELS, SensitivityResult, sensitivity_analysis, sensitivity_to_s

__all__ = [
    "AGPPruner",
    "DEFAULT_LEVELS",
    "GRANULARITIES",
    "LevelPruner",
    "MagnitudePruner",
    "Mask",
    "RNNPruner",
    "ScorePruner",
    "SensitivityPruner",
    "SensitivityResult",
    "SplicingPruner",
    "agp_sparsity",
    "apoz",
    "apoz_scores",
    "apply_mask",
    "apply_shared_mask",
    "block_mask",
    "dense_tensor",
    "finalize",
    "get_mask",
    "group_ids",
    "group_mask",
    "iterative_prune",
    "kernel_mask",
    "largest_magnitude_mask",
    "level_mask",
    "load_masked_state_dict",
    "load_masks",
    "magnitude_threshold_mask",
    "mask_state_dict",
    "masked_layers",
    "obd_scores",
    "random_mask",
    "remove_mask",
    "resolve_layers",
    "rnn_layers",
    "rnn_sparsity",
    "sensitivity_analysis",
    "sensitivity_to_s",
    "sensitivity_mask",
    "sensitivity_threshold",
    "smallest_k_mask",
    "snip_scores",
    "synflow_scores",
    "taylor_scores",
    "vector_mask",
]
from nncompress.pruning.sparsegpt import sparsegpt, sparsegpt_prune_weight  # noqa: E402  SparseGPT (issue 15)
from nncompress.pruning.wanda import magnitude_prune_llm, score_mask, wanda_prune, wanda_scores  # noqa: E402  Wanda (issue 15)

__all__ += ["magnitude_prune_llm", "score_mask", "sparsegpt", "sparsegpt_prune_weight", "wanda_prune", "wanda_scores"]
__all__ += ["level_prune_inplace"]
