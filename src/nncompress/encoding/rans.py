"""Static rANS: an entropy coder within a fraction of a percent of the empirical entropy.

Huffman (`huffman`) spends a whole number of bits per symbol, so on skewed streams it can sit far
above the Shannon bound (p = [0.9, 0.05, 0.05]: H = 0.569 bit/symbol, Huffman 1.1 bit/symbol).
Asymmetric numeral systems (J. Duda, "Asymmetric numeral systems: entropy coding combining speed
of Huffman coding with compression rate of arithmetic coding", arXiv:1311.2540, 2013) code a
symbol of quantised frequency f out of M = 2^precision in ~log2(M/f) bits, fractional bits included.

This is the range variant (rANS) with byte-wise renormalisation exactly as in F. Giesen's
ryg_rans (rans_byte.h, 2014): 32-bit state x kept in [L, 256·L) with L = 2^23;

    encode s:  while x >= ((L >> precision) << 8) * f_s:  emit x & 0xff; x >>= 8
               x = (x // f_s) << precision  +  x % f_s  +  start_s
    decode:    slot = x & (M - 1);  s = symbol with start_s <= slot < start_s + f_s
               x = f_s * (x >> precision) + slot - start_s
               while x < L:  x = (x << 8) | next byte

Precision 12..16 bits, default 14 (`DEFAULT_PRECISION`). Why that range: with L = 2^23 the
quotient x >> precision is always >= 2^(23 - precision) >= 2^7, which keeps the per-symbol
rounding loss below 2^-7 relative (log2(1 + 2^-7) ~ 0.011 bit at worst, far less on average) and
means renormalisation moves at most two bytes per symbol (what lets us vectorise it below).
Above 16 bits that guarantee degrades; below 12 bits the frequency quantisation of rare symbols
costs more than the table saves. 16 bits is needed when more than 2^14 distinct symbols occur
(a 65536-symbol alphabet); `choose_precision` picks the cheapest for given counts.

Speed: a per-symbol Python loop is too slow, so the stream is split round-robin over W
interleaved rANS states (symbol i goes to lane i mod W; Giesen, "Interleaved entropy coders",
arXiv:1402.3392, 2014) and each step codes one symbol in every lane with NumPy. W is a
deterministic function of the symbol count (`n_lanes`: 1 lane up to 32767 symbols, up to 32 at
>= 2^19), because each lane costs ~4 bytes of final state: a fixed 32 lanes would add ~1 % to a
10^5-symbol skewed stream.

Stream layout: W little-endian u32 final encoder states (the decoder's initial states), then the
renormalisation bytes in the order the decoder reads them. The decoder checks that every lane
ends in state L (where the encoder started) and that every byte was consumed, so truncation and
most bit flips are detected (rANS has no redundancy elsewhere; the container's CRC is the real
integrity check).

Safe bound on n_symbols (checked before anything is allocated): decoding a symbol maps
x -> x' = f·q + r with q = x >> precision, r < f, hence x - x' >= (M - f)·q with
q > x/M - 1 >= (x/M)(1 - 2^-7). So each symbol shrinks a lane's state by at least the factor
1 - (1 - f_max/M)(1 - 2^-7), i.e. consumes at least c = -log2(1 - (1 - f_max/M)(1 - 2^-7)) bits,
while a lane holds at most 8 bits of initial slack (x < 2^31, must end >= 2^23) plus 8 per byte
read. Therefore n_symbols <= 8·len(data) / c (`max_symbols`). Because every table has
f_max <= M - 1 (never a probability-1 symbol, which would make symbols free), c >= (1 - 2^-7)/(M ln 2)
and the worst case is n <= 5.6·M·len(data) (~366,000 symbols per byte at 16 bits: the price of
coding a p = 0.99998 symbol at its true cost); for ordinary tables (f_max <= M/2, c >= 0.98) it is
about 8·len(data), like Huffman's "at least one bit per symbol". Decoding time and the output
allocation are linear in n, hence bounded by the input size either way.
"""
from __future__ import annotations

import math

import numpy as np

from nncompress.core.errors import UserError
from nncompress.encoding.errors import CorruptFileError
from nncompress.encoding.symbols import symbol_histogram

