"""Structured pruning: remove whole channels and filters so the network becomes physically smaller and faster.

    from nncompress.pruning.structured import prune_channels
    small = prune_channels(model, example_input, criterion="l1", remove_macs=0.5)   # a thinner dense nn.Module

Pieces: `build_dependency_graph` (coupled channel groups via torch.fx), `channel_scores` (criteria),
`remove_channels` (thinning), `remove_dead_channels`, `structured_sensitivity`, `StructuredRegularizer`
(group lasso, BN-L1), N:M masks (`nm_mask`, `apply_nm_sparsity`), and `netadapt` (measured-latency budget).
"""
from nncompress.pruning.structured.criteria import CRITERIA, channel_scores
from nncompress.pruning.structured.dead import remove_dead_channels
from nncompress.pruning.structured.graph import ChannelGroup, DependencyGraph, build_dependency_graph
from nncompress.pruning.structured.measure import count_macs, count_params, latency_ms
from nncompress.pruning.structured.netadapt import LatencyTable, NetAdaptResult, netadapt
from nncompress.pruning.structured.nm import apply_nm_sparsity, is_nm_sparse, nm_mask, to_semi_structured
from nncompress.pruning.structured.prune import channels_to_remove, n_keep, prune_channels
from nncompress.pruning.structured.regularizers import StructuredRegularizer, bn_l1, group_lasso
from nncompress.pruning.structured.sensitivity import ratios_from_sensitivity, structured_sensitivity
from nncompress.pruning.structured.thin import remove_channels, resize_to_state_dict

__all__ = [
    "CRITERIA",
    "ChannelGroup",
    "DependencyGraph",
    "LatencyTable",
    "NetAdaptResult",
    "StructuredRegularizer",
    "apply_nm_sparsity",
    "bn_l1",
    "build_dependency_graph",
    "channel_scores",
    "channels_to_remove",
    "count_macs",
    "count_params",
    "group_lasso",
    "is_nm_sparse",
    "latency_ms",
    "n_keep",
    "netadapt",
    "nm_mask",
    "prune_channels",
    "ratios_from_sensitivity",
    "remove_channels",
    "remove_dead_channels",
    "resize_to_state_dict",
    "structured_sensitivity",
    "to_semi_structured",
]

from nncompress.pruning.structured.heads import (  # noqa: E402  transformer heads / FFN / layers (issues 13, 15)
    apply_structure,
    attention_blocks,
    ffn_blocks,
    load_pruned_pretrained,
    prune_ffn,
    prune_heads,
    prune_transformer,
    remove_layers,
    transformer_macs,
)

__all__ += ["apply_structure", "attention_blocks", "ffn_blocks", "load_pruned_pretrained", "prune_ffn", "prune_heads",
            "prune_transformer", "remove_layers", "transformer_macs"]
