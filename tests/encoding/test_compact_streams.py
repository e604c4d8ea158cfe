"""Compact symbol streams (issue 13, item 9): uint8/uint16 streams built and coded chunk by chunk give the
bytes and positions the int64 whole-array path gives."""
import numpy as np
import pytest

from nncompress.encoding import huffman, rans
from nncompress.encoding.relative_index import positions_from_symbols, relative_streams, to_relative
from nncompress.encoding.streams import encode_stream
from nncompress.encoding.symbols import symbol_dtype, symbol_histogram


def test_symbol_dtype_is_the_smallest_unsigned_type():
    assert symbol_dtype(0) == np.uint8 and symbol_dtype(255) == np.uint8
    assert symbol_dtype(256) == np.uint16 and symbol_dtype(65535) == np.uint16
    assert symbol_dtype(65536) == np.uint32  # a 16-bit codebook of 2^16 centroids plus the filler symbol


def test_chunked_histogram_equals_bincount():
    s = np.array([3, 0, 0, 7, 3, 3, 1], dtype=np.uint8)
    for chunk in (1, 2, 5, 100):
        assert symbol_histogram(s, 4, chunk=chunk).tolist() == [2, 1, 0, 3, 0, 0, 0, 1]
        assert symbol_histogram(s, 10, chunk=chunk).tolist() == [2, 1, 0, 3, 0, 0, 0, 1, 0, 0]
    with pytest.raises(ValueError):
        symbol_histogram(np.array([1, -1]), 2)


@pytest.mark.parametrize("chunk", [1, 2, 3, 1 << 18])
def test_relative_streams_paper_example(chunk):
    # positions [1, 4, 20], 3-bit gaps (M = 8): raw gaps [2, 3, 16]; 16 = 8 (filler) + 8
    codes, gaps = relative_streams(np.array([1, 4, 20]), np.array([0, 1, 2]), 3, filler_code=3, chunk=chunk)
    assert codes.tolist() == [0, 1, 3, 2]  # the filler carries the reserved symbol K = 3
    assert gaps.tolist() == [1, 2, 7, 7]  # gap - 1
    assert codes.dtype == np.uint8 and gaps.dtype == np.uint8


@pytest.mark.parametrize("gap_bits, k", [(2, 3), (5, 32), (12, 300)])
def test_relative_streams_equal_to_relative_across_chunk_boundaries(gap_bits, k):
    rng = np.random.default_rng(gap_bits)
    positions = np.flatnonzero(rng.random(20_000) < 0.03)  # gaps of ~33: many fillers at 2 and 5 bits
    positions = np.concatenate([positions, [30_000, 30_001, 40_000 + (1 << 13)]])  # long runs of fillers
    codes = rng.integers(0, k, positions.size)
    gaps, is_filler = to_relative(positions, gap_bits)
    want_codes = np.full(gaps.size, k)
    want_codes[~is_filler] = codes
    for chunk in (1, 7, 64, 1 << 18):
        got_codes, got_gaps = relative_streams(positions.astype(np.int32), codes.astype(np.uint16), gap_bits, k, chunk=chunk)
        np.testing.assert_array_equal(got_codes, want_codes)
        np.testing.assert_array_equal(got_gaps, gaps - 1)
        assert got_gaps.dtype == (np.uint8 if gap_bits <= 8 else np.uint16)
        assert got_codes.dtype == (np.uint8 if k <= 255 else np.uint16)
        back = positions_from_symbols(got_gaps, got_codes == k, 50_000, np.int32, gap_bits, chunk=chunk)
        np.testing.assert_array_equal(back, positions)
        assert back.dtype == np.int32


def test_relative_streams_refuse_unsorted_or_negative_positions():
    with pytest.raises(ValueError, match="strictly increasing"):
        relative_streams(np.array([3, 3]), np.array([0, 0]), 4, 1)
    with pytest.raises(ValueError, match="strictly increasing"):
        relative_streams(np.array([2, 9, 5]), np.array([0, 0, 0]), 4, 1, chunk=2)  # the decrease straddles a chunk
    with pytest.raises(ValueError, match=">= 0"):
        relative_streams(np.array([-1, 4]), np.array([0, 0]), 4, 1)


def test_positions_from_symbols_checks_fillers_and_range():
    gaps = np.array([1, 2, 7, 7], dtype=np.uint8)  # the paper example: positions [1, 4, 20]
    filler = np.array([False, False, True, False])
    assert positions_from_symbols(gaps, filler, 21, gap_bits=3).tolist() == [1, 4, 20]
    with pytest.raises(ValueError, match="beyond its 20 elements"):
        positions_from_symbols(gaps, filler, 20, gap_bits=3)
    with pytest.raises(ValueError, match="filler whose gap"):
        positions_from_symbols(np.array([1, 2, 6, 7], dtype=np.uint8), filler, 21, gap_bits=3)


@pytest.mark.parametrize("block", [1, 2, 3, 5, 1 << 18])
def test_huffman_encode_blocks_carry_partial_bytes(monkeypatch, block):
    # lengths (1, 2, 3, 3): canonical codes 0, 10, 110, 111
    # symbols 3 0 1 2 3 1 0 -> 111 0 10 110 111 10 0 = 11101011 0111100(0) = 0xEB 0x78, 15 bits
    monkeypatch.setattr(huffman, "_ENCODE_BLOCK", block)
    sym = np.array([3, 0, 1, 2, 3, 1, 0], dtype=np.uint8)
    assert huffman.encode(sym, [1, 2, 3, 3]) == (b"\xeb\x78", 15)
    out = huffman.decode(b"\xeb\x78", 15, [1, 2, 3, 3], 7, dtype=np.uint8)
    assert out.dtype == np.uint8 and out.tolist() == sym.tolist()


def test_compact_symbols_code_to_the_same_bytes_as_int64():
    rng = np.random.default_rng(0)
    s = np.minimum(rng.geometric(0.4, 200_000) - 1, 32)  # skewed: rANS wins
    for coder in ("huffman", "rans", "auto"):
        wide, narrow = encode_stream(s.astype(np.int64), 33, coder), encode_stream(s.astype(np.uint8), 33, coder)
        assert (wide.coder, wide.table, wide.fields, wide.payload) == (narrow.coder, narrow.table, narrow.fields, narrow.payload)
    f = rans.build_frequencies(s, 33)
    data = rans.encode(s.astype(np.uint8), f, 8)
    assert data == rans.encode(s, f, 8)
    out = rans.decode(data, f, s.size, 8, dtype=np.uint16)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, s)
    with pytest.raises(Exception, match="frequency 0"):
        rans.encode(np.array([0, 1, 2], dtype=np.uint8), np.array([1 << 13, 1 << 13, 0]))