RANS_L = 1 << 23
"""Lower end of the normalised state interval [L, 256·L) (ryg_rans RANS_BYTE_L)."""
MIN_PRECISION = 12
MAX_PRECISION = 16
DEFAULT_PRECISION = 14
MAX_LANES = 32
CONTAINER_STEPS = 2048
"""Most vectorised steps per stream in the .nnc container (`container_lanes`): bounds the Python loop."""
_LANE_SYMBOLS = 1 << 14  # at least this many symbols per lane before adding lanes (keeps state overhead < ~0.1 %)
_ROUND_SLACK = 1.0 - 2.0**-7  # (1 - M/L) lower bound with M <= 2^16, L = 2^23


def n_lanes(n_symbols: int) -> int:
    """Interleaved states used for `n_symbols`: 0 for none, else a power of two in 1..MAX_LANES."""
    n = int(n_symbols)
    if n <= 0:
        return 0
    per = n // _LANE_SYMBOLS
    if per < 2:
        return 1
    return min(MAX_LANES, 1 << (per.bit_length() - 1))


def _check_precision(precision_bits) -> int:
    if isinstance(precision_bits, bool) or int(precision_bits) != precision_bits or not MIN_PRECISION <= precision_bits <= MAX_PRECISION:
        raise UserError(f"rANS precision must be an integer in {MIN_PRECISION}..{MAX_PRECISION}, got {precision_bits!r}")
    return int(precision_bits)


def _symbols_array(symbols, alphabet_size: int) -> np.ndarray:
    s = np.asarray(symbols)
    if s.ndim != 1:
        raise UserError(f"rANS symbols must be 1-D, got shape {s.shape}")
    if s.size == 0:
        return np.zeros(0, dtype=np.int64)
    if s.dtype.kind not in "iu":
        raise UserError(f"rANS symbols must be integers, got {s.dtype}")
    if int(s.min()) < 0 or int(s.max()) >= alphabet_size:  # kept in its dtype: a uint8 stream is not widened
        raise UserError(f"rANS symbols must be in 0..{alphabet_size - 1}")
    return s


def quantize_counts(counts, precision_bits: int = DEFAULT_PRECISION) -> np.ndarray:
    """Integer frequencies summing to M = 2^precision, >= 1 for every counted symbol, all <= M - 1.

    Start from floor(c·M/n) (at least 1), then hand out the missing slots by largest remainder, or
    take excess slots back from the symbols where a slot costs least (smallest c·log2(f/(f-1))).
    A lone symbol gets M - 1 and a phantom neighbour 1: a probability-1 symbol would cost zero
    bits, which would let a few bytes claim unboundedly many symbols (see the module docstring).
    """
    p = _check_precision(precision_bits)
    m = 1 << p
    c = np.asarray(counts)
    if c.ndim != 1 or c.size < 2 or (c.size and c.dtype.kind not in "iu"):
        raise UserError("rANS counts must be a 1-D integer array over an alphabet of at least 2 symbols")
    c = c.astype(np.int64)
    if c.min() < 0:
        raise UserError("rANS counts must be >= 0")
    present = np.flatnonzero(c)
    if present.size > m:
        raise UserError(f"{present.size} distinct symbols do not fit rANS precision {p} (at most {m}); use a higher precision")
    f = np.zeros(c.size, dtype=np.int64)
    if present.size <= 1:
        s = int(present[0]) if present.size else 0
        f[s] = m - 1
        f[1 if s == 0 else 0] = 1
        return f
    n = int(c.sum())
    cp = c[present]
    scaled = cp.astype(np.float64) * (m / n)
    fp = np.maximum(np.floor(scaled).astype(np.int64), 1)
    diff = m - int(fp.sum())
    if diff > 0:  # largest remainder first; diff < present.size because each floor lost < 1
        rem = scaled - np.floor(scaled)
        top = np.argsort(-rem, kind="stable")[:diff]
        fp[top] += 1
        diff -= top.size
    while diff < 0:  # forced 1s overshot: take back where it costs least
        cand = np.flatnonzero(fp > 1)
        cost = cp[cand] * np.log2(fp[cand] / (fp[cand] - 1.0))
        take = cand[np.argsort(cost, kind="stable")[: -diff]]
        fp[take] -= 1
        diff += take.size
    if diff != 0:
        raise AssertionError("unreachable: frequency quantisation does not sum to 2^precision")
    f[present] = fp
    return f


