"""The .nnc container: pruned, weight-shared tensors as Huffman-coded indices and relative positions.

Deep Compression (Han, Mao & Dally 2016) stores each layer as (1) a codebook of K float32
centroids, (2) one codebook index per surviving weight and (3) the gap to the previous survivor
(see `relative_index`), and Huffman-codes (2) and (3). Everything else (biases, batch-norm,
unshared weights) is stored raw. The data model below is neutral: numpy arrays, no torch.

File layout, version 1 (all integers little-endian):

    magic            4 B   b"NNC\\x00"
    version          u16   1 (a reader refuses any other version)
    flags            u16   0 (reserved)
    metadata_len     u32   then metadata_len bytes of UTF-8 JSON (an object)
    n_shared         u32
    n_dense          u32
    n_shared x shared tensor:
        name_len u16, name (UTF-8)
        ndim u8, ndim x u64 dims
        bits u8 (1..16), gap_bits u8 (1..16)
        k u32 (<= 2**bits), k x f32 codebook
        n_stored u32 (non-zeros), n_entries u32 (non-zeros + fillers)
        n_code_lengths u32 (<= k + 1), u8 code length per index symbol; symbol k = filler,
            missing trailing symbols have length 0
        code_nbits u64, ceil(code_nbits / 8) B   Huffman stream of n_entries index symbols
        n_gap_lengths u32 (<= 2**gap_bits), u8 code length per gap symbol (symbol g = gap g + 1)
        gap_nbits u64, ceil(gap_nbits / 8) B     Huffman stream of n_entries gap symbols
    n_dense x dense tensor:
        name_len u16, name, dtype code u8, ndim u8, ndim x u64 dims, numel * itemsize raw bytes (C order)
    crc32            u32   zlib.crc32 of every byte before it

Caps: ndim <= 8; product of the non-zero dims <= 2**31; names <= 4096 B; metadata <= 16 MiB;
at most 2**20 tensors of each kind; code lengths <= 24 bits.

Robustness: the CRC is checked before any field is parsed (it catches every accidental 1-bit
flip; it is not a signature, so everything behind it is checked as if the file were crafted).
Every read is bounds-checked, every claimed size is compared with the bytes actually present
before anything is allocated (a Huffman stream of n bits holds at most n symbols, so decoded
arrays never outgrow the file), counts and shapes are capped, and the rebuilt positions and codes
are validated, so a truncated, damaged or crafted file raises `CorruptFileError` with a one-line
message. NaN or infinite codebook entries and dense float values are refused unless the caller
passes `allow_nonfinite=True`; the metadata must be strict JSON (no NaN/Infinity constants).
The only allocation a file can make that its bytes do not pay for is `SharedTensor.to_dense`
(a sparse tensor's dense size): `export.nnc.model_from_nnc` checks every shape against the
model it rebuilds, and the model's size against the file's size, before calling it. No pickle.
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nncompress.core.errors import UserError
from nncompress.core.io import atomic_write_bytes
from nncompress.encoding import huffman
from nncompress.encoding.errors import CorruptFileError
from nncompress.encoding.relative_index import MAX_GAP_BITS, from_relative, to_relative

MAGIC = b"NNC\x00"
FORMAT_VERSION = 1
MAX_TENSORS = 1 << 20
MAX_NDIM = 8
MAX_ELEMENTS = 1 << 31
MAX_NAME_BYTES = 4096
MAX_METADATA_BYTES = 16 << 20
MAX_BITS = 16
_HEADER = struct.Struct("<4sHHI")
_CRC_BYTES = 4

DTYPE_CODES: dict[str, int] = {
    "float32": 1, "float16": 2, "float64": 3, "int8": 4, "uint8": 5, "int16": 6,
    "uint16": 7, "int32": 8, "uint32": 9, "int64": 10, "uint64": 11, "bool": 12,
}
_CODE_DTYPES = {code: np.dtype(name).newbyteorder("<") for name, code in DTYPE_CODES.items()}


@dataclass(eq=False)
class SharedTensor:
    """A pruned, weight-shared tensor: value at flat index positions[i] is codebook[codes[i]], else 0."""

    shape: tuple[int, ...]
    codebook: np.ndarray  # float32 [K], K <= 2**bits
    bits: int  # 1..16: width of a codebook index before Huffman coding
    positions: np.ndarray  # int64, strictly increasing flat indices of the stored entries
    codes: np.ndarray  # int codebook index per stored entry
    gap_bits: int  # width of a relative-index gap (Deep Compression: 8 conv, 5 fc)

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=object)) if self.shape else 1

    def to_dense(self) -> np.ndarray:
        """The float32 tensor this encodes."""
        out = np.zeros(self.numel, dtype=np.float32)
        out[np.asarray(self.positions, dtype=np.int64)] = np.asarray(self.codebook, dtype=np.float32)[np.asarray(self.codes, dtype=np.int64)]
        return out.reshape(self.shape)

    @classmethod
    def from_dense(cls, weight, codebook, *, bits: int, gap_bits: int) -> "SharedTensor":
        """Store the non-zeros of a weight-shared tensor, each as the index of its nearest centroid."""
        w = np.asarray(weight)
        cb = np.asarray(codebook, dtype=np.float32).reshape(-1)
        flat = w.reshape(-1)
        positions = np.flatnonzero(flat).astype(np.int64)
        codes = np.zeros(positions.size, dtype=np.int64)
        if positions.size:
            if cb.size == 0:
                raise UserError("SharedTensor.from_dense: empty codebook for a tensor with non-zeros")
            values = flat[positions].astype(np.float64)
            order = np.argsort(cb, kind="stable")
            sorted_cb = cb[order].astype(np.float64)
            hi = np.minimum(np.searchsorted(sorted_cb, values), cb.size - 1)  # nearest is hi or hi - 1
            lo = np.maximum(hi - 1, 0)
            codes = order[np.where(np.abs(values - sorted_cb[lo]) <= np.abs(values - sorted_cb[hi]), lo, hi)].astype(np.int64)
        return cls(tuple(int(d) for d in w.shape), cb, int(bits), positions, codes, int(gap_bits))


@dataclass(eq=False)
class CompressedModel:
    """What a .nnc file holds: JSON metadata, shared tensors and dense leftovers, by parameter name."""

    metadata: dict = field(default_factory=dict)
    shared: dict[str, SharedTensor] = field(default_factory=dict)
    dense: dict[str, np.ndarray] = field(default_factory=dict)
    source_bytes: int | None = field(default=None, repr=False)
    """Size of the file this was read from (set by `read_nnc`); bounds what decoding it may allocate."""


# ----------------------------------------------------------------------------------------- writing


class _Writer:
    """Collects the file's parts and counts bytes per report category (for `size_breakdown`)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.sizes: Counter[str] = Counter()

    def put(self, category: str, data: bytes) -> None:
        self.parts.append(data)
        self.sizes[category] += len(data)

    def pack(self, category: str, fmt: str, *values) -> None:
        self.put(category, struct.pack("<" + fmt, *values))


