"""Huffman coding against hand-worked tables (CLRS 16.3, RFC 1951 3.2.2) and a heap-based reference."""
import heapq
import math
import time
from fractions import Fraction

import numpy as np
import pytest

from nncompress.encoding import CorruptFileError
from nncompress.encoding.huffman import (
    canonical_codes,
    code_lengths,
    decode,
    encode,
    entropy_bits,
    expected_bits,
    validate_lengths,
)


def kraft(lengths) -> Fraction:
    return sum((Fraction(1, 2**int(x)) for x in lengths if x > 0), Fraction(0))


def reference_huffman_cost(freqs) -> int:
    """Optimal unconstrained cost = sum of the weights of all merged (internal) nodes."""
    heap = [int(f) for f in freqs if f > 0]
    if len(heap) == 1:
        return heap[0]
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        a, b = heapq.heappop(heap), heapq.heappop(heap)
        cost += a + b
        heapq.heappush(heap, a + b)
    return cost


def bitstring(data: bytes, nbits: int) -> str:
    return "".join(format(b, "08b") for b in data)[:nbits]


# --- code lengths ---------------------------------------------------------------------------------


def test_clrs_example_lengths():
    # CLRS fig. 16.4: a:45 b:13 c:12 d:16 e:9 f:5 -> a=1, b=c=d=3, e=f=4 (cost 224)
    assert code_lengths([45, 13, 12, 16, 9, 5]).tolist() == [1, 3, 3, 3, 4, 4]
    assert expected_bits([45, 13, 12, 16, 9, 5], [1, 3, 3, 3, 4, 4]) == 224


def test_degenerate_alphabets():
    assert code_lengths([]).tolist() == []
    assert code_lengths([0, 0, 0]).tolist() == [0, 0, 0]
    assert code_lengths([0, 7, 0]).tolist() == [0, 1, 0]  # one symbol still needs one bit
    assert code_lengths([3, 0, 5]).tolist() == [1, 0, 1]


def test_length_limit_hand_worked():
    # unconstrained: [4, 4, 3, 2, 1] (cost 30). With max 3 bits the best is [3, 3, 3, 3, 1] (cost 32):
    # the only other full codes within 3 bits sorted by weight are [3, 3, 2, 2, 2] (cost 34).
    assert code_lengths([1, 1, 2, 4, 8]).tolist() == [4, 4, 3, 2, 1]
    assert code_lengths([1, 1, 2, 4, 8], max_len=3).tolist() == [3, 3, 3, 3, 1]


def test_length_limit_fibonacci_worst_case():
    fib = [1, 1]
    while len(fib) < 30:
        fib.append(fib[-1] + fib[-2])
    assert code_lengths(fib).max() == 24  # the unlimited tree would be 29 deep; default cap is 24
    for max_len in (5, 8, 12, 20):
        ls = code_lengths(fib, max_len=max_len)
        assert ls.max() <= max_len
        assert kraft(ls) == 1
        assert expected_bits(fib, ls) >= reference_huffman_cost(fib)
    with pytest.raises(ValueError):
        code_lengths([1] * 9, max_len=3)  # 9 symbols need more than 3 bits


@pytest.mark.parametrize("seed", range(20))
def test_optimal_and_within_one_bit_of_entropy(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 300))
    freqs = rng.integers(0, 1000, size=n) * (rng.random(n) < 0.8)
    freqs[rng.integers(n)] += 1
    ls = code_lengths(freqs)
    used = freqs > 0
    if used.sum() >= 2:
        assert kraft(ls) == 1
    assert (ls[~used] == 0).all() and (ls[used] > 0).all()
    total = int(freqs.sum())
    cost = expected_bits(freqs, ls)
    assert cost == reference_huffman_cost(freqs)
    h = entropy_bits(freqs)
    assert h <= cost + 1e-6 * total
    assert cost < h + total


