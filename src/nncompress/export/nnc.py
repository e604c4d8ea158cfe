"""A weight-shared torch model ↔ the .nnc container (Deep Compression's storage format).

Shared layers are stored as codebook + Huffman-coded indices + Huffman-coded relative positions;
every other tensor of the state dict (biases, batch norm, unshared weights) is stored raw.
Metadata records how to rebuild the module (`architectures.build_model` arguments).
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from nncompress.architectures import MODELS, build_model
from nncompress.core.errors import UserError
from nncompress.core.layers import plain_state_dict
from nncompress.encoding import CompressedModel, SharedTensor, load_nnc, size_breakdown
from nncompress.sharing import get_codebook, shared_layers

GAP_BITS_CANDIDATES = tuple(range(2, 13))


def best_gap_bits(positions: np.ndarray, codes: np.ndarray, codebook: np.ndarray, bits: int,
                  candidates: Sequence[int] = GAP_BITS_CANDIDATES) -> int:
    """The relative-index width that gives the smallest encoded layer (exact .nnc bytes, tables included).

    A narrow gap field makes short gap codes but inserts filler entries (each costs a gap and an index
    symbol); a wide one avoids fillers but has a larger alphabet. Deep Compression fixed 8 (conv) and
    5 (fc) bits; choosing per layer by the exact encoded size is never worse.
    """
    sizes = {}
    shape = (int(positions[-1]) + 1 if positions.size else 1,)
    for g in candidates:
        t = SharedTensor(shape, codebook, bits, positions, codes, int(g))
        sizes[int(g)] = size_breakdown(CompressedModel(shared={"w": t}))["total"]
    return min(sizes, key=lambda g: (sizes[g], g))


def compress_model(model: nn.Module, metadata: dict, gap_bits: int | str = "auto") -> CompressedModel:
    """Turn a model whose layers were shared by `sharing.share_weights` into a CompressedModel.

    `metadata` must hold `model`, `in_shape` and `num_classes` so `decompress_model` can rebuild it.
    """
    for key in ("model", "in_shape", "num_classes"):
        if key not in metadata:
            raise UserError(f"compress_model: metadata needs '{key}' to rebuild the model later")
    shared_names = shared_layers(model)
    if not shared_names:
        raise UserError("compress_model: no weight-shared layers; run sharing.share_weights(model) first")
    shared: dict[str, SharedTensor] = {}
    for name, module in shared_names.items():
        centroids, codes, mask = get_codebook(module)
        flat_mask = mask.reshape(-1).cpu().numpy()
        positions = np.flatnonzero(flat_mask).astype(np.int64)
        layer_codes = codes.reshape(-1).cpu().numpy()[positions].astype(np.int64)
        k = int(centroids.numel())
        bits = max(1, int(np.ceil(np.log2(max(k, 2)))))
        cb = centroids.cpu().numpy().astype(np.float32)
        g = best_gap_bits(positions, layer_codes, cb, bits) if gap_bits == "auto" else int(gap_bits)
        shared[f"{name}.weight"] = SharedTensor(tuple(mask.shape), cb,
                                                bits, positions, layer_codes, g)
    dense = {}
    for key, value in plain_state_dict(model).items():
        if key not in shared:
            dense[key] = value.detach().cpu().contiguous().numpy()
    return CompressedModel(metadata=dict(metadata), shared=shared, dense=dense)


MAX_CLASSES = 100_000
MAX_INPUT_NDIM = 4
MAX_INPUT_DIM = 16_384
MAX_INPUT_ELEMENTS = 1 << 24
MIN_ELEMENT_BUDGET = 1 << 23
"""Elements (parameters + buffers) any .nnc file may rebuild into, however small the file (32 MiB of fp32)."""
ELEMENTS_PER_FILE_BYTE = 1024
"""Beyond the minimum, a file of n bytes may rebuild at most 1024 n elements: a 4096x compression ratio
over fp32, ~100x what Deep Compression reaches; a file claiming more is crafted or damaged."""


def _int_field(meta: dict, key: str, lo: int, hi: int) -> int:
    v = meta.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= int(v) <= hi:
        raise UserError(f".nnc metadata '{key}' must be an integer in {lo}..{hi}, got {_short(v)}; was the file written by nncompress compress?")
    return int(v)


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _rebuild_args(meta: dict) -> tuple[str, tuple[int, ...], int]:
    """`build_model` arguments from the metadata, each range-checked before anything is built."""
    name = meta.get("model")
    if not isinstance(name, str) or name not in MODELS:
        raise UserError(f".nnc metadata names model {_short(name)}, which nncompress cannot build (known: {', '.join(sorted(MODELS))}); "
                        "was the file written by nncompress compress?")
    in_shape = meta.get("in_shape")
    if (not isinstance(in_shape, (list, tuple)) or not 1 <= len(in_shape) <= MAX_INPUT_NDIM
            or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and 1 <= d <= MAX_INPUT_DIM for d in in_shape)
            or int(np.prod([int(d) for d in in_shape], dtype=object)) > MAX_INPUT_ELEMENTS):
        raise UserError(f".nnc metadata 'in_shape' must be 1..{MAX_INPUT_NDIM} dims in 1..{MAX_INPUT_DIM} with at most "
                        f"{MAX_INPUT_ELEMENTS} elements, got {_short(in_shape)}; was the file written by nncompress compress?")
    return name, tuple(int(d) for d in in_shape), _int_field(meta, "num_classes", 1, MAX_CLASSES)


class _SkipInitOnMeta(TorchFunctionMode):
    """In-place ops on meta tensors (`normal_`, `kaiming_uniform_`, ...) become no-ops.

    Initialising a meta tensor computes nothing, but goes through torch._refs, whose first use
    imports torch._dynamo (over a second); shapes and dtypes are all a skeleton model is for.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name.endswith("_") and not name.endswith("__"):
            target = args[0] if args else kwargs.get("tensor", kwargs.get("self"))
            if isinstance(target, torch.Tensor) and target.is_meta:
                return target
        return func(*args, **kwargs)