def _name_bytes(name) -> bytes:
    if not isinstance(name, str) or not name:
        raise UserError(f"tensor names must be non-empty strings, got {name!r}")
    raw = name.encode("utf-8")
    if len(raw) > MAX_NAME_BYTES:
        raise UserError(f"tensor name longer than {MAX_NAME_BYTES} bytes: {name[:60]}...")
    return raw


def _extent(dims) -> int:
    """Product of the non-zero dims: what numpy checks for overflow even when a dim is 0."""
    out = 1
    for d in dims:
        out *= d or 1
    return out


def _check_shape(name: str, shape) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise UserError(f"tensor {name!r}: shape must be a tuple of ints, got {shape!r}") from None
    if len(dims) > MAX_NDIM or any(d < 0 for d in dims):
        raise UserError(f"tensor {name!r}: shape {dims} needs at most {MAX_NDIM} non-negative dims")
    if _extent(dims) > MAX_ELEMENTS:
        raise UserError(f"tensor {name!r}: shape {dims} exceeds the .nnc limit of {MAX_ELEMENTS} elements")
    return dims


def _lengths_table(lengths: np.ndarray) -> bytes:
    used = np.flatnonzero(lengths)
    trimmed = lengths[: int(used[-1]) + 1] if used.size else lengths[:0]
    return struct.pack("<I", trimmed.size) + trimmed.astype(np.uint8).tobytes()