def build_frequencies(symbols, alphabet_size: int, precision_bits: int = DEFAULT_PRECISION) -> np.ndarray:
    """Quantised frequency table (int64, length `alphabet_size`, sum 2^precision) for `symbols`."""
    a = int(alphabet_size)
    if a < 2 or a > (1 << 24):
        raise UserError(f"rANS alphabet size must be in 2..2^24, got {alphabet_size}")
    s = _symbols_array(symbols, a)
    return quantize_counts(symbol_histogram(s, a), precision_bits)


def validate_frequencies(freqs) -> tuple[np.ndarray, int]:
    """Check a table (from a file: treated as hostile); returns (int64 freqs, precision bits).

    Valid: 1-D non-negative integers, at least 2 entries, summing to 2^p with p in 12..16, none
    equal to 2^p. Raises CorruptFileError.
    """
    f = np.asarray(freqs)
    if f.ndim != 1 or f.size < 2 or f.dtype.kind not in "iu":
        raise CorruptFileError("rANS frequency table must be a 1-D integer array of at least 2 entries")
    f = f.astype(np.int64)
    if f.min() < 0:
        raise CorruptFileError("rANS frequency table has a negative entry")
    total = int(f.sum())
    p = total.bit_length() - 1
    if total != (1 << p) or not MIN_PRECISION <= p <= MAX_PRECISION:
        raise CorruptFileError(f"rANS frequencies sum to {total}, not a power of two 2^{MIN_PRECISION}..2^{MAX_PRECISION}")
    if int(f.max()) >= total:
        raise CorruptFileError("rANS frequency table gives one symbol probability 1")
    return f, p


def max_symbols(n_bytes: int, freqs) -> int:
    """Most symbols a valid stream of `n_bytes` can hold under `freqs` (module docstring's bound)."""
    f, p = validate_frequencies(freqs)
    m = 1 << p
    c = -math.log2(1.0 - (1.0 - int(f.max()) / m) * _ROUND_SLACK)
    return int(8 * int(n_bytes) / c * (1 + 1e-9)) + 1


