"""A weight-shared torch model ↔ the .nnc container (Deep Compression's storage format).

Shared layers are stored as codebook + entropy-coded indices + entropy-coded relative positions (each
stream Huffman or rANS, whichever is smaller: format v2); every other tensor of the state dict (biases,
batch norm, unshared weights) is stored raw. Metadata records how to rebuild the module
(`architectures.build_model` arguments).

Two ways in and out:
- in memory: `compress_model` → `CompressedModel` → `encoding.write_nnc`; `decompress_model` / `model_from_nnc`.
- streaming, for ImageNet-size models (issue 16): `save_compressed` encodes and writes one layer at a time
  (identical bytes), `load_into` decodes one layer at a time into the model's own tensors, and
  `sparse.nnc.load_nnc_sparse` straight into CSR. With `pruning.level_prune_inplace` and
  `sharing.share_weights_inplace` (which return the codebooks `save_compressed(..., codebooks=...)` takes)
  the whole pipeline never holds a second copy of the model.
The gap width of each layer's relative index is chosen from symbol histograms (`estimate_layer_bytes`),
never by encoding the layer once per candidate.

Memory (issue 13): a layer is read, encoded and decoded `encoding.symbols.CHUNK` weights at a time, and a
layer-sized array is only ever a compact one (int32 positions, uint8/uint16 codes and gap symbols): ~5-8
bytes per stored weight instead of ~40-60 of int64 temporaries. A 105 M-parameter MLP goes prune → share →
save → load with a process peak of 1.95x its fp32 bytes, imports included (was 2.64x;
`benchmarks/any_model.py --scale-child 8192`).
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.overrides import TorchFunctionMode

from nncompress.architectures import MODELS, build_model
from nncompress.core.errors import UserError
from nncompress.core.layers import plain_state_dict
from nncompress.core.progress import track
from nncompress.encoding import CompressedModel, SharedTensor, load_nnc
from nncompress.encoding.container import TensorInfo, open_nnc, open_nnc_writer
from nncompress.encoding.huffman import code_lengths
from nncompress.encoding.streams import estimate_stream_bytes, huffman_stream_bytes
from nncompress.encoding.symbols import CHUNK, symbol_dtype, symbol_histogram
from nncompress.sharing import get_codebook, shared_layers

GAP_BITS_CANDIDATES = tuple(range(2, 13))


def gap_histograms(positions: np.ndarray, gap_bits: int) -> tuple[np.ndarray, int]:
    """(histogram of the gap symbols, number of fillers) of `to_relative(positions, gap_bits)`, without
    building the streams: a raw gap d (from p_{-1} = -1) becomes (d - 1) // M fillers of symbol M - 1
    and one real entry of symbol (d - 1) mod M, M = 2^gap_bits."""
    values, counts = _distinct_gaps(positions)
    return _gap_hist_from_unique(values, counts, 1 << int(gap_bits))


_SMALL_GAP = 1 << 16


def _distinct_gaps(positions, chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values of d - 1, their counts) over the raw gaps d (from p_{-1} = -1): a bincount for the
    common small gaps and a sort only for the rare large ones, `chunk` positions at a time (no int64 copy
    of a large layer's positions)."""
    p = np.asarray(positions)
    hist = np.zeros(1, dtype=np.int64)
    big: list[np.ndarray] = []
    for lo in range(0, p.size, chunk):
        g = np.diff(p[lo : lo + chunk].astype(np.int64), prepend=-1 if lo == 0 else int(p[lo - 1])) - 1
        small = g < _SMALL_GAP
        h = np.bincount(g[small])
        if h.size > hist.size:
            hist = np.concatenate([hist, np.zeros(h.size - hist.size, dtype=np.int64)])
        hist[: h.size] += h
        if not small.all():
            big.append(g[~small])
    values = np.flatnonzero(hist)
    counts = hist[values]
    if big:
        big_v, big_c = np.unique(np.concatenate(big), return_counts=True)
        values, counts = np.concatenate([values, big_v]), np.concatenate([counts, big_c])
    return values.astype(np.int64), counts.astype(np.int64)