def _write_shared(w: _Writer, name: str, t: SharedTensor) -> None:
    dims = _check_shape(name, t.shape)
    numel = int(np.prod(dims, dtype=object)) if dims else 1
    bits, gap_bits = t.bits, t.gap_bits
    if not isinstance(bits, (int, np.integer)) or not 1 <= bits <= MAX_BITS:
        raise UserError(f"tensor {name!r}: bits must be in 1..{MAX_BITS}, got {bits!r}")
    if not isinstance(gap_bits, (int, np.integer)) or not 1 <= gap_bits <= MAX_GAP_BITS:
        raise UserError(f"tensor {name!r}: gap_bits must be in 1..{MAX_GAP_BITS}, got {gap_bits!r}")
    cb = np.asarray(t.codebook)
    if cb.ndim != 1 or cb.size > (1 << bits):
        raise UserError(f"tensor {name!r}: codebook must be 1-D with at most 2**bits = {1 << bits} entries, got shape {cb.shape}")
    cb = cb.astype("<f4")
    if not np.isfinite(cb).all():
        raise UserError(f"tensor {name!r}: the codebook holds NaN or infinite values (a diverged model?); readers refuse such files")
    k = cb.size
    pos = np.asarray(t.positions)
    codes = np.asarray(t.codes)
    if pos.ndim != 1 or codes.shape != pos.shape:
        raise UserError(f"tensor {name!r}: positions and codes must be 1-D of equal length, got {pos.shape} and {codes.shape}")
    if pos.size:
        if pos.dtype.kind not in "iu" or codes.dtype.kind not in "iu":
            raise UserError(f"tensor {name!r}: positions and codes must be integer arrays")
        pos, codes = pos.astype(np.int64), codes.astype(np.int64)  # signed, so a decreasing uint diff shows
        if pos[0] < 0 or pos[-1] >= numel or np.any(np.diff(pos) <= 0):
            raise UserError(f"tensor {name!r}: positions must be strictly increasing flat indices in 0..{numel - 1}")
        if codes.min() < 0 or codes.max() >= k:
            raise UserError(f"tensor {name!r}: codes must index the codebook (0..{k - 1})")
    gaps, is_filler = to_relative(pos.astype(np.int64), int(gap_bits))
    entry_codes = np.full(gaps.size, k, dtype=np.int64)  # symbol k = filler
    entry_codes[~is_filler] = codes.astype(np.int64)
    gap_syms = gaps - 1
    code_len = huffman.code_lengths(np.bincount(entry_codes, minlength=k + 1))
    gap_len = huffman.code_lengths(np.bincount(gap_syms, minlength=1 << gap_bits))
    code_stream, code_nbits = huffman.encode(entry_codes, code_len)
    gap_stream, gap_nbits = huffman.encode(gap_syms, gap_len)

    raw = _name_bytes(name)
    w.pack("tensor_headers", "H", len(raw))
    w.put("tensor_headers", raw)
    w.pack("tensor_headers", f"B{len(dims)}Q", len(dims), *dims)
    w.pack("tensor_headers", "BBI", bits, gap_bits, k)
    w.put("codebooks", cb.tobytes())
    w.pack("tensor_headers", "II", pos.size, gaps.size)
    w.put("huffman_tables", _lengths_table(code_len))
    w.pack("tensor_headers", "Q", code_nbits)
    w.put("index_streams", code_stream)
    w.put("huffman_tables", _lengths_table(gap_len))
    w.pack("tensor_headers", "Q", gap_nbits)
    w.put("position_streams", gap_stream)


def _write_dense(w: _Writer, name: str, array) -> None:
    a = np.asarray(array)
    if a.dtype.name not in DTYPE_CODES:
        raise UserError(f"dense tensor {name!r}: dtype {a.dtype} not supported (use one of {', '.join(DTYPE_CODES)})")
    dims = _check_shape(name, a.shape)
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise UserError(f"dense tensor {name!r} holds NaN or infinite values (a diverged model?); readers refuse such files")
    raw = _name_bytes(name)
    w.pack("tensor_headers", "H", len(raw))
    w.put("tensor_headers", raw)
    w.pack("tensor_headers", f"BB{len(dims)}Q", DTYPE_CODES[a.dtype.name], len(dims), *dims)
    w.put("dense", np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes())


