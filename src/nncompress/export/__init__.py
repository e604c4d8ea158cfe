"""Exports: the .nnc container for a pruned + weight-shared model (more formats live beside it)."""
from nncompress.export.nnc import best_gap_bits, compress_model, decompress_model, load_nnc_into, model_from_nnc
from nncompress.export.onnx import compare_with_torch, export_onnx, onnx_latency_ms, run_onnx, to_onnx
from nncompress.export.torch_export import export_program, save_program

__all__ = ["best_gap_bits", "compare_with_torch", "compress_model", "decompress_model", "export_onnx", "export_program", "load_nnc_into",
           "model_from_nnc",
           "onnx_latency_ms", "run_onnx", "save_program", "to_onnx"]

from nncompress.export.nnc import estimate_layer_bytes, gap_histograms, load_into, save_compressed  # noqa: E402  streaming (issue 16)

__all__ += ["estimate_layer_bytes", "gap_histograms", "load_into", "save_compressed"]
