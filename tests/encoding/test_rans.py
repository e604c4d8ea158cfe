"""rANS (Duda 2013, ryg_rans renormalisation): bit-exact round trips, near-entropy sizes, hostile input."""
import math
import time

import numpy as np
import pytest

from nncompress.core.errors import UserError
from nncompress.encoding import CorruptFileError, SharedTensor, CompressedModel, huffman, rans
from nncompress.encoding.entropy import empirical_entropy_bits, stream_report


def roundtrip(symbols, alphabet, precision=rans.DEFAULT_PRECISION):
    s = np.asarray(symbols, dtype=np.int64)
    f = rans.build_frequencies(s, alphabet, precision)
    assert f.sum() == 1 << precision
    assert np.all(f[np.unique(s)] >= 1) if s.size else True
    data = rans.encode(s, f)
    out = rans.decode(data, f, s.size)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, s)
    return data, f


@pytest.mark.parametrize("n", [0, 1, 10, 100_000])
@pytest.mark.parametrize("kind", ["uniform", "geometric", "single", "two_skewed"])
def test_roundtrip_kinds(n, kind):
    rng = np.random.default_rng(n + len(kind))
    a = 256
    if kind == "uniform":
        s = rng.integers(0, a, n)
    elif kind == "geometric":
        s = np.minimum(rng.geometric(0.2, n) - 1, a - 1)
    elif kind == "single":
        s = np.full(n, 7)
    else:
        s = (rng.random(n) < 0.001).astype(np.int64)
    roundtrip(s, a)


@pytest.mark.parametrize("alphabet", [2, 3, 17, 256, 4096, 65536])
def test_roundtrip_alphabet_sizes(alphabet):
    rng = np.random.default_rng(alphabet)
    n = 20_000
    s = rng.integers(0, alphabet, n)
    precision = 16 if alphabet > (1 << 14) else 14
    roundtrip(s, alphabet, precision)
    roundtrip(np.array([alphabet - 1] * 5), alphabet, 12)  # the top symbol of the alphabet


@pytest.mark.parametrize("precision", [12, 13, 14, 15, 16])
def test_every_precision_roundtrips(precision):
    rng = np.random.default_rng(precision)
    roundtrip(np.minimum(rng.geometric(0.05, 30_000) - 1, 299), 300, precision)


def test_multi_lane_lengths_not_multiple_of_lanes():
    rng = np.random.default_rng(5)
    for n in [2 * 16384 + 1, 4 * 16384 + 3, 1 << 19 | 17]:
        assert rans.n_lanes(n) > 1
        roundtrip(np.minimum(rng.geometric(0.3, n) - 1, 40), 41)


def test_adversarial_all_rarest_symbol():
    # The table says symbol 1 has the rarest allowed frequency (1 of 2^p), but the stream is all 1s:
    # each symbol costs the maximum p bits and renormalisation emits two bytes every time.
    for p in (12, 16):
        f = np.array([(1 << p) - 1, 1], dtype=np.int64)
        s = np.ones(5000, dtype=np.int64)
        data = rans.encode(s, f)
        np.testing.assert_array_equal(rans.decode(data, f, s.size), s)
        assert abs(len(data) * 8 - p * s.size) <= 64


def test_frequencies_quantisation():
    f = rans.build_frequencies(np.array([0] * 999_000 + [1] * 1000 + [2]), 5, 12)
    assert f.sum() == 4096 and f[1] >= 1 and f[2] == 1 and f[3] == f[4] == 0
    f = rans.build_frequencies(np.arange(4096), 4096, 12)  # every slot forced to 1
    assert np.all(f == 1)
    with pytest.raises(UserError):
        rans.build_frequencies(np.arange(4097), 4097, 12)
    f = rans.build_frequencies(np.zeros(10, dtype=np.int64), 2, 14)  # no probability-1 symbol
    assert f.tolist() == [(1 << 14) - 1, 1]