def _serialise(model: CompressedModel) -> _Writer:
    if not isinstance(model.metadata, dict):
        raise UserError(f"metadata must be a dict, got {type(model.metadata).__name__}")
    try:
        meta = json.dumps(model.metadata, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise UserError(f"metadata is not JSON-serialisable: {e}") from None
    if len(meta) > MAX_METADATA_BYTES:
        raise UserError(f"metadata is {len(meta)} bytes; the .nnc limit is {MAX_METADATA_BYTES}")
    if len(model.shared) > MAX_TENSORS or len(model.dense) > MAX_TENSORS:
        raise UserError(f"at most {MAX_TENSORS} shared and {MAX_TENSORS} dense tensors fit in a .nnc file")
    both = set(model.shared) & set(model.dense)
    if both:
        raise UserError(f"tensor {sorted(both)[0]!r} is both shared and dense")
    w = _Writer()
    w.put("header", _HEADER.pack(MAGIC, FORMAT_VERSION, 0, len(meta)))
    w.put("metadata", meta)
    w.pack("header", "II", len(model.shared), len(model.dense))
    for name, t in model.shared.items():
        _write_shared(w, name, t)
    for name, a in model.dense.items():
        _write_dense(w, name, a)
    return w


def write_nnc(model: CompressedModel) -> bytes:
    """Serialise `model` to .nnc bytes (layout in the module docstring)."""
    w = _serialise(model)
    body = b"".join(w.parts)
    return body + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)


def size_breakdown(model: CompressedModel) -> dict[str, int]:
    """Exact bytes per part of the .nnc file; the parts add up to "total" = len(write_nnc(model)).

    Keys: header, metadata, tensor_headers (names, shapes, counts), codebooks, huffman_tables,
    index_streams (Huffman-coded codebook indices), position_streams (Huffman-coded gaps),
    dense, checksum, total.
    """
    w = _serialise(model)
    keys = ("header", "metadata", "tensor_headers", "codebooks", "huffman_tables", "index_streams", "position_streams", "dense")
    out = {k: int(w.sizes.get(k, 0)) for k in keys}
    out["checksum"] = _CRC_BYTES
    out["total"] = sum(out.values())
    return out


def save_nnc(path: str | os.PathLike, model: CompressedModel) -> Path:
    """Write `model` to `path` atomically (temp file + rename)."""
    return atomic_write_bytes(path, write_nnc(model))


# ----------------------------------------------------------------------------------------- reading


class _Reader:
    """Cursor over the body; every read checks that the bytes are there."""

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.pos = 0

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or n > self.left:
            raise CorruptFileError(f"truncated or corrupt .nnc file: {what} needs {n} bytes at offset {self.pos}, only {self.left} left")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> tuple:
        s = struct.Struct("<" + fmt)
        return s.unpack(self.take(s.size, what))

    def one(self, fmt: str, what: str) -> int:
        return self.unpack(fmt, what)[0]


def _read_name(r: _Reader, seen: set[str], kind: str) -> str:
    n = r.one("H", f"{kind} tensor name length")
    if n == 0 or n > MAX_NAME_BYTES:
        raise CorruptFileError(f"corrupt .nnc file: {kind} tensor name length {n} outside 1..{MAX_NAME_BYTES}")
    try:
        name = bytes(r.take(n, f"{kind} tensor name")).decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptFileError(f"corrupt .nnc file: {kind} tensor name at offset {r.pos - n} is not UTF-8") from None
    if name in seen:
        raise CorruptFileError(f"corrupt .nnc file: tensor {name!r} appears twice")
    seen.add(name)
    return name


def _read_shape(r: _Reader, name: str) -> tuple[tuple[int, ...], int]:
    ndim = r.one("B", f"ndim of {name!r}")
    if ndim > MAX_NDIM:
        raise CorruptFileError(f"corrupt .nnc file: tensor {name!r} claims {ndim} dims (max {MAX_NDIM})")
    dims = r.unpack(f"{ndim}Q", f"shape of {name!r}")
    if _extent(dims) > MAX_ELEMENTS:
        raise CorruptFileError(f"corrupt .nnc file: tensor {name!r} claims shape {dims}, beyond {MAX_ELEMENTS} elements")
    numel = 0 if 0 in dims else _extent(dims)
    return tuple(dims), numel


