"""The .nnc container: bit-exact round trips, a file written by hand byte for byte, and hostile input."""
import struct
import time
import tracemalloc
import zlib

import numpy as np
import pytest

from nncompress.core import UserError
from nncompress.encoding import (
    CompressedModel,
    CorruptFileError,
    SharedTensor,
    load_nnc,
    read_nnc,
    save_nnc,
    size_breakdown,
    write_nnc,
)

# ------------------------------------------------------------------------ a file written by hand
# shared tensor "w": shape (10,), bits 1, gap_bits 2 (gaps 1..4), codebook [-1.0, 0.5],
# non-zeros at 0 (code 1 -> 0.5) and 6 (code 0 -> -1.0).
# Raw gaps from -1: 1, 6; 6 > 4 -> filler at 0 + 4 = 4, then 2: entries gaps [1, 4, 2], filler [F, T, F].
# Index symbols (2 = filler): [1, 2, 0]; lengths [1, 2, 2] -> 0:"0" 1:"10" 2:"11" -> "10 11 0" = 5 bits 0xB0.
# Gap symbols (gap - 1): [0, 3, 1]; lengths [2, 2, 0, 2] -> 0:"00" 1:"01" 3:"10" -> "00 10 01" = 6 bits 0x24.


def shared_record(**kw) -> bytes:
    f = dict(
        name=b"w", dims=(10,), bits=1, gap_bits=2, codebook=(-1.0, 0.5), counts=(2, 3),
        code_lengths=(1, 2, 2), code_nbits=5, code_bytes=b"\xb0",
        gap_lengths=(2, 2, 0, 2), gap_nbits=6, gap_bytes=b"\x24",
    )
    f.update(kw)
    out = struct.pack("<H", len(f["name"])) + f["name"]
    out += struct.pack(f"<B{len(f['dims'])}Q", len(f["dims"]), *f["dims"])
    out += struct.pack("<BBI", f["bits"], f["gap_bits"], len(f["codebook"]))
    out += struct.pack(f"<{len(f['codebook'])}f", *f["codebook"])
    out += struct.pack("<II", *f["counts"])
    out += struct.pack("<I", len(f["code_lengths"])) + bytes(f["code_lengths"])
    out += struct.pack("<Q", f["code_nbits"]) + f["code_bytes"]
    out += struct.pack("<I", len(f["gap_lengths"])) + bytes(f["gap_lengths"])
    out += struct.pack("<Q", f["gap_nbits"]) + f["gap_bytes"]
    return out


def dense_record(name=b"b", dtype_code=1, dims=(3,), raw=struct.pack("<3f", 1.5, -2.0, 0.25)) -> bytes:
    return struct.pack(f"<H{len(name)}sBB{len(dims)}Q", len(name), name, dtype_code, len(dims), *dims) + raw


def build(meta=b'{"model":"hand"}', shared=None, dense=None, version=1, flags=0, counts=None, tail=b"", magic=b"NNC\x00"):
    shared = [shared_record()] if shared is None else shared
    dense = [dense_record()] if dense is None else dense
    n_shared, n_dense = counts or (len(shared), len(dense))
    body = struct.pack("<4sHHI", magic, version, flags, len(meta)) + meta
    body += struct.pack("<II", n_shared, n_dense) + b"".join(shared) + b"".join(dense) + tail
    return body + struct.pack("<I", zlib.crc32(body))


def test_reads_a_hand_written_file():
    m = read_nnc(build())
    assert m.metadata == {"model": "hand"}
    w = m.shared["w"]
    assert w.shape == (10,) and w.bits == 1 and w.gap_bits == 2
    assert w.codebook.dtype == np.float32 and w.codebook.tolist() == [-1.0, 0.5]
    assert w.positions.tolist() == [0, 6]
    assert w.codes.tolist() == [1, 0]
    assert w.to_dense().tolist() == [0.5, 0, 0, 0, 0, 0, -1.0, 0, 0, 0]
    assert m.dense["b"].dtype == np.float32 and m.dense["b"].tolist() == [1.5, -2.0, 0.25]