def _build(name: str, in_shape: tuple[int, ...], num_classes: int, meta: bool = False) -> nn.Module:
    try:
        if not meta:
            return build_model(name, in_shape, num_classes)
        with torch.device("meta"), _SkipInitOnMeta():
            return build_model(name, in_shape, num_classes)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to build from the file's metadata is the file's fault
        first = (str(e).splitlines() or [""])[0][:200]
        raise UserError(f".nnc metadata cannot rebuild '{name}' for in_shape {list(in_shape)} and {num_classes} classes "
                        f"({type(e).__name__}: {first}); was the file written by nncompress compress?") from None


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def model_from_nnc(cm: CompressedModel) -> nn.Module:
    """Rebuild the nn.Module a CompressedModel describes, with the decoded weights loaded.

    Nothing the file claims is trusted before it is checked: the metadata's ranges, then (on a model
    built on the meta device, which allocates nothing) every tensor's name, shape and dtype against
    the model's own, then the model's size against the file's size; only then is the real model
    built and each tensor decoded. Raises UserError with one line on any mismatch.
    """
    meta = cm.metadata if isinstance(cm.metadata, dict) else {}
    name, in_shape, num_classes = _rebuild_args(meta)
    expected = _build(name, in_shape, num_classes, meta=True).state_dict()  # shapes and dtypes only
    what = f"model '{name}' (in_shape {list(in_shape)}, {num_classes} classes)"
    names = set(cm.shared) | set(cm.dense)
    missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
    if missing or extra:
        raise UserError(f".nnc tensors do not match {what}: missing {missing[:5]}, unexpected {extra[:5]}")
    for key, t in cm.shared.items():
        want = expected[key]
        if tuple(t.shape) != tuple(want.shape):
            raise UserError(f".nnc tensor {key} has shape {list(t.shape)}, {what} expects {list(want.shape)}")
        if not want.dtype.is_floating_point:
            raise UserError(f".nnc tensor {key} is weight-shared (float32), but {what} stores it as {_dtype_name(want.dtype)}")
    for key, a in cm.dense.items():
        want = expected[key]
        if tuple(a.shape) != tuple(want.shape):
            raise UserError(f".nnc tensor {key} has shape {list(a.shape)}, {what} expects {list(want.shape)}")
        if np.dtype(a.dtype).name != _dtype_name(want.dtype):
            raise UserError(f".nnc tensor {key} is stored as {np.dtype(a.dtype).name}, {what} expects {_dtype_name(want.dtype)}")
    total = sum(int(v.numel()) for v in expected.values())
    if cm.source_bytes is not None:
        budget = max(MIN_ELEMENT_BUDGET, ELEMENTS_PER_FILE_BYTE * int(cm.source_bytes))
        if total > budget:
            raise UserError(f".nnc file of {cm.source_bytes} bytes claims {what} with {total} elements, beyond the "
                            f"{budget} such a file can hold ({ELEMENTS_PER_FILE_BYTE} per byte); the file is damaged or crafted")
    model = _build(name, in_shape, num_classes)
    target = model.state_dict()
    with torch.no_grad():
        for key, t in cm.shared.items():
            target[key].copy_(torch.from_numpy(t.to_dense()))
        for key, a in cm.dense.items():
            target[key].copy_(torch.from_numpy(np.array(a, copy=True)))
    return model.eval()


def decompress_model(path: str | os.PathLike, *, allow_nonfinite: bool = False) -> tuple[nn.Module, dict]:
    """Read a .nnc file (bounds-checked, checksummed, no pickle) and rebuild the model; returns (model, metadata).

    NaN or infinite weights are refused unless `allow_nonfinite` (see `encoding.read_nnc`).
    """
    cm = load_nnc(path, allow_nonfinite=allow_nonfinite)
    return model_from_nnc(cm), cm.metadata