def test_entropy_hand_worked():
    assert entropy_bits([1, 1]) == pytest.approx(2.0)  # 2 symbols x 1 bit
    assert entropy_bits([2, 1, 1]) == pytest.approx(6.0)  # 2*1 + 1*2 + 1*2
    assert entropy_bits([5]) == 0.0
    assert entropy_bits([]) == 0.0


# --- canonical codes ------------------------------------------------------------------------------


def test_canonical_codes_rfc1951_example():
    # RFC 1951 3.2.2: lengths (3,3,3,3,3,2,4,4) for A..H give
    # A 010, B 011, C 100, D 101, E 110, F 00, G 1110, H 1111
    lengths = [3, 3, 3, 3, 3, 2, 4, 4]
    codes = canonical_codes(lengths)
    got = [format(int(c), f"0{n}b") for c, n in zip(codes, lengths)]
    assert got == ["010", "011", "100", "101", "110", "00", "1110", "1111"]


def test_canonical_codes_clrs_lengths():
    # a=1 -> 0; b,c,d=3 -> first[3] = (0+1)<<1<<1 = 4: 100, 101, 110; e,f=4 -> first[4]=(4+3)<<1 = 14: 1110, 1111
    lengths = [1, 3, 3, 3, 4, 4]
    got = [format(int(c), f"0{n}b") for c, n in zip(canonical_codes(lengths), lengths)]
    assert got == ["0", "100", "101", "110", "1110", "1111"]


def test_canonical_codes_skip_unused_symbols():
    assert canonical_codes([0, 2, 0, 1, 2]).tolist() == [0, 0b10, 0, 0b0, 0b11]


# --- encode / decode ------------------------------------------------------------------------------


def test_encode_hand_worked_bits():
    lengths = [1, 3, 3, 3, 4, 4]  # a=0 b=100 c=101 d=110 e=1110 f=1111
    data, nbits = encode(np.array([0, 1, 5]), lengths)  # a b f -> 0 100 1111
    assert (data, nbits) == (bytes([0b01001111]), 8)
    data, nbits = encode(np.array([5, 0]), lengths)  # f a -> 11110, zero-padded
    assert (data, nbits) == (bytes([0b11110000]), 5)
    data, nbits = encode(np.array([3, 4, 2, 0]), lengths)  # d e c a -> 110 1110 101 0
    assert bitstring(data, nbits) == "110" + "1110" + "101" + "0"
    assert decode(data, nbits, lengths, 4).tolist() == [3, 4, 2, 0]


def test_decode_hand_written_stream():
    lengths = [3, 3, 3, 3, 3, 2, 4, 4]  # RFC 1951 codes above
    bits = "00" + "1111" + "010" + "1110" + "110"  # F H A G E
    data = (int(bits, 2) << (16 - len(bits))).to_bytes(2, "big")
    assert decode(data, len(bits), lengths, 5).tolist() == [5, 7, 0, 6, 4]


def _round_trip(symbols, alphabet, max_len=24):
    freqs = np.bincount(symbols, minlength=alphabet)
    ls = code_lengths(freqs, max_len=max_len)
    data, nbits = encode(symbols, ls)
    assert nbits == expected_bits(freqs, ls)
    assert len(data) == math.ceil(nbits / 8)
    out = decode(data, nbits, ls, symbols.size)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, symbols)


@pytest.mark.parametrize("seed", range(5))
def test_round_trip_random_and_skewed(seed):
    rng = np.random.default_rng(seed)
    _round_trip(rng.integers(0, 37, size=5000), 37)
    _round_trip(np.minimum(rng.geometric(0.3, size=20000) - 1, 200), 201)
    _round_trip(rng.integers(0, 65536, size=3000), 65537)


def test_round_trip_single_symbol_and_empty():
    _round_trip(np.full(1000, 3), 5)
    _round_trip(np.array([0]), 1)
    data, nbits = encode(np.zeros(0, dtype=np.int64), [1, 1])
    assert (data, nbits) == (b"", 0)
    assert decode(b"", 0, [1, 1], 0).size == 0
    assert decode(b"", 0, [], 0).size == 0