def test_writer_layout_matches_the_spec():
    model = read_nnc(build())
    data = write_nnc(model, version=1)
    assert data[:4] == b"NNC\x00"
    assert struct.unpack_from("<HHI", data, 4) == (1, 0, len(b'{"model":"hand"}'))
    assert data[12 : 12 + 16] == b'{"model":"hand"}'
    assert struct.unpack_from("<II", data, 28) == (1, 1)
    assert struct.unpack_from("<I", data, len(data) - 4)[0] == zlib.crc32(data[:-4])
    # the dense record is written exactly as specified, at the end
    assert data[:-4].endswith(dense_record())
    # the writer picks its own (equally short) Huffman tables; the reader rebuilds the same tensor
    again = read_nnc(data)
    assert again.shared["w"].positions.tolist() == [0, 6] and again.shared["w"].codes.tolist() == [1, 0]


# ------------------------------------------------------------------------------ round trips


def make_model(seed=0, numel_shape=(30, 40), density=0.1, bits=5, gap_bits=4) -> CompressedModel:
    rng = np.random.default_rng(seed)
    numel = int(np.prod(numel_shape))
    positions = np.flatnonzero(rng.random(numel) < density)
    k = 2**bits - 3
    codebook = rng.normal(size=k).astype(np.float32)
    codebook[0] = np.float32(-0.0)  # bit-exactness includes the sign of zero
    codes = rng.integers(0, k, size=positions.size)
    conv = SharedTensor((4, 3, 3, 3), np.array([0.5, -0.25], np.float32), 1, np.array([0, 1, 107]), np.array([1, 0, 1]), 8)
    return CompressedModel(
        metadata={"model": "lenet_300_100", "kwargs": {"num_classes": 10}, "input_shape": [1, 1, 28, 28],
                  "stages": [{"name": "prune", "sparsity": 0.92}, {"name": "share", "bits": bits}], "note": "ünïcode"},
        shared={
            "fc1.weight": SharedTensor(numel_shape, codebook, bits, positions, codes, gap_bits),
            "conv.weight": conv,
            "empty.weight": SharedTensor((5, 0), np.zeros(0, np.float32), 2, np.zeros(0, np.int64), np.zeros(0, np.int64), 3),
            "none.weight": SharedTensor((7, 7), np.array([1.0], np.float32), 1, np.zeros(0, np.int64), np.zeros(0, np.int64), 5),
        },
        dense={
            "fc1.bias": rng.normal(size=30).astype(np.float32),
            "half": rng.normal(size=(2, 3)).astype(np.float16),
            "double": rng.normal(size=(2, 2, 2)).astype(np.float64),
            "bn.num_batches_tracked": np.array(1234567890123, dtype=np.int64),
            "int8": np.array([-128, 0, 127], dtype=np.int8),
            "uint8": np.arange(5, dtype=np.uint8),
            "mask": np.array([[True, False], [False, True]]),
            "nothing": np.zeros((0, 3), dtype=np.float32),
            "big_endian": np.array([1.0, 2.0], dtype=">f4"),
        },
    )


@pytest.mark.parametrize("seed", range(4))
def test_round_trip_bit_exact(seed):
    model = make_model(seed, gap_bits=[1, 3, 4, 8][seed])
    back = read_nnc(write_nnc(model))
    assert back.metadata == model.metadata
    assert list(back.shared) == list(model.shared) and list(back.dense) == list(model.dense)
    for name, t in model.shared.items():
        b = back.shared[name]
        assert b.shape == tuple(t.shape) and b.bits == t.bits and b.gap_bits == t.gap_bits
        assert b.codebook.dtype == np.float32
        np.testing.assert_array_equal(b.codebook.view(np.uint32), np.asarray(t.codebook, np.float32).view(np.uint32))
        np.testing.assert_array_equal(b.positions, t.positions)
        np.testing.assert_array_equal(b.codes, t.codes)
        np.testing.assert_array_equal(b.to_dense(), t.to_dense())
    for name, a in model.dense.items():
        b = back.dense[name]
        assert b.dtype == a.dtype.newbyteorder("=") and b.shape == a.shape
        np.testing.assert_array_equal(b, a)


