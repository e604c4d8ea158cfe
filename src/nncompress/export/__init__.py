"""Exports: the .nnc container for a pruned + weight-shared model (more formats live beside it)."""
from nncompress.export.nnc import best_gap_bits, compress_model, decompress_model, model_from_nnc

__all__ = ["best_gap_bits", "compress_model", "decompress_model", "model_from_nnc"]