def _gap_hist_from_unique(values: np.ndarray, counts: np.ndarray, m: int) -> tuple[np.ndarray, int]:
    fillers = int(np.dot(values // m, counts))
    hist = np.bincount(values % m, weights=counts, minlength=m).astype(np.int64)
    hist[m - 1] += fillers
    return hist, fillers


def estimate_layer_bytes(positions: np.ndarray, codes: np.ndarray, k: int, candidates: Sequence[int] = GAP_BITS_CANDIDATES,
                         coder: str = "auto") -> dict[int, float]:
    """Coded bytes of a layer's two streams for each candidate gap width, from symbol histograms only.

    Per width M = 2^g: the gap stream's histogram is `gap_histograms`; the index stream's is the codes'
    histogram plus one filler symbol k per filler. Each stream is priced as the .nnc writer codes it
    (`encoding.streams.estimate_stream_bytes`): Huffman exactly (sum_s c_s l_s from package-merge
    lengths, plus its table), rANS by sum_s c_s (precision - log2 f_s) plus table and lane states.
    With coder="huffman" the estimate is the exact Huffman size of both streams (tag included).
    Nothing is encoded, so trying 11 widths costs 11 histograms, not 11 encodings.
    """
    pos = np.asarray(positions)
    code_hist = symbol_histogram(np.asarray(codes), k + 1)[: k + 1].copy() if pos.size else np.zeros(k + 1, np.int64)
    values, counts = _distinct_gaps(pos)
    price = (lambda c: float(huffman_stream_bytes(c, code_lengths(c)))) if coder == "huffman" else estimate_stream_bytes
    out = {}
    for g in candidates:
        gap_hist, fillers = _gap_hist_from_unique(values, counts, 1 << int(g))
        idx = code_hist.copy()
        idx[k] += fillers
        out[int(g)] = price(idx) + price(gap_hist)
    return out


def best_gap_bits(positions: np.ndarray, codes: np.ndarray, codebook: np.ndarray, bits: int,
                  candidates: Sequence[int] = GAP_BITS_CANDIDATES, coder: str = "auto") -> int:
    """The relative-index width that gives the smallest coded layer, estimated from symbol histograms.

    A narrow gap field makes short gap codes but inserts filler entries (each costs a gap and an index
    symbol); a wide one avoids fillers but has a larger alphabet. Deep Compression fixed 8 (conv) and
    5 (fc) bits; choosing per layer by the coded size is never worse. The size of each candidate comes
    from `estimate_layer_bytes` (exact for Huffman streams, within ~0.1 % for rANS ones); ties go to the
    narrower width.
    """
    if not len(candidates):
        raise UserError("best_gap_bits: no candidate gap widths")
    sizes = estimate_layer_bytes(positions, codes, int(np.asarray(codebook).size), candidates, coder)
    return min(sizes, key=lambda g: (sizes[g], g))


def _codebook_bits(k: int) -> int:
    return max(1, int(np.ceil(np.log2(max(k, 2)))))


def _stored_entries(numel: int, nnz: int, k: int, chunks) -> tuple[np.ndarray, np.ndarray]:
    """(positions, codes) of `nnz` stored weights from `chunks`, an iterable of (offset, local flat indices,
    their codes) in order, written into arrays allocated once: positions as int32 when every flat index
    fits (a tensor of <= 2^31 elements), codes in the smallest unsigned dtype for 0..k-1. A 67 M-weight
    layer at 10 % density holds 34 MB here instead of 108 MB of int64."""
    positions = np.empty(nnz, dtype=np.int32 if numel <= (1 << 31) else np.int64)
    codes = np.empty(nnz, dtype=symbol_dtype(max(k - 1, 0)))
    done = 0
    for lo, local, part_codes in chunks:
        positions[done : done + local.size] = local + lo
        codes[done : done + local.size] = part_codes
        done += local.size
    if done != nnz:
        raise AssertionError(f"unreachable: {done} stored weights found, {nnz} counted")
    return positions, codes


def _parametrized_tensor(module: nn.Module) -> tuple[tuple[int, ...], np.ndarray, np.ndarray, np.ndarray]:
    centroids, codes, mask = get_codebook(module)
    flat_mask = mask.reshape(-1).cpu().numpy()
    flat_codes = codes.reshape(-1).cpu().numpy()
    cb = centroids.cpu().numpy().astype(np.float32)

    def chunks():
        for lo in range(0, flat_mask.size, CHUNK):
            local = np.flatnonzero(flat_mask[lo : lo + CHUNK])
            yield lo, local, flat_codes[lo : lo + CHUNK][local]

    positions, layer_codes = _stored_entries(flat_mask.size, int(np.count_nonzero(flat_mask)), cb.size, chunks())
    return tuple(mask.shape), cb, positions, layer_codes


def _inplace_tensor(name: str, module: nn.Module, codebook) -> tuple[tuple[int, ...], np.ndarray, np.ndarray, np.ndarray]:
    """A plain layer whose non-zero weights are all codebook values (`sharing.share_weights_inplace`).

    Read `CHUNK` weights at a time: each chunk's non-zeros are looked up in the sorted codebook (exact
    float32 equality), so the only layer-sized arrays are the compact positions and codes."""
    w = module.weight.detach()
    if w.dtype != torch.float32 or w.device.type != "cpu":
        w = w.float().cpu()
    flat = w.reshape(-1).numpy()
    cb = np.asarray(codebook.detach().cpu().numpy() if isinstance(codebook, torch.Tensor) else codebook, dtype=np.float32).reshape(-1)
    nnz = int(np.count_nonzero(flat))
    if cb.size == 0 and nnz:
        raise UserError(f"compress: layer '{name}' has non-zero weights but an empty codebook")
    order = np.argsort(cb, kind="stable")
    sorted_cb = cb[order]

    def chunks():
        for lo in range(0, flat.size, CHUNK):
            part = flat[lo : lo + CHUNK]
            local = np.flatnonzero(part)
            if not local.size:
                continue
            values = part[local]
            idx = np.minimum(np.searchsorted(sorted_cb, values), cb.size - 1)
            if not np.array_equal(sorted_cb[idx], values):
                raise UserError(f"compress: layer '{name}' holds weights that are not values of its codebook; share it with "
                                "sharing.share_weights_inplace (or share_weights) and do not change the weights afterwards")
            yield lo, local, order[idx]

    positions, codes = _stored_entries(flat.size, nnz, cb.size, chunks())
    return tuple(w.shape), cb, positions, codes


def _shared_sources(model: nn.Module, codebooks: dict | None) -> dict[str, tuple[nn.Module, object]]:
    """{layer name: (module, codebook or None)}: parametrized shared layers, then `codebooks`' layers."""
    sources = {name: (m, None) for name, m in shared_layers(model).items()}
    modules = dict(model.named_modules())
    for name, cb in (codebooks or {}).items():
        if name in sources:
            raise UserError(f"compress: layer '{name}' is weight-shared by share_weights and also has a codebook given")
        m = modules.get(name)
        if m is None or not isinstance(getattr(m, "weight", None), torch.Tensor):
            raise UserError(f"compress: codebooks names '{name}', which is not a layer with a weight in this model")
        sources[name] = (m, cb)
    if not sources:
        raise UserError("compress_model: no weight-shared layers; run sharing.share_weights(model) (or share_weights_inplace "
                        "and pass its codebooks) first")
    rank = {name: i for i, name in enumerate(modules)}
    return dict(sorted(sources.items(), key=lambda kv: rank[kv[0]]))


def shared_tensor(name: str, module: nn.Module, codebook=None, gap_bits: int | str = "auto", coder: str = "auto") -> SharedTensor:
    """The SharedTensor of one shared layer (parametrized by `share_weights`, or plain with `codebook`)."""
    shape, cb, positions, codes = _inplace_tensor(name, module, codebook) if codebook is not None else _parametrized_tensor(module)
    bits = _codebook_bits(cb.size)
    g = best_gap_bits(positions, codes, cb, bits, coder=coder) if gap_bits == "auto" else int(gap_bits)
    return SharedTensor(shape, cb, bits, positions, codes, g)


def _check_metadata(metadata: dict) -> None:
    if not isinstance(metadata, dict):
        raise UserError(f"compress_model: metadata must be a dict, got {type(metadata).__name__}")
    for key in ("model", "in_shape", "num_classes"):
        if key not in metadata:
            raise UserError(f"compress_model: metadata needs '{key}' to rebuild the model later")


def _dense_keys(model: nn.Module, shared_keys) -> list[str]:
    keys = [k for k in model.state_dict(keep_vars=True) if ".parametrizations." not in k and not k.startswith("parametrizations.")]
    out = [k for k in keys if k not in shared_keys]
    for name, module in model.named_modules():  # parametrized tensors that are not shared (e.g. masked, unshared)
        if parametrize.is_parametrized(module):
            prefix = f"{name}." if name else ""
            out.extend(prefix + t for t in module.parametrizations.keys() if prefix + t not in shared_keys and prefix + t not in out)
    return out


def compress_model(model: nn.Module, metadata: dict, gap_bits: int | str = "auto", *, codebooks: dict | None = None,
                   coder: str = "auto") -> CompressedModel:
    """Turn a model whose layers were shared by `sharing.share_weights` into a CompressedModel.

    `metadata` must hold `model`, `in_shape` and `num_classes` so `decompress_model` can rebuild it.
    `codebooks` ({layer: centroids}, what `sharing.share_weights_inplace` returns) adds plain layers whose
    non-zero weights are all codebook values. `save_compressed` writes the same bytes one layer at a time.
    """
    _check_metadata(metadata)
    sources = _shared_sources(model, codebooks)
    shared = {f"{name}.weight": shared_tensor(name, m, cb, gap_bits, coder) for name, (m, cb) in sources.items()}
    dense = {}
    for key, value in plain_state_dict(model).items():
        if key not in shared:
            dense[key] = value.detach().cpu().contiguous().numpy()
    return CompressedModel(metadata=dict(metadata), shared=shared, dense=dense)


def _dense_value(model: nn.Module, state: dict, key: str) -> np.ndarray:
    value = state.get(key)
    if value is None:  # a parametrized tensor (e.g. a masked, unshared weight): its effective value
        module_name, _, attr = key.rpartition(".")
        with torch.no_grad():
            value = getattr(model.get_submodule(module_name) if module_name else model, attr)
    return value.detach().cpu().contiguous().numpy()


def save_compressed(model: nn.Module, path: str | os.PathLike, metadata: dict, gap_bits: int | str = "auto", *,
                    codebooks: dict | None = None, coder: str = "auto", progress: bool | None = None) -> dict:
    """Stream `model` into a .nnc file at `path`: each shared layer is encoded and written, then dropped,
    before the next is read, into a temp file renamed over `path` at the end (atomic).

    Same bytes as `write_nnc(compress_model(model, metadata, gap_bits, codebooks=codebooks, coder=coder))`,
    without holding the CompressedModel (for VGG16, ~10^7 positions and codes). Returns {"bytes": file
    size, "streams": [StreamInfo, ...] per coded stream, "sizes": size breakdown, "gap_bits": {tensor: g}, "write_s": seconds spent in file writes, fsync and rename}.
    """
    _check_metadata(metadata)
    sources = _shared_sources(model, codebooks)
    shared_keys = [f"{name}.weight" for name in sources]
    dense_keys = _dense_keys(model, set(shared_keys))
    chosen = {}
    with open_nnc_writer(path, dict(metadata), len(shared_keys), len(dense_keys), coder=coder) as w:
        for name, (m, cb) in track(list(sources.items()), "encode + write", enabled=progress):
            t = shared_tensor(name, m, cb, gap_bits, coder)
            chosen[f"{name}.weight"] = t.gap_bits
            w.add_shared(f"{name}.weight", t)
            del t
        state = model.state_dict()  # references, not copies
        for key in dense_keys:
            w.add_dense(key, _dense_value(model, state, key))
    return {"bytes": int(os.path.getsize(path)), "streams": w.streams, "sizes": w.sizes, "gap_bits": chosen, "write_s": w.write_s}


def load_into(model: nn.Module, path: str | os.PathLike, *, allow_nonfinite: bool = False, progress: bool | None = None) -> dict:
    """Decode a .nnc file layer by layer straight into `model`'s existing tensors; returns the metadata.

    The file is checked first (magic, version, CRC), then every record's header (names, shapes, dtypes,
    stream tables and sizes) against `model` without decoding anything; only then is each tensor
    decoded, written into its parameter or buffer in place (a shared weight: zero it, then scatter
    codebook[codes] at the stored positions, a chunk at a time), and dropped before the next one. No second
    copy of the model is ever held: a shared tensor is decoded as int32 positions and uint8/uint16 codes
    (`NNCReader.records(compact=True)`), ~5 bytes per stored weight. `model` must be plain (no parametrizations: `finalize` / `finalize_sharing`
    first). If a stream turns out to be corrupt mid-way (only a crafted file passes the CRC), the
    model is left partly overwritten and CorruptFileError is raised.
    """
    reader = open_nnc(path, allow_nonfinite=allow_nonfinite)
    if any(parametrize.is_parametrized(m) for m in model.modules()):
        raise UserError("load_into: the model has parametrized layers (masks or weight sharing); load into a plain model "
                        "(call finalize / finalize_sharing first)")
    targets = model.state_dict(keep_vars=True)
    infos: list[TensorInfo] = [info for _, _, info in reader.records(decode=False)]
    names = {i.name for i in infos}
    missing, extra = sorted(set(targets) - names), sorted(names - set(targets))
    if missing or extra:
        raise UserError(f".nnc tensors do not match the model: missing {missing[:5]}, unexpected {extra[:5]}")
    for info in infos:
        want = targets[info.name]
        if tuple(info.shape) != tuple(want.shape):
            raise UserError(f".nnc tensor {info.name} has shape {list(info.shape)}, the model expects {list(want.shape)}")
        if info.kind == "shared" and not want.dtype.is_floating_point:
            raise UserError(f".nnc tensor {info.name} is weight-shared (float32), the model stores it as {_dtype_name(want.dtype)}")
        if info.kind == "dense" and info.dtype.name != _dtype_name(want.dtype):
            raise UserError(f".nnc tensor {info.name} is stored as {info.dtype.name}, the model expects {_dtype_name(want.dtype)}")
    with torch.no_grad():
        for kind, name, value in track(reader.records(compact=True), "decode + load", total=len(infos), enabled=progress):
            dst = targets[name]
            if kind == "shared":
                flat = dst.view(-1) if dst.is_contiguous() else None
                if flat is None:
                    raise UserError(f"load_into: tensor {name} is not contiguous")
                flat.zero_()
                codebook = torch.from_numpy(value.codebook).to(dst.dtype)
                for lo in range(0, value.positions.size, CHUNK):  # int64 indices for one chunk at a time
                    at = torch.from_numpy(value.positions[lo : lo + CHUNK].astype(np.int64))
                    flat.index_copy_(0, at, codebook[torch.from_numpy(value.codes[lo : lo + CHUNK].astype(np.int64))])
            else:
                dst.copy_(torch.from_numpy(value))
            del value
    return reader.metadata


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
        raise UserError(f".nnc metadata names model {_short(name)}, which nncompress cannot build (not a zoo name: "
                        "`nncompress zoo` lists them); for your own model pass --model package.module:factory")
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