def test_from_dense_recovers_codes():
    codebook = np.array([-0.5, 0.25, 1.0], np.float32)
    w = np.array([[0, 1.0, 0], [-0.5, 0, 0.25]], np.float32)
    t = SharedTensor.from_dense(w, codebook, bits=2, gap_bits=2)
    assert t.positions.tolist() == [1, 3, 5] and t.codes.tolist() == [2, 0, 1]
    np.testing.assert_array_equal(read_nnc(write_nnc(CompressedModel({}, {"w": t}, {}))).shared["w"].to_dense(), w)


def test_size_breakdown_is_exact():
    model = make_model(1)
    data = write_nnc(model)
    sizes = size_breakdown(model)
    assert sizes["total"] == len(data)
    assert sum(v for k, v in sizes.items() if k != "total") == len(data)
    assert sizes["codebooks"] == 4 * sum(np.asarray(t.codebook).size for t in model.shared.values())
    assert sizes["dense"] == sum(np.asarray(a).nbytes for a in model.dense.values())
    assert sizes["checksum"] == 4 and sizes["header"] == 4 + 2 + 2 + 4 + 4 + 4
    assert sizes["metadata"] == len(data[12 : 12 + struct.unpack_from("<I", data, 8)[0]])
    assert sizes["index_streams"] > 0 and sizes["position_streams"] > 0


def test_compresses_like_deep_compression():
    # 8% of a 300x784 layer kept, 5-bit codes: index+gap streams are far below 32-bit dense storage
    rng = np.random.default_rng(0)
    positions = np.flatnonzero(rng.random(300 * 784) < 0.08)
    t = SharedTensor((300, 784), np.linspace(-1, 1, 32).astype(np.float32), 5, positions, rng.integers(0, 32, positions.size), 5)
    sizes = size_breakdown(CompressedModel({}, {"fc1.weight": t}, {}))
    assert sizes["total"] < 300 * 784 * 4 / 10
    assert sizes["index_streams"] <= (5 * positions.size * 1.1) / 8  # ~5 bits per entry (+fillers)


def test_save_and_load(tmp_path):
    model = make_model(2)
    path = save_nnc(tmp_path / "sub" / "m.nnc", model)
    assert path.read_bytes() == write_nnc(model)
    assert [p.name for p in path.parent.iterdir()] == ["m.nnc"]  # no temp file left behind
    back = load_nnc(path)
    np.testing.assert_array_equal(back.shared["fc1.weight"].positions, model.shared["fc1.weight"].positions)
    with pytest.raises(UserError, match="not found"):
        load_nnc(tmp_path / "missing.nnc")
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(CorruptFileError, match="m.nnc"):
        load_nnc(path)


def test_writer_rejects_bad_models():
    ok = make_model(0).shared["conv.weight"]

    def shared(**kw):
        fields = dict(shape=ok.shape, codebook=ok.codebook, bits=ok.bits, positions=ok.positions, codes=ok.codes, gap_bits=ok.gap_bits)
        fields.update(kw)
        return CompressedModel({}, {"w": SharedTensor(**fields)}, {})

    for bad in [
        shared(positions=np.array([1, 0, 5])),
        shared(positions=np.array([5, 2, 9], dtype=np.uint64)),  # unsigned diff would wrap around
        shared(positions=np.array([0, 1, 108])),  # numel is 108
        shared(codes=np.array([0, 2, 1])),  # only 2 centroids
        shared(codes=np.array([0, 1])),
        shared(bits=0),
        shared(gap_bits=17),
        shared(codebook=np.zeros(3, np.float32)),  # 3 > 2**1
        shared(shape=(1,) * 9),
        CompressedModel({"x": object()}, {}, {}),
        CompressedModel({}, {}, {"c": np.zeros(2, np.complex64)}),
        CompressedModel({}, {"w": ok}, {"w": np.zeros(2)}),
        CompressedModel({}, {}, {"": np.zeros(2)}),
    ]:
        with pytest.raises(UserError):
            write_nnc(bad)


# ------------------------------------------------------------------------------- damaged files


