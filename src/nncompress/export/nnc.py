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


def _rebuild_args(meta: dict, model_ref: str | None = None) -> tuple[str, tuple[int, ...], int]:
    """`build_model` arguments from the metadata, each range-checked before anything is built.

    The rebuild reference is the metadata's `model`: a zoo name, or a `package.module:factory` /
    `file.py:factory` reference (`nncompress.core.model_ref`). Importing and calling a factory runs its code, so a
    factory named only by the file is refused: the caller passes `model_ref` (the reference they trust, the CLI's
    --model), which is then what gets built. Zoo names are rebuilt without asking.
    """
    from nncompress.core.model_ref import is_factory_ref

    name = meta.get("model")
    if model_ref is not None:
        if not isinstance(model_ref, str) or not (model_ref in MODELS or is_factory_ref(model_ref)):
            raise UserError(f"model {_short(model_ref)} is neither a zoo name nor a package.module:factory / file.py:factory reference")
        name = model_ref
    elif isinstance(name, str) and is_factory_ref(name):
        raise UserError(f".nnc file was written for the model factory '{name}'; rebuilding it imports and runs that code, so "
                        f"pass it yourself (--model {name}, or decompress_model(path, model='{name}')), or load the file into "
                        "your own instance with load_nnc_into(model, path)")
    if not isinstance(name, str) or not (name in MODELS or is_factory_ref(name)):
        raise UserError(f".nnc metadata names model {_short(name)}, which nncompress cannot build (known: {', '.join(sorted(MODELS))}); "
                        "was the file written by nncompress compress? For your own model pass --model package.module:factory")
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
    """The model `name` (zoo name or factory reference) for the file's input shape and classes; `meta=True` builds
    it on the meta device (shapes and dtypes, nothing allocated) to check a file's claims before trusting them."""
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


def _skeleton(name: str, in_shape: tuple[int, ...], num_classes: int) -> nn.Module | None:
    """The model on the meta device, or None when a user factory cannot be built there (it loads a file, checks
    values): then the tensors are checked against the real model instead, which the caller trusted anyway."""
    from nncompress.core.model_ref import is_factory_ref

    try:
        return _build(name, in_shape, num_classes, meta=True)
    except UserError:
        if is_factory_ref(name):
            return None
        raise


def _check_tensors(cm: CompressedModel, expected: dict, what: str) -> None:
    """Every stored tensor against the model's state dict: names, shapes and dtypes; one line on the first mismatch."""
    names = set(cm.shared) | set(cm.dense)
    missing, extra = [k for k in expected if k not in names], sorted(names - set(expected))
    if missing or extra:
        first = (f"the file lacks '{missing[0]}'" if missing else f"the file has '{extra[0]}', which the model does not")
        raise UserError(f".nnc tensors do not match {what}: {first} ({len(missing)} missing, {len(extra)} unexpected: "
                        f"missing {missing[:5]}, unexpected {extra[:5]})")
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


def _fill(model: nn.Module, cm: CompressedModel) -> nn.Module:
    """Decode every tensor into the model's state dict, in place (tied parameters get the same values twice)."""
    target = model.state_dict()
    with torch.no_grad():
        for key, t in cm.shared.items():
            target[key].copy_(torch.from_numpy(t.to_dense()).to(target[key].dtype))
        for key, a in cm.dense.items():
            target[key].copy_(torch.from_numpy(np.array(a, copy=True)))
    return model


def model_from_nnc(cm: CompressedModel, model: nn.Module | str | None = None) -> nn.Module:
    """Rebuild the nn.Module a CompressedModel describes, with the decoded weights loaded.

    `model`: None rebuilds from the file's reference (zoo names only, see `_rebuild_args`); a reference string
    (zoo name, `package.module:factory`, `file.py:factory`) rebuilds that model; an `nn.Module` instance is
    filled in place (any module: only the state-dict names, shapes and dtypes must agree).
    Nothing the file claims is trusted before it is checked: the metadata's ranges, then (on a model
    built on the meta device, which allocates nothing) every tensor's name, shape and dtype against
    the model's own, then the model's size against the file's size; only then is the real model
    built and each tensor decoded. Raises UserError with one line on any mismatch.
    """
    if isinstance(model, nn.Module):
        if any(parametrize.is_parametrized(m) for m in model.modules()):
            raise UserError("the model has parametrized layers (masks or weight sharing); load into a plain model "
                            "(call finalize / finalize_sharing first)")
        _check_tensors(cm, model.state_dict(), f"the given {type(model).__name__}")
        return _fill(model, cm)
    meta = cm.metadata if isinstance(cm.metadata, dict) else {}
    name, in_shape, num_classes = _rebuild_args(meta, model)
    what = f"model '{name}' (in_shape {list(in_shape)}, {num_classes} classes)"
    skeleton = _skeleton(name, in_shape, num_classes)
    built = None
    if skeleton is None:
        built = _build(name, in_shape, num_classes)
        skeleton = built
    expected = skeleton.state_dict()  # shapes and dtypes only
    _check_tensors(cm, expected, what)
    total = sum(int(v.numel()) for v in expected.values())
    if cm.source_bytes is not None:
        budget = max(MIN_ELEMENT_BUDGET, ELEMENTS_PER_FILE_BYTE * int(cm.source_bytes))
        if total > budget:
            raise UserError(f".nnc file of {cm.source_bytes} bytes claims {what} with {total} elements, beyond the "
                            f"{budget} such a file can hold ({ELEMENTS_PER_FILE_BYTE} per byte); the file is damaged or crafted")
    return _fill(built if built is not None else _build(name, in_shape, num_classes), cm).eval()


def decompress_model(path: str | os.PathLike, *, allow_nonfinite: bool = False,
                     model: nn.Module | str | None = None) -> tuple[nn.Module, dict]:
    """Read a .nnc file (bounds-checked, checksummed, no pickle) and rebuild the model; returns (model, metadata).

    `model`: see `model_from_nnc` (None: the file's zoo model; a reference you trust; an instance to fill).
    NaN or infinite weights are refused unless `allow_nonfinite` (see `encoding.read_nnc`).
    """
    cm = load_nnc(path, allow_nonfinite=allow_nonfinite)
    return model_from_nnc(cm, model), cm.metadata


def load_nnc_into(model: nn.Module, path: str | os.PathLike, *, allow_nonfinite: bool = False) -> nn.Module:
    """Load a .nnc file's tensors, by state-dict key, into `model` (any module, built however you like) and
    return it; one UserError naming the first mismatched name, shape or dtype. See `model_from_nnc`."""
    return decompress_model(path, allow_nonfinite=allow_nonfinite, model=model)[0]
