"""The .nnc container: pruned, weight-shared tensors as entropy-coded indices and relative positions.

Deep Compression (Han, Mao & Dally 2016) stores each layer as (1) a codebook of K float32
centroids, (2) one codebook index per surviving weight and (3) the gap to the previous survivor
(see `relative_index`), and Huffman-codes (2) and (3); version 2 of the format codes each stream with Huffman or rANS, whichever is smaller. Everything else (biases, batch-norm,
unshared weights) is stored raw. The data model below is neutral: numpy arrays, no torch.

File layout, version 2 (all integers little-endian; version 1 differs only where noted):

    magic            4 B   b"NNC\\x00"
    version          u16   2 (a reader accepts 1 and 2 and refuses any other version)
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
        index stream: n_entries symbols over k + 1 (symbol k = filler)
        gap stream:   n_entries symbols gap - 1 over 2**gap_bits
        each stream (`streams`): coder u8 (0 Huffman, 1 rANS), then
            Huffman: n_lengths u32, u8 code length per symbol (missing trailing symbols have length 0),
                     nbits u64, ceil(nbits / 8) B
            rANS:    frequency table (u8 precision 12..16, LEB128 extent, LEB128 frequencies),
                     lanes u32, n_bytes u64, n_bytes B (lane states, then renormalisation bytes)
        (version 1: no coder byte, always the Huffman body)
    n_dense x dense tensor:
        name_len u16, name, dtype code u8, ndim u8, ndim x u64 dims, numel * itemsize raw bytes (C order)
    crc32            u32   zlib.crc32 of every byte before it

The writer (version 2) codes each stream with Huffman or rANS, whichever is smaller (`streams.encode_stream`);
`write_nnc(..., version=1)` still writes the Huffman-only version 1. `NNCWriter` / `open_nnc_writer` write a
file one tensor at a time (`write_nnc` is the same writer into memory, so the bytes are identical) and
`NNCReader` decodes one tensor at a time, so neither needs a second copy of a large model.

Caps: ndim <= 8; product of the non-zero dims <= 2**31; names <= 4096 B; metadata <= 16 MiB;
at most 2**20 tensors of each kind; code lengths <= 24 bits.

Robustness: the CRC is checked before any field is parsed (it catches every accidental 1-bit
flip; it is not a signature, so everything behind it is checked as if the file were crafted).
Every read is bounds-checked, every claimed size is compared with the bytes actually present
before anything is allocated (a Huffman stream of n bits holds at most n symbols, an rANS stream of
n bytes at most `rans.max_symbols(n, table)`, and its table, lane count and states are range-checked, so decoded
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
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nncompress.core.errors import UserError
from nncompress.encoding.errors import CorruptFileError
from nncompress.encoding.streams import CODERS, HUFFMAN, EncodedStream, encode_stream, read_huffman_body, read_stream
from nncompress.encoding.relative_index import MAX_GAP_BITS, positions_from_symbols, relative_streams
from nncompress.encoding.symbols import CHUNK, symbol_dtype

MAGIC = b"NNC\x00"
FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)
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
    """Sends the file's parts to `sink` (a callable taking bytes), keeps the running CRC-32 and counts
    bytes per report category (for `size_breakdown`); holds nothing but what `sink` keeps."""

    def __init__(self, sink) -> None:
        self.sink = sink
        self.crc = 0
        self.nbytes = 0
        self.sizes: Counter[str] = Counter()

    def put(self, category: str, data: bytes) -> None:
        if self.sink is not None:
            self.sink(data)
        self.crc = zlib.crc32(data, self.crc)
        self.nbytes += len(data)
        self.sizes[category] += len(data)

    def pack(self, category: str, fmt: str, *values) -> None:
        self.put(category, struct.pack("<" + fmt, *values))


@dataclass(frozen=True)
class StreamInfo:
    """What the writer did with one coded stream (`NNCWriter.streams`): sizes in bits, no payload."""

    tensor: str
    stream: str  # "codes" (codebook index per entry, symbol k = filler) or "gaps" (gap - 1)
    coder: str  # "huffman" or "rans"
    n_symbols: int
    alphabet_size: int
    entropy_bits: float  # empirical entropy of the stream (its own static statistics)
    coded_bits: int  # payload bits (Huffman bit count, or 8 x rANS bytes with the lane states)
    table_bits: int  # coder tag + table + size fields

    @property
    def total_bits(self) -> int:
        """Bits this stream takes in the file (a Huffman payload is padded to whole bytes)."""
        return self.table_bits + 8 * ((self.coded_bits + 7) // 8)


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


def _check_shared(name: str, t: SharedTensor) -> tuple[tuple[int, ...], np.ndarray, np.ndarray, np.ndarray]:
    """Validated (dims, float32 codebook, int64 positions, int64 codes) of a tensor about to be written."""
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
        if int(pos[0]) < 0 or int(pos[-1]) >= numel or not _strictly_increasing(pos):
            raise UserError(f"tensor {name!r}: positions must be strictly increasing flat indices in 0..{numel - 1}")
        if int(codes.min()) < 0 or int(codes.max()) >= k:
            raise UserError(f"tensor {name!r}: codes must index the codebook (0..{k - 1})")
    return dims, cb, pos, codes


def _strictly_increasing(pos: np.ndarray) -> bool:
    """pos[i] < pos[i + 1] for all i, checked `CHUNK` entries at a time in int64 (signed, so a decreasing
    uint64 pair shows as a non-positive difference instead of wrapping around)."""
    for lo in range(0, pos.size - 1, CHUNK):
        if np.any(np.diff(pos[lo : lo + CHUNK + 1].astype(np.int64)) <= 0):
            return False
    return True


def entry_streams(t: SharedTensor) -> tuple[np.ndarray, np.ndarray]:
    """The two symbol streams of a shared tensor: (index symbols, symbol k = filler; gap symbols = gap - 1),
    in the smallest unsigned dtypes for their alphabets (`relative_index.relative_streams`)."""
    k = int(np.asarray(t.codebook).size)
    return relative_streams(t.positions, t.codes, int(t.gap_bits), k)


def _write_stream(w: _Writer, version: int, coder: str, symbols: np.ndarray, alphabet: int, category: str) -> EncodedStream:
    enc = encode_stream(symbols, alphabet, "huffman" if version == 1 else coder)
    if version >= 2:
        w.pack("tensor_headers", "B", enc.coder)
    w.put("huffman_tables" if enc.coder == HUFFMAN else "rans_tables", enc.table)
    w.put("tensor_headers", enc.fields)
    w.put(category, enc.payload)
    return enc


def _write_shared(w: _Writer, name: str, t: SharedTensor, version: int = FORMAT_VERSION, coder: str = "auto") -> list[StreamInfo]:
    dims, cb, pos, codes = _check_shared(name, t)
    bits, gap_bits, k = int(t.bits), int(t.gap_bits), cb.size
    entry_codes, gap_syms = entry_streams(SharedTensor(dims, cb, bits, pos, codes, gap_bits))
    raw = _name_bytes(name)
    w.pack("tensor_headers", "H", len(raw))
    w.put("tensor_headers", raw)
    w.pack("tensor_headers", f"B{len(dims)}Q", len(dims), *dims)
    w.pack("tensor_headers", "BBI", bits, gap_bits, k)
    w.put("codebooks", cb.tobytes())
    w.pack("tensor_headers", "II", pos.size, entry_codes.size)
    out = []
    for stream, symbols, alphabet, category in (("codes", entry_codes, k + 1, "index_streams"),
                                                ("gaps", gap_syms, 1 << gap_bits, "position_streams")):
        enc = _write_stream(w, version, coder, symbols, alphabet, category)
        out.append(StreamInfo(name, stream, enc.coder_name, enc.n_symbols, alphabet, enc.entropy_bits, enc.coded_bits,
                              enc.table_bits - (8 if version == 1 else 0)))
    return out


def _write_dense(w: _Writer, name: str, array) -> None:
    a = np.asarray(array)
    if a.dtype.name not in DTYPE_CODES:
        raise UserError(f"dense tensor {name!r}: dtype {a.dtype} not supported (use one of {', '.join(DTYPE_CODES)})")
    dims = _check_shape(name, a.shape)
    if a.dtype.kind == "f" and not _all_finite(a):
        raise UserError(f"dense tensor {name!r} holds NaN or infinite values (a diverged model?); readers refuse such files")
    raw = _name_bytes(name)
    w.pack("tensor_headers", "H", len(raw))
    w.put("tensor_headers", raw)
    w.pack("tensor_headers", f"BB{len(dims)}Q", DTYPE_CODES[a.dtype.name], len(dims), *dims)
    flat = a.reshape(-1)  # a view when `a` is contiguous; each slice below is copied (and byte-swapped) on its own
    step = max(1, CHUNK * 8 // max(a.itemsize, 1))
    for lo in range(0, max(flat.size, 1), step):  # 8 MB at a time: a large unshared weight is never copied whole
        w.put("dense", np.ascontiguousarray(flat[lo : lo + step], dtype=a.dtype.newbyteorder("<")).tobytes())


def _all_finite(a: np.ndarray) -> bool:
    flat = a.reshape(-1)
    return all(np.isfinite(flat[lo : lo + CHUNK]).all() for lo in range(0, flat.size, CHUNK))


def _metadata_bytes(metadata) -> bytes:
    if not isinstance(metadata, dict):
        raise UserError(f"metadata must be a dict, got {type(metadata).__name__}")
    try:
        meta = json.dumps(metadata, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise UserError(f"metadata is not JSON-serialisable: {e}") from None
    if len(meta) > MAX_METADATA_BYTES:
        raise UserError(f"metadata is {len(meta)} bytes; the .nnc limit is {MAX_METADATA_BYTES}")
    return meta


class NNCWriter:
    """Writes a .nnc file piece by piece, so a model is encoded one tensor at a time (streaming).

    `sink` is a callable taking bytes (e.g. a file's `write`); the header goes out at once, then
    `add_shared` for each of the `n_shared` shared tensors, `add_dense` for each of the `n_dense`
    dense ones (in that order: the format puts all shared records first), then `finish()` appends
    the CRC. Only the tensor being encoded is held. `write_nnc` is this writer with an in-memory
    sink, so a streamed file and `write_nnc`'s bytes are identical. `streams` lists, per coded
    stream, the coder chosen, its empirical entropy and its coded and table bits.

    version 2 (default) tags each stream with its coder and takes rANS where smaller (`coder`:
    "auto", or "huffman" / "rans" to force one); version 1 writes the Huffman-only v1 layout.
    """

    def __init__(self, sink, metadata: dict, n_shared: int, n_dense: int, *, version: int = FORMAT_VERSION,
                 coder: str = "auto") -> None:
        if version not in READ_VERSIONS:
            raise UserError(f".nnc version must be one of {READ_VERSIONS}, got {version!r}")
        if coder not in CODERS:
            raise UserError(f"unknown entropy coder {coder!r}: use one of {', '.join(CODERS)}")
        meta = _metadata_bytes(metadata)
        if not 0 <= n_shared <= MAX_TENSORS or not 0 <= n_dense <= MAX_TENSORS:
            raise UserError(f"at most {MAX_TENSORS} shared and {MAX_TENSORS} dense tensors fit in a .nnc file")
        self.version, self.coder = int(version), coder
        self.n_shared, self.n_dense = int(n_shared), int(n_dense)
        self._shared_done = self._dense_done = 0
        self._names: set[str] = set()
        self._finished = False
        self.streams: list[StreamInfo] = []
        self.write_s = 0.0  # seconds spent writing the file (set by open_nnc_writer)
        self._w = _Writer(sink)
        self._w.put("header", _HEADER.pack(MAGIC, self.version, 0, len(meta)))
        self._w.put("metadata", meta)
        self._w.pack("header", "II", self.n_shared, self.n_dense)

    def _claim(self, name: str) -> None:
        if self._finished:
            raise UserError("NNCWriter: the file is already finished")
        if name in self._names:
            raise UserError(f"tensor {name!r} is written twice (or is both shared and dense)")
        self._names.add(name)

    def add_shared(self, name: str, t: SharedTensor) -> None:
        if self._shared_done >= self.n_shared or self._dense_done:
            raise UserError(f"NNCWriter: {self.n_shared} shared tensors were announced, all before the dense ones; "
                            f"cannot add {name!r} now")
        self._claim(name)
        self.streams.extend(_write_shared(self._w, name, t, self.version, self.coder))
        self._shared_done += 1

    def add_dense(self, name: str, array) -> None:
        if self._dense_done >= self.n_dense:
            raise UserError(f"NNCWriter: {self.n_dense} dense tensors were announced; cannot add {name!r}")
        self._claim(name)
        _write_dense(self._w, name, array)
        self._dense_done += 1

    def finish(self) -> int:
        """Append the CRC; returns the file's size in bytes."""
        if self._shared_done != self.n_shared or self._dense_done != self.n_dense:
            raise UserError(f"NNCWriter: announced {self.n_shared} shared and {self.n_dense} dense tensors, "
                            f"wrote {self._shared_done} and {self._dense_done}")
        if not self._finished:
            crc = struct.pack("<I", self._w.crc & 0xFFFFFFFF)
            if self._w.sink is not None:
                self._w.sink(crc)
            self._w.sizes["checksum"] += _CRC_BYTES
            self._w.nbytes += _CRC_BYTES
            self._finished = True
        return self._w.nbytes

    @property
    def sizes(self) -> dict[str, int]:
        return dict(self._w.sizes)


def _serialise(model: CompressedModel, sink, version: int = FORMAT_VERSION, coder: str = "auto") -> NNCWriter:
    both = set(model.shared) & set(model.dense)
    if both:
        raise UserError(f"tensor {sorted(both)[0]!r} is both shared and dense")
    w = NNCWriter(sink, model.metadata, len(model.shared), len(model.dense), version=version, coder=coder)
    for name, t in model.shared.items():
        w.add_shared(name, t)
    for name, a in model.dense.items():
        w.add_dense(name, a)
    w.finish()
    return w


def write_nnc(model: CompressedModel, *, version: int = FORMAT_VERSION, coder: str = "auto") -> bytes:
    """Serialise `model` to .nnc bytes (layout in the module docstring; `NNCWriter` for the options)."""
    parts: list[bytes] = []
    _serialise(model, parts.append, version, coder)
    return b"".join(parts)


_BREAKDOWN_KEYS = ("header", "metadata", "tensor_headers", "codebooks", "huffman_tables", "rans_tables", "index_streams",
                   "position_streams", "dense", "checksum")


def size_breakdown(model: CompressedModel, *, version: int = FORMAT_VERSION, coder: str = "auto") -> dict[str, int]:
    """Exact bytes per part of the .nnc file; the parts add up to "total" = len(write_nnc(model)).

    Keys: header, metadata, tensor_headers (names, shapes, counts, coder tags and stream sizes),
    codebooks, huffman_tables, rans_tables, index_streams (coded codebook indices), position_streams
    (coded gaps), dense, checksum, total.
    """
    w = _serialise(model, None, version, coder)
    out = {k: int(w.sizes.get(k, 0)) for k in _BREAKDOWN_KEYS}
    out["total"] = sum(out.values())
    return out


def stream_stats(model: CompressedModel, *, version: int = FORMAT_VERSION, coder: str = "auto") -> list[StreamInfo]:
    """Per coded stream of `model` as `write_nnc` codes it: coder, empirical entropy, coded and table bits."""
    return _serialise(model, None, version, coder).streams


class _FileSink:
    """Writes to a file and counts the seconds spent writing (what a streamed save reports as "save")."""

    def __init__(self, f) -> None:
        self.f = f
        self.seconds = 0.0

    def __call__(self, data: bytes) -> None:
        t = time.perf_counter()
        self.f.write(data)
        self.seconds += time.perf_counter() - t


@contextmanager
def open_nnc_writer(path: str | os.PathLike, metadata: dict, n_shared: int, n_dense: int, *, version: int = FORMAT_VERSION,
                    coder: str = "auto"):
    """`with open_nnc_writer(path, ...) as w:` add tensors one by one; on a clean exit the CRC is written and
    the temp file (same directory) is fsynced and renamed over `path` (atomic); on an error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would
        with os.fdopen(fd, "wb", buffering=1 << 20) as f:
            sink = _FileSink(f)
            w = NNCWriter(sink, metadata, n_shared, n_dense, version=version, coder=coder)
            yield w
            w.finish()
            t = time.perf_counter()
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        w.write_s = sink.seconds + time.perf_counter() - t
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_nnc(path: str | os.PathLike, model: CompressedModel, *, version: int = FORMAT_VERSION, coder: str = "auto") -> Path:
    """Write `model` to `path` atomically (temp file + rename), one tensor at a time."""
    both = set(model.shared) & set(model.dense)
    if both:
        raise UserError(f"tensor {sorted(both)[0]!r} is both shared and dense")
    with open_nnc_writer(path, model.metadata, len(model.shared), len(model.dense), version=version, coder=coder) as w:
        for name, t in model.shared.items():
            w.add_shared(name, t)
        for name, a in model.dense.items():
            w.add_dense(name, a)
    return Path(path)


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


def _reject_nonfinite(values: np.ndarray, name: str, what: str) -> None:
    if values.dtype.kind in "fc" and values.size and not np.isfinite(values).all():
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        raise CorruptFileError(f"corrupt .nnc file: {what} of {name!r} holds {bad} NaN or infinite values "
                               "(a diverged or damaged model; pass allow_nonfinite=True to load it anyway)")


@dataclass(frozen=True)
class TensorInfo:
    """A record's header, read without decoding its data (`NNCReader.records(decode=False)`)."""

    kind: str  # "shared" or "dense"
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype  # float32 for shared tensors
    nnz: int | None = None  # stored non-zeros of a shared tensor


def _read_shared(r: _Reader, seen: set[str], allow_nonfinite: bool = False, version: int = FORMAT_VERSION,
                 decode: bool = True, compact: bool = False) -> tuple[str, SharedTensor | TensorInfo]:
    """One shared record. Its streams are decoded into uint8 / uint16 arrays and the positions rebuilt a chunk
    at a time (`relative_index.positions_from_symbols`); the SharedTensor holds int64 positions and codes, or
    with `compact` int32 positions (every position is < numel <= 2^31) and codes in the smallest unsigned
    dtype for the codebook: ~5 bytes per stored weight instead of 16 (what `export.nnc.load_into` uses)."""
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
    streams = []
    for what, alphabet in ((f"index stream of {name!r}", k + 1), (f"gap stream of {name!r}", 1 << gap_bits)):
        if version == 1:
            streams.append(read_huffman_body(r, alphabet, n_entries, what, decode, compact=True))
        else:
            streams.append(read_stream(r, alphabet, n_entries, what, decode, compact=True))
    if not decode:
        return name, TensorInfo("shared", name, shape, np.dtype(np.float32), int(n_stored))
    entry_codes, gap_symbols = streams
    is_filler = entry_codes == k
    n_fillers = int(np.count_nonzero(is_filler))
    if n_entries - n_fillers != n_stored:
        raise CorruptFileError(f"corrupt .nnc file: tensor {name!r} decodes to {n_entries - n_fillers} non-zeros, header says {n_stored}")
    if n_entries and is_filler[-1]:
        raise CorruptFileError(f"corrupt .nnc file: tensor {name!r} ends with a filler entry")
    try:  # strictly increasing by construction (gaps >= 1); fillers' gaps and the range are checked
        positions = positions_from_symbols(gap_symbols, is_filler, numel, np.int32 if compact else np.int64, gap_bits)
    except ValueError as e:
        raise CorruptFileError(f"corrupt .nnc file: tensor {name!r} has {e}") from None
    del gap_symbols
    codes = entry_codes[~is_filler] if n_fillers else entry_codes
    return name, SharedTensor(shape, codebook, bits, positions, codes if compact else codes.astype(np.int64), gap_bits)


def _read_dense(r: _Reader, seen: set[str], allow_nonfinite: bool = False, decode: bool = True) -> tuple[str, np.ndarray | TensorInfo]:
    name = _read_name(r, seen, "dense")
    code = r.one("B", f"dtype of {name!r}")
    if code not in _CODE_DTYPES:
        raise CorruptFileError(f"corrupt .nnc file: tensor {name!r} has unknown dtype code {code}")
    dtype = _CODE_DTYPES[code]
    shape, numel = _read_shape(r, name)
    raw = r.take(numel * dtype.itemsize, f"data of {name!r}")
    if dtype.kind == "b" and np.any(np.frombuffer(raw, dtype=np.uint8) > 1):
        raise CorruptFileError(f"corrupt .nnc file: bool tensor {name!r} holds bytes other than 0 and 1")
    if not decode:
        return name, TensorInfo("dense", name, shape, dtype.newbyteorder("="))
    values = np.frombuffer(raw, dtype=dtype)
    if not allow_nonfinite:
        _reject_nonfinite(values, name, "dense tensor data")
    return name, values.astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def _no_constant(token: str):
    raise ValueError(f"{token} is not JSON")


class NNCReader:
    """A checked .nnc file, read one record at a time (streaming decode).

    The constructor checks the magic, version (1 or 2) and CRC and parses the header and metadata;
    `records()` then yields ("shared", name, SharedTensor) and ("dense", name, ndarray) in file order,
    decoding one tensor at a time, so a caller can copy each into its destination and drop it before
    the next is decoded. `records(decode=False)` validates the headers (and the stream tables and
    sizes) without decoding anything and yields `TensorInfo`s, for checking names and shapes against
    a model before any weight is touched. Raises CorruptFileError (one line) on anything malformed.
    """

    def __init__(self, data: bytes | bytearray | memoryview, *, allow_nonfinite: bool = False) -> None:
        buf = memoryview(data).cast("B")
        if bytes(buf[:4]) != MAGIC:
            raise CorruptFileError("not an .nnc file (bad magic bytes; expected b'NNC\\x00')")
        if len(buf) < 8:
            raise CorruptFileError(f"truncated .nnc file: {len(buf)} bytes")
        version = struct.unpack_from("<H", buf, 4)[0]
        if version not in READ_VERSIONS:
            raise CorruptFileError(f"unsupported .nnc format version {version} (this nncompress reads versions "
                                   f"{', '.join(map(str, READ_VERSIONS))}); upgrade nncompress or re-export the model")
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
        # a shared record takes at least 42 bytes and a dense one 5, so a count the file cannot hold fails at once
        if n_shared * 42 + n_dense * 5 > r.left:
            raise CorruptFileError(f"truncated or corrupt .nnc file: {n_shared} shared and {n_dense} dense tensors cannot fit in {r.left} bytes")
        self.version, self.metadata = int(version), metadata
        self.n_shared, self.n_dense = int(n_shared), int(n_dense)
        self.source_bytes = len(buf)
        self.allow_nonfinite = allow_nonfinite
        self._body, self._start = body, r.pos

    def records(self, decode: bool = True, compact: bool = False) -> Iterator[tuple[str, str, SharedTensor | np.ndarray | TensorInfo]]:
        """(kind, name, value) per record in file order; `compact`: shared tensors with int32 positions and
        uint8 / uint16 codes instead of int64 (see `_read_shared`)."""
        r = _Reader(self._body)
        r.pos = self._start
        seen: set[str] = set()
        for _ in range(self.n_shared):
            name, t = _read_shared(r, seen, self.allow_nonfinite, self.version, decode, compact)
            yield "shared", name, t
        for _ in range(self.n_dense):
            name, a = _read_dense(r, seen, self.allow_nonfinite, decode)
            yield "dense", name, a
        if r.left:
            raise CorruptFileError(f"corrupt .nnc file: {r.left} unexpected bytes after the last tensor")

    def read(self) -> CompressedModel:
        shared: dict[str, SharedTensor] = {}
        dense: dict[str, np.ndarray] = {}
        for kind, name, value in self.records():
            (shared if kind == "shared" else dense)[name] = value
        return CompressedModel(self.metadata, shared, dense, source_bytes=self.source_bytes)


def read_nnc(data: bytes | bytearray | memoryview, *, allow_nonfinite: bool = False) -> CompressedModel:
    """Parse .nnc bytes (version 1 or 2); raises CorruptFileError (one line) on anything malformed.

    NaN or infinite codebook entries or dense float values are refused unless `allow_nonfinite`.
    """
    return NNCReader(data, allow_nonfinite=allow_nonfinite).read()


MAX_FILE_BYTES = 4 << 30


def read_nnc_file(path: str | os.PathLike) -> bytes:
    """The bytes of a .nnc file, refusing a missing path or one beyond `MAX_FILE_BYTES` (UserError, one line)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f".nnc file not found: {path}")
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise CorruptFileError(f"{path}: {size} bytes is beyond the .nnc limit of {MAX_FILE_BYTES} bytes; not an .nnc file")
        return path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read .nnc file {path}: {e.strerror or e}") from None


def open_nnc(path: str | os.PathLike, *, allow_nonfinite: bool = False) -> NNCReader:
    """An `NNCReader` over the file at `path` (checked: magic, version, CRC, header); errors name the path.

    Decode its records one by one (`.records()`); errors raised while decoding do not name the path."""
    data = read_nnc_file(path)
    try:
        return NNCReader(data, allow_nonfinite=allow_nonfinite)
    except CorruptFileError as e:
        raise CorruptFileError(f"{Path(path)}: {e}") from None


def load_nnc(path: str | os.PathLike, *, allow_nonfinite: bool = False) -> CompressedModel:
    """Read and validate a .nnc file; the error message names the path."""
    data = read_nnc_file(path)
    try:
        return read_nnc(data, allow_nonfinite=allow_nonfinite)
    except CorruptFileError as e:
        raise CorruptFileError(f"{Path(path)}: {e}") from None