def test_near_entropy_where_huffman_is_not():
    rng = np.random.default_rng(1)
    n = 100_000
    s = rng.choice(3, size=n, p=[0.9, 0.05, 0.05])
    h = empirical_entropy_bits(s)
    counts = np.bincount(s, minlength=3)
    huff = huffman.expected_bits(counts, huffman.code_lengths(counts))
    assert huff >= 1.05 * h  # Huffman: 1.1 bit/symbol vs H ~ 0.57
    p = rans.choose_precision(counts)
    f = rans.quantize_counts(counts, p)
    data = rans.encode(s, f)
    table = rans.serialize_frequencies(f)
    assert 8 * len(data) >= h
    assert 8 * len(data) <= 1.01 * h + 8 * len(table)
    np.testing.assert_array_equal(rans.decode(data, f, n), s)


def test_empirical_entropy_hand_checked():
    assert empirical_entropy_bits([0, 0, 1, 1]) == pytest.approx(4.0)
    # 3·log2(4/3) + log2(4) = 3.2451
    assert empirical_entropy_bits([0, 0, 0, 1]) == pytest.approx(3 * math.log2(4 / 3) + 2, abs=1e-12)
    assert empirical_entropy_bits([0, 0, 0, 1]) == pytest.approx(3.245, abs=1e-3)
    assert empirical_entropy_bits([5] * 10) == 0.0
    assert empirical_entropy_bits([]) == 0.0


def test_table_serialisation_roundtrip_and_compact():
    rng = np.random.default_rng(2)
    for a, p in [(2, 12), (300, 14), (65536, 16)]:
        f = rans.build_frequencies(np.minimum(rng.geometric(0.01, 10_000) - 1, a - 1), a, p)
        raw = rans.serialize_frequencies(f)
        g, end = rans.parse_frequencies(raw + b"xyz", a)
        np.testing.assert_array_equal(g, f)
        assert end == len(raw)
        assert len(raw) <= 2 + 3 + 3 * (int(np.flatnonzero(f)[-1]) + 1)
    # precision byte, extent byte, two 2-byte frequencies (1366, 1365); the third (1365) is implied
    assert len(rans.serialize_frequencies(rans.build_frequencies([0, 1, 2], 3, 12))) == 6


def test_corrupt_table_bytes_rejected():
    f = rans.build_frequencies(np.arange(10), 10, 12)
    raw = rans.serialize_frequencies(f)
    for bad in [raw[:-1], raw[:1], b"", bytes([11]) + raw[1:], bytes([17]) + raw[1:]]:
        with pytest.raises(CorruptFileError):
            rans.parse_frequencies(bad, 10)
    with pytest.raises(CorruptFileError):
        rans.parse_frequencies(raw, 5)  # extent beyond the alphabet
    with pytest.raises(CorruptFileError):  # claims a huge extent with no bytes behind it: no allocation
        rans.parse_frequencies(bytes([12]) + b"\xff\xff\x7f", 1 << 24)


