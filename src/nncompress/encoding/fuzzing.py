"""Mutations of valid .nnc files, for the fuzz test and `benchmarks/fuzz.py`.

A CRC-32 catches every accidental flip, so a fuzzer that leaves it wrong only tests the checksum.
`mutate(..., recompute_crc=True)` rewrites the checksum after damaging the body, so the parser
behind it sees bytes that pass the CRC and must validate every field itself. Besides blind damage
(bit flips, byte overwrites, truncation, insertion, deletion) the mutator targets the fields a
reader trusts at its peril: counts, dims, lengths, bit widths, coder tags, rANS precisions, lane and
byte counts (format version 2), dtype codes, codebook and dense
float values (NaN, inf) and the JSON metadata (model name, in_shape, num_classes).
"""
from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from nncompress.encoding.container import MAGIC


@dataclass(frozen=True)
class Field:
    offset: int
    fmt: str  # struct code of one little-endian field: B, H, I, Q or f
    kind: str  # e.g. "n_shared", "dim", "code_nbits", "codebook", "dense_f32"


def field_map(data: bytes) -> tuple[list[Field], tuple[int, int]]:
    """Every fixed-width field of a valid .nnc file and the (start, end) of its JSON metadata."""
    fields: list[Field] = []
    pos = 0

    def add(fmt: str, kind: str) -> int:
        nonlocal pos
        (value,) = struct.unpack_from("<" + fmt, data, pos)
        fields.append(Field(pos, fmt, kind))
        pos += struct.calcsize(fmt)
        return value

    if data[:4] != MAGIC:
        raise ValueError("not an .nnc file")
    pos = 4
    version = add("H", "version")
    add("H", "flags")
    meta_len = add("I", "metadata_len")
    meta = (pos, pos + meta_len)
    pos += meta_len
    n_shared = add("I", "n_shared")
    n_dense = add("I", "n_dense")
    for _ in range(n_shared):
        name_len = add("H", "name_len")
        pos += name_len
        ndim = add("B", "ndim")
        for _ in range(ndim):
            add("Q", "dim")
        add("B", "bits")
        add("B", "gap_bits")
        k = add("I", "k")
        for _ in range(k):
            add("f", "codebook")
        add("I", "n_stored")
        add("I", "n_entries")
        for stream in ("code", "gap"):
            coder = add("B", f"{stream}_coder") if version >= 2 else 0
            if coder == 0:  # Huffman (the only coder of version 1)
                n = add("I", f"n_{stream}_lengths")
                for _ in range(n):
                    add("B", f"{stream}_length")
                nbits = add("Q", f"{stream}_nbits")
                pos += (nbits + 7) // 8  # (not `pos += add(...)`: add moves pos itself)
            else:  # rANS: u8 precision, LEB128 extent, extent - 1 LEB128 frequencies, lanes u32, n_bytes u64, payload
                add("B", f"{stream}_rans_precision")
                extent, pos = _skip_varint(data, pos)
                for _ in range(extent - 1):
                    _, pos = _skip_varint(data, pos)
                add("I", f"{stream}_rans_lanes")
                n_bytes = add("Q", f"{stream}_rans_nbytes")
                pos += n_bytes
    for _ in range(n_dense):
        name_len = add("H", "name_len")
        pos += name_len
        code = add("B", "dtype")
        ndim = add("B", "ndim")
        numel = 1
        for _ in range(ndim):
            numel *= add("Q", "dim")
        if code == 1:  # float32: values are fields too (NaN / inf targets)
            for _ in range(numel):
                add("f", "dense_f32")
        else:
            pos += numel * {2: 2, 3: 8, 4: 1, 5: 1, 6: 2, 7: 2, 8: 4, 9: 4, 10: 8, 11: 8, 12: 1}[code]
    if pos != len(data) - 4:
        raise ValueError(f"field_map walked {pos} bytes of a {len(data) - 4}-byte body")
    return fields, meta


def _skip_varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


_INT_LIMITS = {"B": 0xFF, "H": 0xFFFF, "I": 0xFFFFFFFF, "Q": 0xFFFFFFFFFFFFFFFF}
_FLOATS = (float("nan"), float("inf"), float("-inf"), 3.4e38, -0.0, 1e-45)
_HOSTILE_META = (
    ("in_shape", [1, 100000, 100000]), ("in_shape", [1, -28, 28]), ("in_shape", [1, 28]), ("in_shape", []),
    ("in_shape", [1, 2**40, 1]), ("in_shape", [1, 28, 28, 28, 28, 28]), ("in_shape", "1x28x28"), ("in_shape", [1.5, 28, 28]),
    ("in_shape", [True, 28, 28]), ("in_shape", [1, 3, 3]), ("in_shape", [3, 28, 28]), ("in_shape", [1, 16384, 1024]),
    ("num_classes", 10**9), ("num_classes", 200001), ("num_classes", 0), ("num_classes", -3), ("num_classes", 1e308),
    ("num_classes", "10"), ("num_classes", None), ("num_classes", 11), ("num_classes", 99999),
    ("model", "no_such_model"), ("model", "inception_v3"), ("model", "resnet20"), ("model", "lenet5"), ("model", "lenet300"),
    ("model", ["lenet5"]), ("model", "x" * 10000), ("model", None), ("model", "mobilenet_v2"),
)


