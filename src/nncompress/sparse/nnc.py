"""Load a .nnc file straight into sparse layers, never building a dense weight.

A .nnc file already stores a pruned, weight-shared tensor sparsely: the flat positions of the kept weights
and, per position, a codebook index. Decoding it to a dense array (`SharedTensor.to_dense`, what
`export.nnc.decompress_model` does) and then pruning the zeros away again wastes the memory of the dense
weight, ~400 MB for VGG16's fc6. Here positions become CSR row/column indices directly (row = position //
columns, column = position % columns; positions are strictly increasing, so entries arrive in row-major CSR
order) and values are `codebook[codes]`. The file is read through the container's streaming `open_nnc`: every
record's header is checked against the model first, then tensors are decoded one at a time, each shared one
turned into CSR arrays (int64 row pointers and columns, float32 values) before the next is decoded, so no
dense weight and no second copy of the positions/codes of the whole model is ever held.
"""
from __future__ import annotations

import os
import warnings
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from nncompress.architectures import MODELS, build_model
from nncompress.core.errors import UserError
from nncompress.encoding import SharedTensor, open_nnc
from nncompress.sparse import kernel as _kernel
from nncompress.sparse.modules import SparseConv2d, SparseLinear, check_format


class _CSRSource(NamedTuple):
    """A decoded shared tensor as CSR arrays: what replaces its positions and codes once decoded."""

    crow: torch.Tensor
    col: torch.Tensor
    values: torch.Tensor
    shape: tuple[int, ...]


def csr_from_shared(t: SharedTensor, shape: tuple[int, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]]:
    """(crow int64, col int64, values float32, (rows, cols)) of a SharedTensor viewed as a 2-D matrix.

    `shape` defaults to `t.shape`; a tensor with more than two dims (a conv weight) is viewed as
    (shape[0], prod(shape[1:])), the im2col layout `SparseConv2d` multiplies by.
    """
    shape = tuple(int(d) for d in (t.shape if shape is None else shape))
    if len(shape) < 1 or any(d < 0 for d in shape):
        raise UserError(f"sparse_from_shared: shape must have at least one non-negative dim, got {list(shape)}")
    rows = shape[0]
    cols = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    positions = np.asarray(t.positions, dtype=np.int64).reshape(-1)
    codes = np.asarray(t.codes, dtype=np.int64).reshape(-1)
    codebook = np.asarray(t.codebook, dtype=np.float32).reshape(-1)
    if positions.size != codes.size:
        raise UserError(f"sparse_from_shared: {positions.size} positions but {codes.size} codes")
    if positions.size:
        if positions[0] < 0 or positions[-1] >= rows * cols or np.any(np.diff(positions) <= 0):
            raise UserError(f"sparse_from_shared: positions must be strictly increasing flat indices in 0..{rows * cols - 1}")
        if codes.min() < 0 or codes.max() >= codebook.size:
            raise UserError(f"sparse_from_shared: codes must index the {codebook.size}-entry codebook")
    row_idx = positions // max(cols, 1)
    crow = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(row_idx, minlength=rows), out=crow[1:])
    values = codebook[codes]
    return (torch.from_numpy(crow), torch.from_numpy(positions % max(cols, 1)), torch.from_numpy(np.ascontiguousarray(values)),
            (rows, cols))


