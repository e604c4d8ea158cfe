""".nnc format v2: per-stream coder tag, rANS inside the container, v1 still read, hostile v2 headers refused."""
import struct
import zlib

import numpy as np
import pytest

from nncompress.encoding import (
    CompressedModel,
    CorruptFileError,
    NNCReader,
    SharedTensor,
    read_nnc,
    size_breakdown,
    stream_stats,
    write_nnc,
)
from nncompress.encoding import rans
from nncompress.encoding.entropy import stream_report
from nncompress.encoding.fuzzing import field_map
from nncompress.encoding.huffman import entropy_bits


def _model(positions, codes, k, shape, gap_bits, bits=None, seed=0) -> CompressedModel:
    rng = np.random.default_rng(seed)
    bits = bits or max(1, int(np.ceil(np.log2(max(k, 2)))))
    cb = np.sort(rng.normal(size=k)).astype(np.float32)
    t = SharedTensor(shape, cb, bits, np.asarray(positions, np.int64), np.asarray(codes, np.int64), gap_bits)
    return CompressedModel({"model": "test"}, {"w": t}, {"b": np.arange(3, dtype=np.float32)})


def _streams(rng, kind):
    """(positions, codes, k, shape, gap_bits) for one adversarial or typical kind of stream."""
    if kind == "random":
        pos = np.flatnonzero(rng.random(60_000) < 0.3)
        return pos, rng.integers(0, 256, pos.size), 256, (60_000,), 4
    if kind == "skewed":  # one code at ~97 %, geometric gaps
        pos = np.flatnonzero(rng.random(80_000) < 0.5)
        codes = np.where(rng.random(pos.size) < 0.97, 3, rng.integers(0, 32, pos.size))
        return pos, codes, 32, (80_000,), 3
    if kind == "single":  # one index symbol and one gap symbol: rANS's phantom-symbol table
        pos = np.arange(0, 50_000, 2)
        return pos, np.full(pos.size, 5), 8, (50_000,), 1
    if kind == "max_alphabet":  # 16-bit codebook, all 65536 codes used: the index stream needs precision 16
        n = 70_000
        pos = np.sort(rng.choice(140_000, n, replace=False))
        codes = rng.permutation(np.concatenate([np.arange(65_536), rng.integers(0, 65_536, n - 65_536)]))
        return pos, codes, 65_536, (140_000,), 16
    if kind == "fillers":  # gap width 1 on a 0.1 % dense layer: the stream is almost all filler symbols
        pos = np.sort(rng.choice(200_000, 200, replace=False))
        return pos, rng.integers(0, 4, pos.size), 4, (200_000,), 1
    if kind == "near_certain":  # p(symbol) = 1 - 1/120000: costs far less than a bit per symbol
        pos = np.arange(120_000)
        codes = np.zeros(pos.size, np.int64)
        codes[77_777] = 1
        return pos, codes, 2, (120_000,), 1
    raise AssertionError(kind)


KINDS = ("random", "skewed", "single", "max_alphabet", "fillers", "near_certain")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("coder", ["rans", "auto"])
def test_rans_round_trips_bit_exactly_inside_the_container(kind, coder):
    rng = np.random.default_rng(KINDS.index(kind))
    model = _model(*_streams(rng, kind))
    data = write_nnc(model, coder=coder)
    back = read_nnc(data)
    t, b = model.shared["w"], back.shared["w"]
    np.testing.assert_array_equal(b.positions, t.positions)
    np.testing.assert_array_equal(b.codes, t.codes)
    np.testing.assert_array_equal(b.codebook.view(np.uint32), t.codebook.view(np.uint32))
    np.testing.assert_array_equal(back.dense["b"], model.dense["b"])
    coders = {s.stream: s.coder for s in stream_stats(model, coder=coder)}
    if coder == "rans":
        assert coders == {"codes": "rans", "gaps": "rans"}
    # the coder actually stored is the one the stats name (tag byte right after n_entries)
    fields, _ = field_map(data)
    tags = [struct.unpack_from("<B", data, f.offset)[0] for f in fields if f.kind in ("code_coder", "gap_coder")]
    assert tags == [{"huffman": 0, "rans": 1}[coders["codes"]], {"huffman": 0, "rans": 1}[coders["gaps"]]]


