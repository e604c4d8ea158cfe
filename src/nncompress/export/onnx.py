"""ONNX export checked end to end: `onnx.checker`, then ONNX Runtime's output against PyTorch's.

Float models go through PyTorch's TorchScript-based exporter (no onnxscript needed) with a dynamic batch
axis; masks and weight-sharing parametrizations are baked in first. Quantized graphs (from
`quantize_static` or `convert_qat`) are written in QDQ form by `quantization.onnx_qdq`, which ORT runs
on its int8 kernels.
"""
from __future__ import annotations

import copy
import io
import os
import statistics
import time
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from torch.nn.utils import parametrize

from nncompress.core.errors import UserError
from nncompress.core.io import atomic_write_bytes
from nncompress.core.model_io import call_model

OPSET = 17


def _plain_copy(model: nn.Module) -> nn.Module:
    """A copy with every parametrization (pruning mask, shared codebook) baked into a plain tensor.

    `remove_parametrizations` on a deepcopy would edit the parametrized class the original shares, so the
    copy's modules get their original class back and plain Parameters holding the computed tensors."""
    plain = copy.deepcopy(model).eval()
    originals = dict(model.named_modules())
    with torch.no_grad():
        for name, m in list(plain.named_modules()):
            if parametrize.is_parametrized(m):
                tensors = {t: getattr(originals[name], t).detach().clone() for t in m.parametrizations}
                m.__class__ = type(m).__bases__[0]  # parametrize injected a subclass of the original class
                del m._modules["parametrizations"]
                for t, value in tensors.items():
                    m.register_parameter(t, nn.Parameter(value))
    return plain


def is_quantized(model: nn.Module) -> bool:
    cfg = getattr(model, "quant_config", None)
    return cfg is not None and cfg.mode in ("static", "qat")


class _KeywordInputs(nn.Module):
    """An ONNX graph's inputs are positional; this passes them to `model` as keyword arguments named `keys` (a
    tokenizer's input_ids, attention_mask, ...) and returns the logits (`model_io.call_model`: a Hugging Face
    ModelOutput gives its `logits`), so the graph has one output whatever the model returns."""

    def __init__(self, model: nn.Module, keys: list[str]):
        super().__init__()
        self.model, self.keys = model, list(keys)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return call_model(self.model, dict(zip(self.keys, tensors)))


def _keyword_export_args(model: nn.Module, example: Mapping) -> tuple[nn.Module, tuple, list[str], dict]:
    """(wrapped model, positional example, input names, dynamic axes) for keyword inputs: names are the keys; dim 0
    is the batch everywhere and, when token ids (integer rank-2 tensors) are among the inputs, dim 1 of every
    rank-2 input is the sequence, so one file serves any batch size and text length. Token ids stay int64."""
    keys = [k for k, v in example.items() if isinstance(v, torch.Tensor)]
    if not keys:
        raise UserError("ONNX export: the example inputs hold no tensor; pass the tokenizer's output (input_ids, ...)")
    if len(keys) != len(example):
        raise UserError(f"ONNX export: every keyword input must be a tensor, got {', '.join(k for k in example if k not in keys)}")
    tokens = any(v.dim() == 2 and not v.is_floating_point() for v in example.values())
    axes = {k: ({0: "batch", 1: "sequence"} if tokens and v.dim() == 2 else {0: "batch"}) for k, v in example.items()}
    axes["logits"] = {0: "batch"}
    return _KeywordInputs(model, keys), tuple(example[k] for k in keys), keys, axes