def small_file() -> bytes:
    rng = np.random.default_rng(3)
    positions = np.flatnonzero(rng.random(120) < 0.3)
    t = SharedTensor((12, 10), rng.normal(size=4).astype(np.float32), 2, positions, rng.integers(0, 4, positions.size), 3)
    return write_nnc(CompressedModel({"m": 1}, {"w": t}, {"b": np.arange(4, dtype=np.float32)}))


def test_every_truncation_is_corrupt():
    data = small_file()
    assert 100 < len(data) < 400
    for n in range(len(data)):
        with pytest.raises(CorruptFileError):
            read_nnc(data[:n])


def test_every_truncation_with_a_recomputed_checksum_is_corrupt():
    """Defeats the CRC so that every bounds check of the parser is hit, field by field."""
    body = small_file()[:-4]
    for n in range(len(body)):
        with pytest.raises(CorruptFileError) as info:
            read_nnc(body[:n] + struct.pack("<I", zlib.crc32(body[:n])))
        assert "\n" not in str(info.value)


def test_single_bit_flips_are_corrupt():
    data = small_file()
    rng = np.random.default_rng(0)
    for bit in rng.choice(8 * len(data), size=400, replace=False):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(CorruptFileError):  # CRC-32 detects every single-bit error
            read_nnc(bytes(flipped))


def test_fuzzed_body_with_valid_checksum_never_crashes():
    """Random damage with the CRC recomputed: parse cleanly or raise CorruptFileError, nothing else."""
    data = small_file()
    rng = np.random.default_rng(1)
    outcomes = {"ok": 0, "corrupt": 0}
    for _ in range(1000):
        body = bytearray(data[:-4])
        op = int(rng.integers(4))  # overwrite, flip, delete or insert a few bytes
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(8, len(body)))
            if op == 0:
                body[i] = int(rng.integers(0, 256))
            elif op == 1:
                body[i] ^= 1 << int(rng.integers(8))
            elif op == 2:
                del body[i : i + int(rng.integers(1, 9))]
            else:
                body[i:i] = rng.integers(0, 256, size=int(rng.integers(1, 9)), dtype=np.uint8).tobytes()
        mutated = bytes(body) + struct.pack("<I", zlib.crc32(body))
        try:
            m = read_nnc(mutated)
        except CorruptFileError as e:
            assert "\n" not in str(e)
            outcomes["corrupt"] += 1
        else:
            t = m.shared.get("w") or next(iter(m.shared.values()), None)
            if t is not None:  # whatever parsed is internally consistent
                assert np.all(np.diff(t.positions) > 0) and (t.positions.size == 0 or t.positions[-1] < t.numel)
                assert t.codes.size == 0 or t.codes.max() < t.codebook.size
            outcomes["ok"] += 1
    assert outcomes["corrupt"] > 500


def test_wrong_magic_and_unknown_version():
    with pytest.raises(CorruptFileError, match="not an .nnc file"):
        read_nnc(b"PK\x03\x04" + b"\x00" * 40)
    with pytest.raises(CorruptFileError, match="not an .nnc file"):
        read_nnc(b"")
    with pytest.raises(CorruptFileError, match="version 3 .*reads versions 1, 2"):
        read_nnc(build(version=3))