def test_auto_takes_the_smaller_coder_per_stream():
    rng = np.random.default_rng(3)
    model = _model(*_streams(rng, "skewed"))
    sizes = {c: len(write_nnc(model, coder=c)) for c in ("huffman", "rans", "auto")}
    assert sizes["auto"] <= min(sizes["huffman"], sizes["rans"])
    # index symbols: one code at p = 0.97 + 0.03/32, the rest spread over 32 codes:
    # H ~ 0.97·0.044 + 0.03·(log2(1/0.03) + 5) ~ 0.35 bit/symbol, while Huffman pays >= 1 bit per symbol
    n = model.shared["w"].positions.size
    index = {c: size_breakdown(model, coder=c)["index_streams"] for c in ("huffman", "rans")}
    assert index["huffman"] >= n / 8
    assert index["rans"] < 0.45 * n / 8


def test_coded_size_is_within_two_percent_of_entropy_plus_tables():
    rng = np.random.default_rng(4)
    pos = np.flatnonzero(rng.random(400_000) < 0.06)
    codes = np.minimum(np.abs(rng.normal(0, 6, pos.size)).astype(np.int64), 31)  # peaked, like trained weights
    model = _model(pos, codes, 32, (400_000,), 5)
    stats = stream_stats(model)
    entropy = sum(s.entropy_bits for s in stats)
    tables = sum(s.table_bits for s in stats)
    coded = sum(s.total_bits for s in stats)
    assert coded <= 1.02 * (entropy + tables)
    assert coded >= entropy  # no coder beats the empirical entropy of a static model
    # the per-stream entropy is the hand formula sum_s c_s log2(n / c_s) of the histograms the writer codes
    gaps = np.diff(pos, prepend=-1)
    m = 32
    fillers = (gaps - 1) // m
    expected = entropy_bits(np.bincount(np.concatenate([codes, np.full(int(fillers.sum()), 32)]), minlength=33))
    assert stats[0].entropy_bits == pytest.approx(expected, rel=1e-12)


def test_stream_report_names_the_stored_coder_and_its_bits():
    rng = np.random.default_rng(5)
    model = _model(*_streams(rng, "skewed"))
    rows = stream_report(model)
    stored = stream_stats(model)
    assert [(r.coder, r.coded_bits, r.table_bits) for r in rows] == [(s.coder, s.coded_bits, s.table_bits) for s in stored]
    assert all(r.coded_bits >= r.entropy_bits for r in rows)


def test_version_1_files_are_still_written_and_read():
    rng = np.random.default_rng(6)
    model = _model(*_streams(rng, "skewed"))
    v1 = write_nnc(model, version=1)
    assert struct.unpack_from("<H", v1, 4)[0] == 1
    assert struct.unpack_from("<H", write_nnc(model), 4)[0] == 2
    back = read_nnc(v1)
    np.testing.assert_array_equal(back.shared["w"].positions, model.shared["w"].positions)
    np.testing.assert_array_equal(back.shared["w"].codes, model.shared["w"].codes)
    assert NNCReader(v1).version == 1
    # v1 is exactly v2 forced to Huffman minus one coder byte per stream
    assert len(v1) == len(write_nnc(model, coder="huffman")) - 2
    assert size_breakdown(model, version=1)["total"] == len(v1)


def test_size_breakdown_counts_rans_tables():
    rng = np.random.default_rng(7)
    model = _model(*_streams(rng, "skewed"))
    sizes = size_breakdown(model, coder="rans")
    assert sizes["total"] == len(write_nnc(model, coder="rans"))
    assert sizes["rans_tables"] > 0 and sizes["huffman_tables"] == 0


# ----------------------------------------------------------------------------- hostile v2 headers


def _rans_file():
    rng = np.random.default_rng(8)
    pos = np.flatnonzero(rng.random(3000) < 0.4)
    model = _model(pos, rng.integers(0, 6, pos.size), 6, (3000,), 3)
    return write_nnc(model, coder="rans")


def _patched(data: bytes, kind: str, fmt: str, value: int) -> bytes:
    fields, _ = field_map(data)
    f = [f for f in fields if f.kind == kind][0]
    body = bytearray(data[:-4])
    struct.pack_into("<" + fmt, body, f.offset, value)
    return bytes(body) + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize(
    "kind, fmt, value, match",
    [
        ("code_coder", "B", 2, "unknown coder tag 2"),
        ("code_coder", "B", 0, "corrupt|truncated"),  # an rANS body read as Huffman
        ("code_rans_precision", "B", 11, "precision 11 out of range"),
        ("code_rans_precision", "B", 17, "precision 17 out of range"),
        ("gap_rans_precision", "B", 0, "precision 0 out of range"),
        ("code_rans_lanes", "I", 0, "0 rANS lanes"),
        ("code_rans_lanes", "I", 2, "2 rANS lanes for .*format uses 1"),
        ("code_rans_lanes", "I", 0xFFFFFFFF, "rANS lanes for"),
        ("gap_rans_lanes", "I", 2**20, "rANS lanes for"),
        ("code_rans_nbytes", "Q", 2**64 - 1, "truncated"),
        ("code_rans_nbytes", "Q", 3, "fewer than its 1 lane states"),
        ("code_rans_nbytes", "Q", 0, "fewer than its 1 lane states"),
        ("n_entries", "I", 2**31 - 1, "for 3000 elements"),
    ],
)
def test_hostile_v2_headers_are_refused_with_one_line(kind, fmt, value, match):
    data = _patched(_rans_file(), kind, fmt, value)
    with pytest.raises(CorruptFileError, match=match) as info:
        read_nnc(data)
    assert "\n" not in str(info.value)