def to_onnx(model: nn.Module, example_input: torch.Tensor | Mapping[str, torch.Tensor], opset: int = OPSET) -> bytes:
    """Serialized, checker-validated ONNX: QDQ for a quantized graph, plain float ops otherwise.

    `example_input` is one tensor (graph input "input", output "output", dynamic batch) or a dict of keyword
    inputs such as a tokenizer's output (graph inputs named by the keys, output "logits", dynamic batch and
    sequence axes; see `_keyword_export_args`). A model quantized by module swap (`quantize_`) goes to
    `quantization.onnx_swap.to_onnx_int8` (integer ONNX operators with its own codes and scales)."""
    from nncompress.quantization.onnx_swap import is_swap_quantized, to_onnx_int8

    if is_swap_quantized(model):
        return to_onnx_int8(model, example_input, opset=opset)
    if is_quantized(model):
        from nncompress.quantization.onnx_qdq import to_onnx_qdq

        return to_onnx_qdq(model, example_input)
    net, buf = _plain_copy(model), io.BytesIO()
    if isinstance(example_input, Mapping):
        net, args, names, axes = _keyword_export_args(net, example_input)
        outputs = ["logits"]
    else:
        args, names, outputs, axes = (example_input,), ["input"], ["output"], {"input": {0: "batch"}, "output": {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        try:
            torch.onnx.export(net, args, buf, dynamo=False, opset_version=opset, input_names=names,
                              output_names=outputs, dynamic_axes=axes)
        except Exception as e:  # noqa: BLE001 - the exporter raises many types; say which module failed
            raise UserError(f"ONNX export of {type(model).__name__} failed: {str(e).splitlines()[0][:300]}") from None
    proto = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: str | os.PathLike, opset: int = OPSET) -> Path:
    """Write `to_onnx` atomically to `path`; returns the path."""
    return atomic_write_bytes(path, to_onnx(model, example_input, opset))


def ort_session(model: bytes | str | os.PathLike, threads: int = 1):
    """An ONNX Runtime CPU session with all graph optimizations (QDQ → int8 kernels) and fixed threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def _feed(sess, x) -> dict[str, np.ndarray]:
    """ORT's input dict: one float tensor for the graph's first input, or keyword inputs by name (dtypes kept:
    token ids stay int64)."""
    if isinstance(x, Mapping):
        names = [i.name for i in sess.get_inputs()]
        missing = [n for n in names if n not in x]
        if missing:
            raise UserError(f"ONNX model needs inputs {names}; missing {missing}")
        return {n: (x[n].detach().cpu().numpy() if isinstance(x[n], torch.Tensor) else np.asarray(x[n])) for n in names}
    x = x.detach().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float32)
    return {sess.get_inputs()[0].name: x}


def run_onnx(model: bytes | str | os.PathLike, x: torch.Tensor | np.ndarray | Mapping, threads: int = 1) -> np.ndarray:
    """Outputs of the ONNX model on x (a tensor, or a dict of keyword inputs), computed by ONNX Runtime."""
    sess = ort_session(model, threads)
    return sess.run(None, _feed(sess, x))[0]


def compare_with_torch(model: nn.Module, onnx_model: bytes | str | os.PathLike, x: torch.Tensor | Mapping) -> dict[str, float]:
    """How far ORT's outputs are from PyTorch's on x: max |Δ|, max |Δ| / max |y|, and top-1 agreement in %."""
    with torch.no_grad():
        ref = call_model(model.eval(), dict(x) if isinstance(x, Mapping) else x).float().numpy()
    out = run_onnx(onnx_model, x)
    diff = float(np.abs(out - ref).max())
    return {"max_abs_error": diff, "max_rel_error": diff / max(float(np.abs(ref).max()), 1e-12),
            "top1_agreement": 100.0 * float((out.argmax(1) == ref.argmax(1)).mean())}


def onnx_latency_ms(onnx_model: bytes | str | os.PathLike, x: torch.Tensor, threads: int = 1, repeats: int = 50,
                    warmup: int = 5) -> float:
    """Median wall time of one ORT run on x, in milliseconds."""
    sess = ort_session(onnx_model, threads)
    feed = _feed(sess, x)
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def export_report(model_name: str, data: str, weights: str | os.PathLike | None, out: str | os.PathLike, *,
                  int8: bool = False, threads: int = 1, calibration_batches: int = 8, seed: int = 0) -> dict:
    """One call behind `nncompress export`: build the model (with weights), optionally quantize it to int8
    (static, per channel), export, and report checker-valid bytes, ORT-vs-PyTorch error, ORT top-1 and latency."""
    from nncompress.architectures import build_model
    from nncompress.core.io import load_weights
    from nncompress.data import load_dataset, make_loaders

    torch.set_num_threads(threads)
    ds = load_dataset(data, seed=seed)
    net = build_model(model_name, ds.input_shape, ds.num_classes)
    if weights is not None:
        from nncompress.pruning import load_masked_state_dict

        state = load_weights(weights)
        if any(k in state and state[k].shape != v.shape for k, v in net.state_dict().items()):  # thinned by channel removal
            from nncompress.pruning.structured import resize_to_state_dict

            resize_to_state_dict(net, state)
        load_masked_state_dict(net, state)
    net.eval()
    train_loader, _ = make_loaders(ds, seed=seed)
    if int8:
        from nncompress.quantization import quantize_static

        net = quantize_static(_plain_copy(net), [x for x, _ in list(train_loader)[:calibration_batches]], bits=8)
    x = ds.x_test[:1]
    blob = to_onnx(net, x)
    atomic_write_bytes(out, blob)
    cmp = compare_with_torch(net, blob, ds.x_test[:256])
    ort_top1 = 100.0 * float((run_onnx(blob, ds.x_test).argmax(1) == ds.y_test.numpy()).mean())
    return {"path": str(out), "model": model_name, "int8": int8, "onnx_bytes": len(blob), **cmp, "ort_top1": ort_top1,
            "ort_latency_ms": onnx_latency_ms(blob, x, threads), "threads": threads}
