"""Structured pruning: remove whole channels and filters so the network becomes physically smaller and faster."""
from nncompress.pruning.structured.criteria import CRITERIA, channel_scores
from nncompress.pruning.structured.dead import remove_dead_channels
from nncompress.pruning.structured.graph import ChannelGroup, DependencyGraph, build_dependency_graph
from nncompress.pruning.structured.measure import count_macs, count_params, latency_ms
from nncompress.pruning.structured.prune import channels_to_remove, n_keep, prune_channels
from nncompress.pruning.structured.thin import remove_channels, resize_to_state_dict

__all__ = [
    "CRITERIA",
    "ChannelGroup",
    "DependencyGraph",
    "build_dependency_graph",
    "channel_scores",
    "channels_to_remove",
    "count_macs",
    "count_params",
    "latency_ms",
    "n_keep",
    "prune_channels",
    "remove_channels",
    "remove_dead_channels",
    "resize_to_state_dict",
]