def _frequency_table_offset(data: bytes, stream: str) -> int:
    fields, _ = field_map(data)
    return [f for f in fields if f.kind == f"{stream}_rans_precision"][0].offset


@pytest.mark.parametrize(
    "table, match",
    [
        (bytes([14, 200]), "extent"),  # extent 200 > alphabet 7 (k = 6, plus the filler)
        (bytes([14, 2, 0x80, 0x80, 0x01]), "overflows its total"),  # f0 = 2^14: nothing left for f1
        (bytes([14, 1]), "probability 1"),  # one symbol with all 2^14 slots
        (bytes([14, 0]), "extent 0"),
        (bytes([14, 2, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]), "over-long|extent"),
    ],
)
def test_hostile_frequency_tables_are_refused(table, match):
    data = _rans_file()
    at = _frequency_table_offset(data, "code")
    fields, _ = field_map(data)
    end = [f for f in fields if f.kind == "code_rans_lanes"][0].offset
    body = bytearray(data[:at]) + table + bytearray(data[end:-4])
    with pytest.raises(CorruptFileError, match=match) as info:
        read_nnc(bytes(body) + struct.pack("<I", zlib.crc32(body)))
    assert "\n" not in str(info.value)


def test_rans_state_out_of_range_and_symbol_count_beyond_the_bytes():
    data = _rans_file()
    fields, _ = field_map(data)
    nbytes_field = [f for f in fields if f.kind == "code_rans_nbytes"][0]
    state_at = nbytes_field.offset + 8
    body = bytearray(data[:-4])
    struct.pack_into("<I", body, state_at, 5)  # below L = 2^23
    with pytest.raises(CorruptFileError, match="initial state out of range"):
        read_nnc(bytes(body) + struct.pack("<I", zlib.crc32(body)))
    # a table claiming a near-certain symbol lets few bytes hold many symbols, but never more than max_symbols
    f = np.array([2**14 - 1, 1])
    assert rans.max_symbols(12, f) < 10**8


def test_an_empty_rans_stream_is_refused():
    """A writer never codes an empty stream with rANS; a file claiming one is crafted."""
    model = _model(np.zeros(0, np.int64), np.zeros(0, np.int64), 4, (10,), 2)
    data = write_nnc(model)
    fields, _ = field_map(data)
    coder = [f for f in fields if f.kind == "code_coder"][0]
    # replace the empty Huffman body (u32 0, u64 0) by an rANS header: precision 14, extent 2, f0 = 1
    body = bytearray(data[: coder.offset]) + bytes([1, 14, 2, 1]) + struct.pack("<IQ", 1, 4) + data[coder.offset + 1 + 12 : -4]
    with pytest.raises(CorruptFileError, match="no symbols"):
        read_nnc(bytes(body) + struct.pack("<I", zlib.crc32(body)))


def test_skimming_headers_decodes_nothing_but_checks_sizes():
    data = _rans_file()
    reader = NNCReader(data)
    infos = [info for _, _, info in reader.records(decode=False)]
    assert [(i.kind, i.name, i.shape) for i in infos] == [("shared", "w", (3000,)), ("dense", "b", (3,))]
    bad = _patched(data, "code_rans_lanes", "I", 0)
    with pytest.raises(CorruptFileError, match="lanes"):
        list(NNCReader(bad).records(decode=False))


def test_a_huge_symbol_count_behind_a_skewed_table_fails_fast_without_allocating():
    """n_entries = 2^31 - 1 claimed for a few-hundred-byte rANS stream: the lane rule needs ~4 MB of lane states."""
    import tracemalloc

    data = _rans_file()
    big = 2**31 - 1
    data = _patched(data, "dim", "Q", big)
    data = _patched(data, "n_stored", "I", big)
    data = _patched(data, "n_entries", "I", big)
    data = _patched(data, "code_rans_lanes", "I", rans.container_lanes(big))
    tracemalloc.start()
    try:
        with pytest.raises(CorruptFileError, match="lane states|cannot hold|truncated"):
            read_nnc(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20
