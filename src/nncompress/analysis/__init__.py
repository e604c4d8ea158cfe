"""Measure a model: parameters, non-zeros, sparsity, MACs, storage bytes per format, latency, energy estimate."""
from nncompress.analysis.counts import LayerCounts, ModelCounts, count_layer, count_parameters, nnz, sparsity, weight_layers
from nncompress.analysis.energy import MAC_COSTS_PJ, EnergyEstimate, estimate_energy_pj, layer_energy_pj
from nncompress.analysis.latency import (
    LatencyResult,
    measure_callable_ms,
    measure_interleaved_ms,
    measure_latency_ms,
    measure_pair_ms,
    num_threads,
)
from nncompress.analysis.macs import LayerMacs, MacsReport, count_macs, module_macs
from nncompress.analysis.report import LayerRow, ModelAnalysis, analyze, sparsity_bar_plot, weight_histogram
from nncompress.analysis.storage import (
    coo_bytes,
    csc_bytes,
    csr_bytes,
    dense_bytes,
    index_bits_for,
    layer_storage,
    matrix_shape,
)

__all__ = [
    "EnergyEstimate",
    "MAC_COSTS_PJ",
    "LatencyResult",
    "LayerCounts",
    "LayerMacs",
    "LayerRow",
    "MacsReport",
    "ModelAnalysis",
    "ModelCounts",
    "analyze",
    "coo_bytes",
    "count_layer",
    "count_macs",
    "count_parameters",
    "csc_bytes",
    "csr_bytes",
    "dense_bytes",
    "estimate_energy_pj",
    "index_bits_for",
    "layer_energy_pj",
    "layer_storage",
    "matrix_shape",
    "measure_callable_ms",
    "measure_interleaved_ms",
    "measure_latency_ms",
    "measure_pair_ms",
    "module_macs",
    "nnz",
    "num_threads",
    "sparsity",
    "sparsity_bar_plot",
    "weight_histogram",
    "weight_layers",
]