def sparse_from_shared(t: SharedTensor, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """A `torch.sparse_csr_tensor` equal to `t.to_dense()` (viewed 2-D), built without the dense array."""
    crow, col, values, shape2 = csr_from_shared(t, shape)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Sparse (CSR|invariant)", category=UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, shape2)


def _default_format() -> str:
    return "kernel" if _kernel.load() is not None else "scipy"


def _skeleton(meta: dict) -> nn.Module:
    name, in_shape, num_classes = meta.get("model"), meta.get("in_shape"), meta.get("num_classes")
    if not isinstance(name, str) or name not in MODELS:
        raise UserError(f".nnc metadata names model {name!r}, which nncompress cannot build; pass the model yourself")
    if (not isinstance(in_shape, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in in_shape)
            or isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1):
        raise UserError(f".nnc metadata in_shape={in_shape!r} / num_classes={num_classes!r} cannot rebuild '{name}'")
    try:
        with torch.device("meta"):  # shapes only: every tensor is then assigned from the file or replaced
            return build_model(name, tuple(in_shape), num_classes)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - the file's metadata could not build the model
        raise UserError(f".nnc metadata cannot rebuild '{name}' ({type(e).__name__}: {str(e)[:200]})") from None


def load_nnc_sparse(path: str | os.PathLike, model: nn.Module | None = None, *, format: str | None = None,
                    allow_nonfinite: bool = False) -> nn.Module:
    """Load a .nnc file into `model` (or the model its metadata names) with every weight-shared layer sparse.

    Each shared Linear/Conv2d weight becomes a `SparseLinear` / `SparseConv2d` in `format` (default: the
    C kernel when it compiles here, else scipy — the fastest at batch 1 in benchmarks/sparse_exec.py);
    all other tensors load densely. No format is measured here, because measuring needs the dense weight
    this function exists to avoid; to choose per layer by measurement, load densely and call `sparsify`.
    Returns the model in eval mode (sparse layers are inference-only).
    """
    fmt = check_format(format) if format is not None else _default_format()
    reader = open_nnc(path, allow_nonfinite=allow_nonfinite)
    infos = {info.name: info for _, _, info in reader.records(decode=False)}  # headers only: nothing decoded yet
    shared_keys = [n for n, i in infos.items() if i.kind == "shared"]
    built = model is None
    if built:
        model = _skeleton(reader.metadata if isinstance(reader.metadata, dict) else {})
    expected = model.state_dict()
    names = set(infos)
    missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
    if missing or extra:
        raise UserError(f".nnc tensors do not match the model: missing {missing[:5]}, unexpected {extra[:5]}")
    modules = dict(model.named_modules())
    for key in shared_keys:
        shape = infos[key].shape
        layer_name, _, attr = key.rpartition(".")
        layer = modules.get(layer_name)
        if attr != "weight" or not isinstance(layer, (nn.Linear, nn.Conv2d)):
            raise UserError(f".nnc shared tensor {key} is not the weight of an nn.Linear or nn.Conv2d; load it with decompress_model")
        if tuple(shape) != tuple(layer.weight.shape):
            raise UserError(f".nnc tensor {key} has shape {list(shape)}, the model expects {list(layer.weight.shape)}")
        if isinstance(layer, nn.Conv2d) and SparseConv2d.supports(layer) is not None:
            raise UserError(f".nnc layer {layer_name} cannot run sparse ({SparseConv2d.supports(layer)}); load it with decompress_model")
    for key, info in infos.items():
        if info.kind == "dense" and tuple(info.shape) != tuple(expected[key].shape):
            raise UserError(f".nnc tensor {key} has shape {list(info.shape)}, the model expects {list(expected[key].shape)}")
    if built:
        # the skeleton lives on the meta device: give the shared layers a throwaway weight until they are replaced below
        for key in shared_keys:
            modules[key.rpartition(".")[0]].weight = nn.Parameter(torch.empty(0), requires_grad=False)
    # decode one record at a time (dense records come after all shared ones in the file): each shared tensor
    # becomes CSR straight from its positions and codes and is dropped before the next is decoded
    pending: dict[str, _CSRSource] = {}
    for kind, key, value in reader.records():
        if kind == "shared":
            pending[key] = _CSRSource(*csr_from_shared(value)[:3], tuple(value.shape))
            continue
        tensor = torch.from_numpy(np.array(value, copy=True))
        if built:
            model.load_state_dict({key: tensor}, strict=False, assign=True)
        else:
            with torch.no_grad():
                expected[key].copy_(tensor)
    for key, src in pending.items():
        layer_name = key.rpartition(".")[0]
        layer = modules[layer_name]
        bias = None if layer.bias is None else layer.bias.detach()
        if isinstance(layer, nn.Conv2d):
            new = SparseConv2d(src.crow, src.col, src.values, src.shape[0], src.shape[1], tuple(src.shape[2:]), layer.stride,
                               layer.padding, layer.dilation, bias, fmt)
        else:
            new = SparseLinear(src.crow, src.col, src.values, tuple(src.shape), bias, fmt)
        parent = model.get_submodule(layer_name.rpartition(".")[0]) if "." in layer_name else model
        setattr(parent, layer_name.rpartition(".")[2], new)
    leftover = [n for n, v in list(model.named_parameters()) + list(model.named_buffers()) if v is not None and v.is_meta]
    if leftover:
        raise UserError(f".nnc file leaves {leftover[:5]} unset in the rebuilt model")
    return model.eval()