def _expect_corrupt(data: bytes, match: str):
    with pytest.raises(CorruptFileError, match=match) as info:
        read_nnc(data)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(flags=1), "flags"),
        (dict(meta=b"{not json"), "JSON"),
        (dict(meta=b"[1, 2]"), "JSON object"),
        (dict(meta=b"\xff\xfe"), "JSON"),
        (dict(meta=b"[" * 100000), "JSON"),  # deep nesting: RecursionError is caught
        (dict(tail=b"\x00"), "unexpected bytes"),
        (dict(counts=(2, 1)), "corrupt|truncated"),  # the dense record is misread as a shared one
        (dict(counts=(0xFFFFFFFF, 0)), "max"),
        (dict(dense=[dense_record(), dense_record()]), "twice"),
        (dict(dense=[dense_record(name=b"w")]), "twice"),
        (dict(dense=[dense_record(name=b"\xff")]), "UTF-8"),
        (dict(dense=[dense_record(name=b"")]), "name length"),
        (dict(dense=[dense_record(dtype_code=99)]), "dtype code"),
        (dict(dense=[dense_record(dtype_code=12, dims=(2,), raw=b"\x01\x02")]), "bool"),
        (dict(dense=[dense_record(dims=(4,))]), "truncated"),
        (dict(dense=[dense_record(dims=(1,) * 9)]), "dims"),
        (dict(shared=[shared_record(dims=(5,))]), "position 6 beyond"),
        (dict(shared=[shared_record(counts=(1, 3))]), "header says 1"),
        (dict(shared=[shared_record(counts=(2, 2))]), "unused bits"),
        (dict(shared=[shared_record(counts=(2, 11))]), "for 10 elements"),
        (dict(shared=[shared_record(counts=(4, 3))]), "non-zeros in"),
        (dict(shared=[shared_record(bits=0)]), "bits"),
        (dict(shared=[shared_record(gap_bits=17)]), "gap_bits"),
        (dict(shared=[shared_record(codebook=(1.0, 2.0, 3.0))]), "3 centroids for 1-bit"),
        (dict(shared=[shared_record(code_lengths=(1, 1, 1))]), "Kraft"),
        (dict(shared=[shared_record(code_lengths=(1, 2, 2, 0))]), "alphabet has 3"),
        (dict(shared=[shared_record(code_lengths=(1, 2, 25))]), "out of range"),
        (dict(shared=[shared_record(gap_lengths=(2, 2))]), "invalid Huffman code at bit 2"),  # table trimmed: no code for 3
        (dict(shared=[shared_record(code_bytes=b"\xb8")]), "ends inside a code word at bit 4"),  # "10 11 1"
        (dict(shared=[shared_record(code_nbits=4, code_bytes=b"\xb0")]), "inside a code word|exhausted"),
        # "10 0 11": the last entry is a filler
        (dict(shared=[shared_record(code_bytes=b"\x98")]), "ends with a filler"),
        # lengths (2, 2, 2): "00 10 01" now reads gap symbols [0, 2, 1], a filler with gap 3 instead of 4
        (dict(shared=[shared_record(gap_lengths=(2, 2, 2))]), "filler whose gap"),
    ],
)
def test_hostile_fields_with_valid_checksum(kwargs, match):
    _expect_corrupt(build(**kwargs), match)


def test_huge_claims_fail_fast_without_allocating():
    hostile = [
        # shape of 2**80 elements
        (build(shared=[shared_record(dims=(2**40, 2**40))]), "elements"),
        # zero elements, but a shape numpy itself refuses to build
        (build(shared=[shared_record(dims=(0, 2**40), counts=(0, 0))]), "beyond"),
        (build(dense=[dense_record(dims=(0, 2**31, 2**31), raw=b"")]), "beyond"),
        # the maximum legal shape with 2**31 - 1 claimed entries but a 5-bit stream
        (build(shared=[shared_record(dims=(2**16, 2**15), counts=(2**31 - 1, 2**31 - 1))]), "cannot hold"),
        # a bit count far beyond the file
        (build(shared=[shared_record(code_nbits=2**64 - 1)]), "truncated"),
        # a codebook of 2**16 centroids that is not there
        (build(shared=[struct.pack("<H1sB1QBBI", 1, b"w", 1, 10, 16, 2, 2**16)]), "truncated"),
        # 2**30 float64 (8 GiB) of dense data that is not there
        (build(dense=[dense_record(dtype_code=3, dims=(2**15, 2**15), raw=b"")]), "truncated"),
        # metadata length of 4 GiB
        (build(meta=b"{}")[:8] + struct.pack("<I", 0xFFFFFFFF) + build(meta=b"{}")[12:], "checksum"),
    ]
    # same claim, valid checksum
    body = bytearray(build(meta=b"{}")[:-4])
    body[8:12] = struct.pack("<I", 0xFFFFFFFF)
    hostile.append((bytes(body) + struct.pack("<I", zlib.crc32(body)), "metadata claims"))
    tracemalloc.start()
    try:
        for data, match in hostile:
            t0 = time.perf_counter()
            _expect_corrupt(data, match)
            assert time.perf_counter() - t0 < 1.0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"peak allocation {peak} bytes while rejecting hostile files"