def _read_lengths(r: _Reader, alphabet: int, what: str) -> np.ndarray:
    n = r.one("I", f"{what} table size")
    if n > alphabet:
        raise CorruptFileError(f"corrupt .nnc file: {what} table has {n} symbols, the alphabet has {alphabet}")
    table = np.zeros(alphabet, dtype=np.int64)
    table[:n] = np.frombuffer(r.take(n, f"{what} table"), dtype=np.uint8)
    try:
        return huffman.validate_lengths(table)
    except CorruptFileError as e:
        raise CorruptFileError(f"corrupt .nnc file: {what} table: {e}") from None


def _read_stream(r: _Reader, lengths: np.ndarray, count: int, what: str) -> np.ndarray:
    nbits = r.one("Q", f"{what} bit count")
    stream = r.take((nbits + 7) // 8, what)  # checked against the bytes present before decoding
    try:
        return huffman.decode(stream, nbits, lengths, count)
    except CorruptFileError as e:
        raise CorruptFileError(f"corrupt .nnc file: {what}: {e}") from None


def _reject_nonfinite(values: np.ndarray, name: str, what: str) -> None:
    if values.dtype.kind in "fc" and values.size and not np.isfinite(values).all():
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        raise CorruptFileError(f"corrupt .nnc file: {what} of {name!r} holds {bad} NaN or infinite values "
                               "(a diverged or damaged model; pass allow_nonfinite=True to load it anyway)")


def _read_shared(r: _Reader, seen: set[str], allow_nonfinite: bool = False) -> tuple[str, SharedTensor]:
    name = _read_name(r, seen, "shared")
    shape, numel = _read_shape(r, name)
    bits, gap_bits, k = r.unpack("BBI", f"code widths of {name!r}")
    if not 1 <= bits <= MAX_BITS or not 1 <= gap_bits <= MAX_GAP_BITS:
        raise CorruptFileError(f"corrupt .nnc file: tensor {name!r} has bits={bits}, gap_bits={gap_bits} (each must be 1..16)")
    if k > (1 << bits):
        raise CorruptFileError(f"corrupt .nnc file: tensor {name!r} has {k} centroids for {bits}-bit indices")
    codebook = np.frombuffer(r.take(4 * k, f"codebook of {name!r}"), dtype="<f4").astype(np.float32)
    if not allow_nonfinite:
        _reject_nonfinite(codebook, name, "the codebook")
    n_stored, n_entries = r.unpack("II", f"entry counts of {name!r}")
    if not n_stored <= n_entries <= numel:
        raise CorruptFileError(f"corrupt .nnc file: tensor {name!r} claims {n_stored} non-zeros in {n_entries} entries for {numel} elements")
    code_len = _read_lengths(r, k + 1, f"index code of {name!r}")
    entry_codes = _read_stream(r, code_len, n_entries, f"index stream of {name!r}")
    gap_len = _read_lengths(r, 1 << gap_bits, f"gap code of {name!r}")
    gaps = _read_stream(r, gap_len, n_entries, f"gap stream of {name!r}") + 1
    is_filler = entry_codes == k
    if int(np.count_nonzero(~is_filler)) != n_stored:
        raise CorruptFileError(f"corrupt .nnc file: tensor {name!r} decodes to {int(np.count_nonzero(~is_filler))} non-zeros, header says {n_stored}")
    if n_entries and is_filler[-1]:
        raise CorruptFileError(f"corrupt .nnc file: tensor {name!r} ends with a filler entry")
    if np.any(gaps[is_filler] != (1 << gap_bits)):
        raise CorruptFileError(f"corrupt .nnc file: tensor {name!r} has a filler whose gap is not 2**gap_bits")
    positions = from_relative(gaps, is_filler)  # strictly increasing by construction (gaps >= 1)
    if positions.size and positions[-1] >= numel:
        raise CorruptFileError(f"corrupt .nnc file: tensor {name!r} has position {int(positions[-1])} beyond its {numel} elements")
    return name, SharedTensor(shape, codebook, bits, positions, entry_codes[~is_filler], gap_bits)


def _read_dense(r: _Reader, seen: set[str], allow_nonfinite: bool = False) -> tuple[str, np.ndarray]:
    name = _read_name(r, seen, "dense")
    code = r.one("B", f"dtype of {name!r}")
    if code not in _CODE_DTYPES:
        raise CorruptFileError(f"corrupt .nnc file: tensor {name!r} has unknown dtype code {code}")
    dtype = _CODE_DTYPES[code]
    shape, numel = _read_shape(r, name)
    raw = r.take(numel * dtype.itemsize, f"data of {name!r}")
    if dtype.kind == "b" and np.any(np.frombuffer(raw, dtype=np.uint8) > 1):
        raise CorruptFileError(f"corrupt .nnc file: bool tensor {name!r} holds bytes other than 0 and 1")
    values = np.frombuffer(raw, dtype=dtype)
    if not allow_nonfinite:
        _reject_nonfinite(values, name, "dense tensor data")
    return name, values.astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def _no_constant(token: str):
    raise ValueError(f"{token} is not JSON")


def read_nnc(data: bytes | bytearray | memoryview, *, allow_nonfinite: bool = False) -> CompressedModel:
    """Parse .nnc bytes; raises CorruptFileError (one line) on anything malformed.

    NaN or infinite codebook entries or dense float values are refused unless `allow_nonfinite`.
    """
    buf = memoryview(data).cast("B")
    if bytes(buf[:4]) != MAGIC:
        raise CorruptFileError("not an .nnc file (bad magic bytes; expected b'NNC\\x00')")
    if len(buf) < 8:
        raise CorruptFileError(f"truncated .nnc file: {len(buf)} bytes")
    version = struct.unpack_from("<H", buf, 4)[0]
    if version != FORMAT_VERSION:
        raise CorruptFileError(f"unsupported .nnc format version {version} (this nncompress reads version {FORMAT_VERSION}); upgrade nncompress or re-export the model")
    if len(buf) < _HEADER.size + 8 + _CRC_BYTES:
        raise CorruptFileError(f"truncated .nnc file: {len(buf)} bytes is shorter than the header")
    body = buf[:-_CRC_BYTES]
    (stored_crc,) = struct.unpack_from("<I", buf, len(buf) - _CRC_BYTES)
    if zlib.crc32(body) & 0xFFFFFFFF != stored_crc:
        raise CorruptFileError("corrupt .nnc file: checksum mismatch (the file is truncated or damaged)")

    r = _Reader(body)
    _, _, flags, meta_len = r.unpack("4sHHI", "header")
    if flags != 0:
        raise CorruptFileError(f"corrupt .nnc file: unknown flags {flags:#x}")
    if meta_len > MAX_METADATA_BYTES:
        raise CorruptFileError(f"corrupt .nnc file: metadata claims {meta_len} bytes (max {MAX_METADATA_BYTES})")
    try:
        metadata = json.loads(bytes(r.take(meta_len, "metadata")).decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CorruptFileError("corrupt .nnc file: metadata is not valid UTF-8 JSON (strict: no NaN or Infinity)") from None
    if not isinstance(metadata, dict):
        raise CorruptFileError("corrupt .nnc file: metadata is not a JSON object")
    n_shared, n_dense = r.unpack("II", "tensor counts")
    if n_shared > MAX_TENSORS or n_dense > MAX_TENSORS:
        raise CorruptFileError(f"corrupt .nnc file: claims {n_shared} shared and {n_dense} dense tensors (max {MAX_TENSORS} each)")
    seen: set[str] = set()
    # a shared record takes at least 42 bytes and a dense one 5, so a count the file cannot hold fails at once
    if n_shared * 42 + n_dense * 5 > r.left:
        raise CorruptFileError(f"truncated or corrupt .nnc file: {n_shared} shared and {n_dense} dense tensors cannot fit in {r.left} bytes")
    shared = dict(_read_shared(r, seen, allow_nonfinite) for _ in range(n_shared))
    dense = dict(_read_dense(r, seen, allow_nonfinite) for _ in range(n_dense))
    if r.left:
        raise CorruptFileError(f"corrupt .nnc file: {r.left} unexpected bytes after the last tensor")
    return CompressedModel(metadata, shared, dense, source_bytes=len(buf))


MAX_FILE_BYTES = 4 << 30


def load_nnc(path: str | os.PathLike, *, allow_nonfinite: bool = False) -> CompressedModel:
    """Read and validate a .nnc file; the error message names the path."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f".nnc file not found: {path}")
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise CorruptFileError(f"{path}: {size} bytes is beyond the .nnc limit of {MAX_FILE_BYTES} bytes; not an .nnc file")
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read .nnc file {path}: {e.strerror or e}") from None
    try:
        return read_nnc(data, allow_nonfinite=allow_nonfinite)
    except CorruptFileError as e:
        raise CorruptFileError(f"{path}: {e}") from None