def container_lanes(n_symbols: int) -> int:
    """Lanes the .nnc container uses for `n_symbols`: enough that no stream takes more than
    `CONTAINER_STEPS` vectorised steps (each lane's 4-byte state then pays for >= 2048 symbols,
    < 0.016 bit/symbol), and never fewer than `n_lanes` gives."""
    n = int(n_symbols)
    if n <= 0:
        return 0
    return max(n_lanes(n), -(-n // CONTAINER_STEPS))


def _check_lanes(lanes, n: int) -> int:
    if lanes is None:
        return n_lanes(n)
    w = int(lanes)
    if w < 1 or w > max(n, 1):
        raise UserError(f"rANS lanes must be in 1..{max(n, 1)} for {n} symbols, got {lanes!r}")
    return w


def encode(symbols, freqs, lanes: int | None = None) -> bytes:
    """rANS-encode `symbols` (ints indexing `freqs`); every occurring symbol needs a frequency >= 1.

    `lanes` interleaved states (default `n_lanes(len(symbols))`); the decoder must be given the same.
    Memory beyond the input is O(lanes) per step plus the output bytes; `symbols` keeps its dtype (uint8 /
    uint16 streams are indexed as they are, never widened to int64 as a whole).
    """
    try:
        f, p = validate_frequencies(freqs)
    except CorruptFileError as e:
        raise UserError(str(e)) from None
    s = _symbols_array(symbols, f.size)
    n = s.size
    if n == 0:
        return b""
    unpriced = np.flatnonzero((symbol_histogram(s, f.size) > 0) & (f == 0))
    if unpriced.size:
        raise UserError(f"symbol {int(unpriced[0])} occurs but has frequency 0 in the rANS table")
    w = _check_lanes(lanes, n)
    steps = -(-n // w)
    freq_t = f.astype(np.uint64)
    start_t = np.concatenate([[0], np.cumsum(f)[:-1]]).astype(np.uint64)
    xmax_t = (np.uint64(RANS_L >> p) << np.uint64(8)) * freq_t
    xmax2_t = xmax_t << np.uint64(8)
    shift_p = np.uint64(p)
    x = np.full(w, RANS_L, dtype=np.uint64)
    chunks: list[np.ndarray] = []
    u8, ff = np.uint64(8), np.uint64(0xFF)
    for t in range(steps - 1, -1, -1):
        lo = t * w
        hi = min(n, lo + w)
        m = hi - lo
        st = s[lo:hi]
        xv = x[:m]
        xm = xmax_t[st]
        one = xv >= xm
        if one.any():
            two = xv >= xmax2_t[st]  # x >> 8 >= xmax <=> x >= 256·xmax; three bytes are impossible (x < 2^31, xmax >= 2^15)
            e1 = (xv & ff).astype(np.uint8)
            if two.any():
                e2 = ((xv >> u8) & ff).astype(np.uint8)
                # decoder reads, per pass, lanes in ascending order: pass 1 the last byte emitted, pass 2 the first
                chunks.append(np.concatenate([np.where(two, e2, e1)[one], e1[two]]))
                xv = xv >> (one.astype(np.uint64) + two.astype(np.uint64)) * u8
            else:
                chunks.append(e1[one])
                xv = np.where(one, xv >> u8, xv)
        fq = freq_t[st]
        q, r = np.divmod(xv, fq)
        x[:m] = (q << shift_p) + r + start_t[st]
    head = x.astype("<u4").tobytes()
    chunks.reverse()
    body = np.concatenate(chunks).tobytes() if chunks else b""
    return head + body


def decode(data, freqs, n_symbols: int, lanes: int | None = None, out: np.ndarray | None = None, dtype=np.int64) -> np.ndarray:
    """Decode exactly `n_symbols` symbols (an array of `dtype`, int64 by default, or into `out`) from `data` under `freqs`.

    `lanes` must be what the encoder used (default `n_lanes(n_symbols)`). Raises CorruptFileError for
    an invalid table or lane count, an n_symbols the data cannot back (bound in the module docstring,
    checked before allocating), a stream that runs out, bytes left over, or a lane that does not end
    in the encoder's initial state.
    """
    f, p = validate_frequencies(freqs)
    n = int(n_symbols)
    buf = np.frombuffer(data, dtype=np.uint8)
    if n < 0:
        raise CorruptFileError("negative rANS symbol count")
    if n == 0:
        if buf.size:
            raise CorruptFileError(f"rANS stream has {buf.size} bytes but no symbols")
        return np.zeros(0, dtype=dtype) if out is None else out[:0]
    if lanes is None:
        w = n_lanes(n)
    else:
        w = int(lanes)
        if not 1 <= w <= n:
            raise CorruptFileError(f"rANS stream claims {w} lanes for {n} symbols")
    if buf.size < 4 * w:
        raise CorruptFileError(f"rANS stream of {buf.size} bytes is shorter than its {w} lane states")
    if n > max_symbols(buf.size, f):
        raise CorruptFileError(f"rANS stream of {buf.size} bytes cannot hold {n} symbols")
    m_total = 1 << p
    starts = np.concatenate([[0], np.cumsum(f)[:-1]])
    slot_sym = np.repeat(np.arange(f.size, dtype=np.int64), f)  # 2^p entries: the symbol owning each slot
    slot_freq = f[slot_sym].astype(np.uint64)  # per slot: f_s, and slot - start_s, so a step is two gathers
    slot_bias = (np.arange(m_total, dtype=np.int64) - starts[slot_sym]).astype(np.uint64)
    x = buf[: 4 * w].view("<u4").astype(np.uint64)
    if x.min() < RANS_L or x.max() >= (RANS_L << 8):
        raise CorruptFileError("rANS initial state out of range")
    mask, shift_p, u8, lim = np.uint64(m_total - 1), np.uint64(p), np.uint64(8), np.uint64(RANS_L)
    if out is None:
        out = np.empty(n, dtype=dtype)
    elif out.shape != (n,):
        raise UserError(f"rANS decode: out must have shape ({n},), got {out.shape}")
    pos, end = 4 * w, buf.size
    steps = -(-n // w)
    for t in range(steps):
        lo = t * w
        hi = min(n, lo + w)
        m = hi - lo
        xv = x[:m]
        slot = xv & mask
        out[lo:hi] = slot_sym[slot]
        xv = slot_freq[slot] * (xv >> shift_p) + slot_bias[slot]
        for _ in range(2):  # x' >= q >= 2^(23-p) >= 2^7, so two bytes always restore x >= L
            need = xv < lim
            k = int(np.count_nonzero(need))
            if not k:
                break
            if pos + k > end:
                raise CorruptFileError(f"rANS stream truncated after {lo} of {n} symbols")
            xv[need] = (xv[need] << u8) | buf[pos : pos + k]
            pos += k
        x[:m] = xv
    if pos != end:
        raise CorruptFileError(f"rANS stream has {end - pos} unused bytes after {n} symbols")
    if np.any(x != lim):
        raise CorruptFileError("rANS stream corrupt: final state check failed")
    return out


# ------------------------------------------------------------------------- frequency table bytes


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def serialize_frequencies(freqs) -> bytes:
    """Compact table bytes: u8 precision, LEB128 extent E (last non-zero symbol + 1), then LEB128
    frequencies of symbols 0..E-2 (the last one is implied: the total is 2^precision).

    Zero entries cost one byte; a frequency < 128 one byte, < 2^14 two bytes.
    """
    try:
        f, p = validate_frequencies(freqs)
    except CorruptFileError as e:
        raise UserError(str(e)) from None
    extent = int(np.flatnonzero(f)[-1]) + 1
    parts = [bytes([p]), _varint(extent)]
    parts.extend(_varint(int(v)) for v in f[: extent - 1])
    return b"".join(parts)


def table_bytes(freqs) -> int:
    """len(serialize_frequencies(freqs)), computed without building the bytes (LEB128: 7 bits per byte)."""
    f = np.asarray(freqs, dtype=np.int64)
    extent = int(np.flatnonzero(f)[-1]) + 1
    head = f[: extent - 1]
    return 1 + len(_varint(extent)) + int(head.size + np.count_nonzero(head >= 1 << 7) + np.count_nonzero(head >= 1 << 14)
                                          + np.count_nonzero(head >= 1 << 21))


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    v = 0
    for i in range(4):  # values here are < 2^24: at most 4 bytes
        if pos >= len(data):
            raise CorruptFileError("rANS frequency table truncated")
        b = data[pos]
        pos += 1
        v |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            return v, pos
    raise CorruptFileError("rANS frequency table: over-long integer")


def parse_frequencies(data, alphabet_size: int, offset: int = 0) -> tuple[np.ndarray, int]:
    """Inverse of `serialize_frequencies`: (freqs of length `alphabet_size`, offset after the table).

    The extent is checked against `alphabet_size` and the bytes present before allocating.
    Raises CorruptFileError.
    """
    data = bytes(data)
    a = int(alphabet_size)
    pos = int(offset)
    if pos >= len(data):
        raise CorruptFileError("rANS frequency table missing")
    p = data[pos]
    pos += 1
    if not MIN_PRECISION <= p <= MAX_PRECISION:
        raise CorruptFileError(f"rANS precision {p} out of range {MIN_PRECISION}..{MAX_PRECISION}")
    extent, pos = _read_varint(data, pos)
    if extent < 1 or extent > a or extent - 1 > len(data) - pos:
        raise CorruptFileError(f"rANS frequency table extent {extent} invalid (alphabet {a}, {len(data) - pos} bytes left)")
    if a < 2 or a > (1 << 24):
        raise CorruptFileError(f"rANS alphabet size {a} out of range")
    f = np.zeros(a, dtype=np.int64)
    total = 0
    for i in range(extent - 1):
        v, pos = _read_varint(data, pos)
        f[i] = v
        total += v
    last = (1 << p) - total
    if last <= 0:
        raise CorruptFileError("rANS frequency table overflows its total")
    f[extent - 1] = last
    validate_frequencies(f)
    return f, pos


def choose_precision(counts) -> int:
    """The precision in 12..16 minimising estimated coded bits + table bits for these counts."""
    c = np.asarray(counts, dtype=np.int64)
    present = int(np.count_nonzero(c))
    best, best_cost = None, math.inf
    for p in range(MIN_PRECISION, MAX_PRECISION + 1):
        if present > (1 << p):
            continue
        f = quantize_counts(c, p)
        used = c > 0
        bits = float(np.sum(c[used] * (p - np.log2(f[used]))))
        cost = bits + 8 * table_bytes(f)
        if cost < best_cost:
            best, best_cost = p, cost
    if best is None:
        raise UserError(f"{present} distinct symbols exceed rANS precision {MAX_PRECISION}")
    return best