def test_truncated_and_flipped_streams_raise():
    rng = np.random.default_rng(3)
    s = np.minimum(rng.geometric(0.3, 5000) - 1, 15)
    f = rans.build_frequencies(s, 16, 14)
    data = rans.encode(s, f)
    for cut in [0, 3, len(data) // 2, len(data) - 1]:
        with pytest.raises(CorruptFileError):
            rans.decode(data[:cut], f, s.size)
    with pytest.raises(CorruptFileError):
        rans.decode(data + b"\0", f, s.size)
    detected = 0
    for i in range(60):
        bad = bytearray(data)
        pos = int(rng.integers(0, len(bad)))
        bad[pos] ^= 1 << int(rng.integers(0, 8))
        try:
            out = rans.decode(bytes(bad), f, s.size)
        except CorruptFileError:
            detected += 1
        else:
            assert not np.array_equal(out, s) or bytes(bad) == data
    assert detected >= 55  # the final-state check catches nearly every flip


def test_inconsistent_table_raises():
    s = np.array([0, 1, 2, 2, 1, 0, 3] * 50)
    f = rans.build_frequencies(s, 4, 12)
    data = rans.encode(s, f)
    zero = f.copy()
    zero[3] = 0
    zero[0] += f[3]
    with pytest.raises(UserError):
        rans.encode(s, zero)  # a present symbol with frequency 0
    with pytest.raises(CorruptFileError):
        rans.decode(data, zero, s.size)  # decodes something else: the final-state check fails
    for bad in [f[:1], f * 2 + 0, np.append(f, 1), np.array([4096, 0]), f.astype(float), -f]:
        with pytest.raises(CorruptFileError):
            rans.decode(data, bad, s.size)


def test_symbol_count_bounded_by_stream_length():
    f = np.array([(1 << 12) - 1, 1], dtype=np.int64)
    data = rans.encode(np.zeros(10, dtype=np.int64), f)
    bound = rans.max_symbols(len(data), f)
    assert 10 <= bound < 10**9
    with pytest.raises(CorruptFileError):
        rans.decode(data, f, 10**12)  # refused before allocating
    with pytest.raises(CorruptFileError):
        rans.decode(data, f, 11)
    with pytest.raises(CorruptFileError):
        rans.decode(b"", f, 1)
    with pytest.raises(CorruptFileError):
        rans.decode(b"\0\0\0\0", f, 1)  # initial state below L
    # An ordinary table bounds n by about one symbol per bit of stream, like Huffman.
    g = rans.build_frequencies(np.arange(4), 4, 12)
    assert rans.max_symbols(100, g) <= 8 * 100 // 2 * 1.02 + 1


def test_bound_holds_for_real_streams():
    rng = np.random.default_rng(9)
    for probs in ([0.5, 0.5], [0.999, 0.001], [0.9, 0.05, 0.05]):
        s = rng.choice(len(probs), size=50_000, p=probs)
        f = rans.build_frequencies(s, len(probs), 16)
        data = rans.encode(s, f)
        assert s.size <= rans.max_symbols(len(data), f)


def test_speed_million_symbols():
    rng = np.random.default_rng(4)
    s = np.minimum(rng.geometric(0.1, 1_000_000) - 1, 255)
    f = rans.build_frequencies(s, 256, 14)
    t = time.perf_counter()
    data = rans.encode(s, f)
    out = rans.decode(data, f, s.size)
    assert time.perf_counter() - t < 10.0
    np.testing.assert_array_equal(out, s)
    assert 8 * len(data) <= 1.002 * empirical_entropy_bits(s) + 64 * 32


def test_stream_report_small_model():
    rng = np.random.default_rng(6)
    w = rng.normal(size=(64, 80)).astype(np.float32)
    w[rng.random(w.shape) < 0.9] = 0  # ~90 % pruned
    nz = w[w != 0]
    codebook = np.quantile(nz, (np.arange(16) + 0.5) / 16).astype(np.float32)  # k-means-like centroids
    t = SharedTensor.from_dense(w, codebook, bits=4, gap_bits=5)
    w2 = rng.normal(size=(300,)).astype(np.float32)
    w2[rng.random(300) < 0.5] = 0
    t2 = SharedTensor.from_dense(w2, np.array([-1.0, 1.0], dtype=np.float32), bits=1, gap_bits=2)
    model = CompressedModel(shared={"fc.weight": t, "conv.weight": t2}, dense={"fc.bias": np.zeros(3, np.float32)})
    rows = stream_report(model)
    assert [(r.tensor, r.stream) for r in rows] == [
        ("fc.weight", "codes"), ("fc.weight", "gaps"), ("conv.weight", "codes"), ("conv.weight", "gaps"),
    ]
    for r in rows:
        assert r.n_symbols > 0
        assert r.entropy_bits <= r.huffman_bits + 1e-9
        assert r.entropy_bits <= r.rans_bits + 1e-9
        assert r.rans_table_bytes > 0 and r.huffman_table_bytes > 0
        assert r.best in ("huffman", "rans")
        assert r.best == ("rans" if r.rans_bytes < r.huffman_bytes else "huffman")
    fc_codes = rows[0]
    assert fc_codes.alphabet_size == 17
    assert fc_codes.n_symbols >= np.count_nonzero(w)