def _set_int(body: bytearray, f: Field, rng: np.random.Generator) -> None:
    top = _INT_LIMITS[f.fmt]
    (old,) = struct.unpack_from("<" + f.fmt, body, f.offset)
    choice = int(rng.integers(10))
    new = [0, 1, top, top - 1, old + 1, old - 1, old * 2, old // 2,
           1 << int(rng.integers(0, 8 * struct.calcsize(f.fmt))), int(rng.integers(0, top, dtype=np.uint64, endpoint=True))][choice]
    struct.pack_into("<" + f.fmt, body, f.offset, int(new) & top)


def _with_metadata(body: bytearray, meta_span: tuple[int, int], rng: np.random.Generator) -> bytearray:
    start, end = meta_span
    try:
        meta = json.loads(bytes(body[start:end]))
    except ValueError:
        meta = {}
    choice = int(rng.integers(6))
    if choice < 4 and isinstance(meta, dict):
        key, value = _HOSTILE_META[int(rng.integers(len(_HOSTILE_META)))]
        meta[key] = value
        raw = json.dumps(meta).encode()
    elif choice == 4:
        raw = [b"[" * 100000, b'{"model": NaN}', b'{"model": "lenet5", "in_shape": [1, 28, 28], "num_classes": Infinity}',
               b"\xff\xfe{}", b"[]", b"{" + b'"a":1,' * 1000 + b'"b":2}'][int(rng.integers(6))]
    else:
        raw = json.dumps({k: v for k, v in (meta.items() if isinstance(meta, dict) else []) if rng.random() < 0.5}).encode()
    out = bytearray(body[:start]) + raw + body[end:]
    struct.pack_into("<I", out, 8, len(raw))
    return out


KINDS = ("bitflip", "byte", "truncate", "insert", "delete", "field", "float", "metadata")


def mutate(data: bytes, rng: np.random.Generator, *, recompute_crc: bool, kind: str | None = None,
           fields: tuple[list[Field], tuple[int, int]] | None = None) -> tuple[bytes, str]:
    """One random mutation of a valid .nnc file `data`; returns (bytes, kind).

    `recompute_crc=True` writes a valid checksum for the damaged body (so the parser is what is
    tested); otherwise the old checksum stays. `fields` is `field_map(data)`, if already computed.
    """
    fmap, meta_span = fields or field_map(data)
    body = bytearray(data[:-4])
    kind = kind or KINDS[int(rng.integers(len(KINDS)))]
    if kind == "bitflip":
        for _ in range(int(rng.integers(1, 5))):
            bit = int(rng.integers(8 * len(body)))
            body[bit // 8] ^= 1 << (bit % 8)
    elif kind == "byte":
        for _ in range(int(rng.integers(1, 5))):
            body[int(rng.integers(len(body)))] = int(rng.integers(256))
    elif kind == "truncate":
        body = body[: int(rng.integers(len(body)))]
    elif kind == "insert":
        at = int(rng.integers(len(body) + 1))
        body[at:at] = rng.integers(0, 256, size=int(rng.integers(1, 17)), dtype=np.uint8).tobytes()
    elif kind == "delete":
        at = int(rng.integers(len(body)))
        del body[at : at + int(rng.integers(1, 17))]
    elif kind == "field":
        ints = [f for f in fmap if f.fmt != "f"]
        for _ in range(int(rng.integers(1, 3))):
            _set_int(body, ints[int(rng.integers(len(ints)))], rng)
    elif kind == "float":
        floats = [f for f in fmap if f.fmt == "f"]
        for _ in range(int(rng.integers(1, 3))):
            f = floats[int(rng.integers(len(floats)))]
            struct.pack_into("<f", body, f.offset, _FLOATS[int(rng.integers(len(_FLOATS)))])
    elif kind == "metadata":
        body = _with_metadata(body, meta_span, rng)
    else:
        raise ValueError(f"unknown mutation kind {kind!r}; choose from {', '.join(KINDS)}")
    crc = zlib.crc32(body) if recompute_crc else struct.unpack("<I", data[-4:])[0]
    if kind == "truncate" and not recompute_crc:
        return bytes(data[: len(body)]), kind  # a plain cut, checksum and all
    return bytes(body) + struct.pack("<I", crc & 0xFFFFFFFF), kind