def test_round_trip_24_bit_codes_at_every_bit_offset():
    fib = [1, 1]
    while len(fib) < 30:
        fib.append(fib[-1] + fib[-2])
    ls = code_lengths(fib)
    assert ls.max() == 24
    rng = np.random.default_rng(1)
    syms = rng.integers(0, 30, size=4000)  # many long codes, so they start at every offset mod 8
    data, nbits = encode(syms, ls)
    np.testing.assert_array_equal(decode(data, nbits, ls, syms.size), syms)


def test_million_symbols_in_a_couple_of_seconds():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.full(32, 0.3))
    syms = rng.choice(32, size=1_000_000, p=p)
    t0 = time.perf_counter()
    ls = code_lengths(np.bincount(syms, minlength=32))
    data, nbits = encode(syms, ls)
    out = decode(data, nbits, ls, syms.size)
    elapsed = time.perf_counter() - t0
    np.testing.assert_array_equal(out, syms)
    assert elapsed < 8.0, f"1e6 symbols took {elapsed:.1f} s"


# --- validation -----------------------------------------------------------------------------------


def test_encoder_rejects_symbols_without_code():
    with pytest.raises(ValueError):
        encode(np.array([0, 1]), [1, 0])
    with pytest.raises(ValueError):
        encode(np.array([2]), [1, 1])


def test_kraft_violation_is_corrupt():
    with pytest.raises(CorruptFileError, match="Kraft"):
        validate_lengths([1, 1, 1])
    with pytest.raises(CorruptFileError, match="Kraft"):
        decode(b"\x00", 3, [1, 1, 1], 3)
    assert validate_lengths([1, 2, 2]).tolist() == [1, 2, 2]


def test_length_out_of_range_is_corrupt():
    with pytest.raises(CorruptFileError, match="out of range"):
        validate_lengths([25, 1])
    with pytest.raises(CorruptFileError):
        validate_lengths([-1, 1])


def test_invalid_code_is_corrupt():
    # only symbol 0 has a code ("0"); a "1" bit matches nothing
    with pytest.raises(CorruptFileError, match="invalid Huffman code at bit 1"):
        decode(bytes([0b01000000]), 2, [1, 0], 2)


def test_exhausted_stream_is_corrupt():
    data, nbits = encode(np.array([0, 1, 2]), [1, 2, 2])
    with pytest.raises(CorruptFileError, match="exhausted"):
        decode(data, nbits, [1, 2, 2], 4)
    with pytest.raises(CorruptFileError, match="inside a code word"):
        decode(data, nbits - 1, [1, 2, 2], 3)  # last code "11" cut to "1"
    with pytest.raises(CorruptFileError, match="unused bits"):
        decode(data, nbits, [1, 2, 2], 2)
    with pytest.raises(CorruptFileError, match="holds only"):
        decode(data, 100, [1, 2, 2], 3)
    with pytest.raises(CorruptFileError, match="cannot hold"):
        decode(data, nbits, [1, 2, 2], 10**12)  # never allocates for a claimed huge count
    with pytest.raises(CorruptFileError, match="empty code table"):
        decode(b"\x00", 1, [0, 0], 1)


def test_blocked_encoding_equals_one_block(monkeypatch):
    """The encoder works in blocks of symbols (bounded memory); block edges must not change a bit."""
    from nncompress.encoding import huffman as h

    rng = np.random.default_rng(11)
    symbols = np.minimum(rng.geometric(0.3, 5003) - 1, 40)
    lengths = h.code_lengths(np.bincount(symbols, minlength=41))
    whole = h.encode(symbols, lengths)
    monkeypatch.setattr(h, "_ENCODE_BLOCK", 997)
    assert h.encode(symbols, lengths) == whole
    np.testing.assert_array_equal(h.decode(whole[0], whole[1], lengths, symbols.size), symbols)
