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

from nncompress.architectures import build_model
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


def model_from_nnc(cm: CompressedModel) -> nn.Module:
    """Rebuild the nn.Module a CompressedModel describes, with the decoded weights loaded."""
    meta = cm.metadata
    try:
        model = build_model(str(meta["model"]), tuple(int(s) for s in meta["in_shape"]), int(meta["num_classes"]))
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f".nnc metadata cannot rebuild the model ({type(e).__name__}: {e}); was it written by nncompress compress?") from None
    state = {name: torch.from_numpy(np.array(t.to_dense(), copy=True)) for name, t in cm.shared.items()}
    state.update({name: torch.from_numpy(np.array(a, copy=True)) for name, a in cm.dense.items()})
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise UserError(f".nnc tensors do not match model '{meta['model']}': missing {missing[:5]}, unexpected {extra[:5]}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise UserError(f".nnc tensor {key} has shape {list(value.shape)}, model expects {list(expected[key].shape)}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return model.eval()


def decompress_model(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Read a .nnc file (bounds-checked, checksummed, no pickle) and rebuild the model; returns (model, metadata)."""
    cm = load_nnc(path)
    return model_from_nnc(cm), cm.metadata
