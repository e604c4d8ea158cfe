"""One coded symbol stream of a .nnc v2 file: a coder tag, then a Huffman or an rANS body, whichever is smaller.

Deep Compression (Han, Mao & Dally 2016, section 4) Huffman-codes its two streams per layer (codebook
indices, relative-index gaps). A prefix code spends a whole number of bits per symbol, so it sits up to
one bit per symbol above the empirical entropy H = sum_s c_s log2(n / c_s); static rANS (`rans`, Duda
2013) gets within ~0.1 % of it, but pays a frequency table and 4 bytes of final state per lane. The
writer prices both exactly (Huffman's size follows from the histogram and the code lengths; rANS is
estimated from its quantised table, and actually encoded when the estimate can win) and keeps the
smaller; a tie keeps Huffman.

Stream layout (little-endian):

    coder u8            0 = Huffman, 1 = rANS
    Huffman body        n_lengths u32, n_lengths x u8 code length (trailing unused symbols dropped),
                        nbits u64, ceil(nbits / 8) B   (exactly the v1 layout after the tag)
    rANS body           frequency table (`rans.serialize_frequencies`: u8 precision, LEB128 extent E,
                        E - 1 LEB128 frequencies; the last is implied by the total 2^precision),
                        lanes u32 (= `rans.container_lanes(n_symbols)`), n_bytes u64 (>= 4·lanes),
                        n_bytes B (lanes x u32 states, then the renormalisation bytes)

A reader validates every field before it sizes anything: the table's precision (12..16), extent
(<= the alphabet) and sum (exactly 2^precision, no probability-1 symbol); the lane count against the
symbol count and the bytes; the byte count against the bytes present; and the symbol count against
what those bytes can hold (`rans.max_symbols`), so a crafted header cannot make it allocate more than
the file pays for. The lane count is fixed by the symbol count (one lane per 2048 symbols, at least), so a
stream's lane states alone take >= 4 bytes per 2048 symbols: a crafted header cannot claim more than 512
symbols per byte of file, however skewed its table (without that rule a near-certain table would let
one byte back ~366,000 symbols, `rans.max_symbols`).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from nncompress.core.errors import UserError
from nncompress.encoding import huffman, rans
from nncompress.encoding.errors import CorruptFileError
from nncompress.encoding.symbols import symbol_dtype, symbol_histogram

HUFFMAN = 0
RANS = 1
CODER_NAMES = {HUFFMAN: "huffman", RANS: "rans"}
CODERS = ("auto", "huffman", "rans")


@dataclass(frozen=True)
class EncodedStream:
    """A coded stream ready to write: `tag + table + fields + payload` are its bytes in the file."""

    coder: int
    table: bytes  # Huffman code-length table (u32 count + lengths) or rANS frequency table
    fields: bytes  # Huffman: nbits u64; rANS: lanes u32 + n_bytes u64
    payload: bytes
    n_symbols: int
    alphabet_size: int
    entropy_bits: float  # empirical entropy of the symbols (stream's own static statistics)

    @property
    def coder_name(self) -> str:
        return CODER_NAMES[self.coder]

    @property
    def total_bytes(self) -> int:
        return 1 + len(self.table) + len(self.fields) + len(self.payload)

    @property
    def coded_bits(self) -> int:
        """Bits of the payload (Huffman: the exact bit count; rANS: 8 x bytes, lane states included)."""
        if self.coder == HUFFMAN:
            return struct.unpack("<Q", self.fields)[0]
        return 8 * len(self.payload)

    @property
    def table_bits(self) -> int:
        """Everything but the payload: coder tag, table and size fields, in bits."""
        return 8 * (1 + len(self.table) + len(self.fields))


def huffman_table(lengths: np.ndarray) -> bytes:
    """u32 count + one u8 length per symbol up to the last used one (the v1 table layout)."""
    used = np.flatnonzero(lengths)
    trimmed = lengths[: int(used[-1]) + 1] if used.size else lengths[:0]
    return struct.pack("<I", trimmed.size) + trimmed.astype(np.uint8).tobytes()


def _huffman(symbols: np.ndarray, counts: np.ndarray, lengths: np.ndarray, entropy: float) -> EncodedStream:
    payload, nbits = huffman.encode(symbols, lengths)
    return EncodedStream(HUFFMAN, huffman_table(lengths), struct.pack("<Q", nbits), payload, int(symbols.size),
                         int(counts.size), entropy)


def huffman_stream_bytes(counts: np.ndarray, lengths: np.ndarray) -> int:
    """Exact bytes of the Huffman form of a stream (tag + table + nbits + payload), from its histogram."""
    nbits = int(np.dot(counts.astype(np.int64), lengths.astype(np.int64)))
    return 1 + len(huffman_table(lengths)) + 8 + (nbits + 7) // 8


def rans_estimate_bytes(counts: np.ndarray) -> tuple[float, int, np.ndarray]:
    """(estimated bytes of the rANS form, precision, frequencies) for a histogram.

    Payload estimate: sum_s c_s (p - log2 f_s) bits + 4 bytes per lane; the coder's renormalisation
    rounding adds at most ~0.1 % on top (module docstring of `rans`).
    """
    n = int(counts.sum())
    p = rans.choose_precision(counts)
    freqs = rans.quantize_counts(counts, p)
    used = counts > 0
    bits = float(np.sum(counts[used] * (p - np.log2(freqs[used]))))
    lanes = rans.container_lanes(n)
    return 1 + rans.table_bytes(freqs) + 12 + 4 * lanes + bits / 8, p, freqs


def encode_stream(symbols, alphabet_size: int, coder: str = "auto") -> EncodedStream:
    """Code `symbols` (ints in 0..alphabet_size-1) with the smaller of Huffman and rANS.

    coder="huffman" or "rans" forces one (rANS falls back to Huffman for an empty stream or one with
    more distinct symbols than rANS precision 16 allows). Deterministic: same symbols, same bytes.
    """
    if coder not in CODERS:
        raise UserError(f"unknown entropy coder {coder!r}: use one of {', '.join(CODERS)}")
    s = np.asarray(symbols)
    if s.dtype.kind not in "iu":  # a list, or an empty float array: as before, int64
        s = s.astype(np.int64)  # integer arrays keep their dtype: a uint8 stream is coded without an int64 copy
    a = max(int(alphabet_size), 2)
    counts = symbol_histogram(s, a)
    if counts.size > a:
        raise UserError(f"symbol {int(s.max())} outside the alphabet of {a}")
    entropy = huffman.entropy_bits(counts)
    lengths = huffman.code_lengths(counts)
    if coder == "huffman" or s.size == 0 or int(np.count_nonzero(counts)) > (1 << rans.MAX_PRECISION):
        return _huffman(s, counts, lengths, entropy)
    h_bytes = huffman_stream_bytes(counts, lengths)
    est, _, freqs = rans_estimate_bytes(counts)
    if coder == "auto" and est > h_bytes + 16:  # rANS cannot win: skip encoding it
        return _huffman(s, counts, lengths, entropy)
    lanes = rans.container_lanes(s.size)
    payload = rans.encode(s, freqs, lanes)
    r = EncodedStream(RANS, rans.serialize_frequencies(freqs), struct.pack("<IQ", lanes, len(payload)), payload, int(s.size), a, entropy)
    if coder == "rans" or r.total_bytes < h_bytes:
        return r
    return _huffman(s, counts, lengths, entropy)


def estimate_stream_bytes(counts) -> float:
    """Bytes `encode_stream` spends on a stream with this histogram, without encoding anything:
    exact when Huffman wins, the rANS estimate (within ~0.1 % + a few bytes) when rANS does."""
    c = np.asarray(counts, dtype=np.int64)
    if c.size < 2:
        c = np.concatenate([c, np.zeros(2 - c.size, dtype=np.int64)])
    lengths = huffman.code_lengths(c)
    h = huffman_stream_bytes(c, lengths)
    if not c.sum() or int(np.count_nonzero(c)) > (1 << rans.MAX_PRECISION):
        return float(h)
    return float(min(h, rans_estimate_bytes(c)[0]))


# ----------------------------------------------------------------------------------------- reading


def read_huffman_lengths(r, alphabet: int, what: str) -> np.ndarray:
    n = r.one("I", f"{what} table size")
    if n > alphabet:
        raise CorruptFileError(f"corrupt .nnc file: {what} table has {n} symbols, the alphabet has {alphabet}")
    table = np.zeros(alphabet, dtype=np.int64)
    table[:n] = np.frombuffer(r.take(n, f"{what} table"), dtype=np.uint8)
    try:
        return huffman.validate_lengths(table)
    except CorruptFileError as e:
        raise CorruptFileError(f"corrupt .nnc file: {what} table: {e}") from None


def _decoded_dtype(alphabet: int, compact: bool) -> np.dtype:
    """What a stream decodes to: int64, or (compact) the smallest unsigned dtype for the alphabet."""
    return symbol_dtype(alphabet - 1) if compact else np.dtype(np.int64)


def read_huffman_body(r, alphabet: int, count: int, what: str, decode: bool = True, compact: bool = False) -> np.ndarray | None:
    lengths = read_huffman_lengths(r, alphabet, f"{what} Huffman code")
    nbits = r.one("Q", f"{what} bit count")
    stream = r.take((nbits + 7) // 8, what)  # checked against the bytes present before decoding
    if not decode:
        if count > nbits:
            raise CorruptFileError(f"corrupt .nnc file: {what}: Huffman stream of {nbits} bits cannot hold {count} symbols")
        return None
    try:
        return huffman.decode(stream, nbits, lengths, count, dtype=_decoded_dtype(alphabet, compact))
    except CorruptFileError as e:
        raise CorruptFileError(f"corrupt .nnc file: {what}: {e}") from None


def read_rans_body(r, alphabet: int, count: int, what: str, decode: bool = True, compact: bool = False) -> np.ndarray | None:
    if count == 0:
        raise CorruptFileError(f"corrupt .nnc file: {what} is an rANS stream with no symbols")
    if not 2 <= alphabet <= (1 << 24):
        raise CorruptFileError(f"corrupt .nnc file: {what} has alphabet {alphabet}, outside rANS's 2..2^24")
    # the table is at most 1 + 4 + 3 (alphabet - 1) bytes (LEB128 of values < 2^16 takes <= 3 bytes)
    window = min(r.left, 5 + 3 * alphabet)
    view = r.data[r.pos : r.pos + window]
    try:
        freqs, used = rans.parse_frequencies(view, alphabet)
    except CorruptFileError as e:
        raise CorruptFileError(f"corrupt .nnc file: {what}: {e}") from None
    r.take(used, f"{what} frequency table")
    lanes = r.one("I", f"{what} lane count")
    n_bytes = r.one("Q", f"{what} byte count")
    if lanes != rans.container_lanes(count):  # the lane count is a function of the symbol count (see the docstring)
        raise CorruptFileError(f"corrupt .nnc file: {what} claims {lanes} rANS lanes for {count} symbols "
                               f"(the format uses {rans.container_lanes(count)})")
    if n_bytes < 4 * lanes:
        raise CorruptFileError(f"corrupt .nnc file: {what} has {n_bytes} bytes, fewer than its {lanes} lane states")
    payload = r.take(n_bytes, what)
    if count > rans.max_symbols(n_bytes, freqs):
        raise CorruptFileError(f"corrupt .nnc file: {what}: rANS stream of {n_bytes} bytes cannot hold {count} symbols")
    if not decode:
        return None
    try:
        return rans.decode(payload, freqs, count, lanes, dtype=_decoded_dtype(alphabet, compact))
    except (CorruptFileError, UserError) as e:
        raise CorruptFileError(f"corrupt .nnc file: {what}: {e}") from None


def read_stream(r, alphabet: int, count: int, what: str, decode: bool = True, compact: bool = False) -> np.ndarray | None:
    """Read one tagged v2 stream at the reader's cursor; the decoded symbols (None if not `decode`): int64, or
    with `compact` the smallest unsigned dtype for the alphabet (`symbols.symbol_dtype`)."""
    tag = r.one("B", f"{what} coder")
    if tag == HUFFMAN:
        return read_huffman_body(r, alphabet, count, what, decode, compact)
    if tag == RANS:
        return read_rans_body(r, alphabet, count, what, decode, compact)
    raise CorruptFileError(f"corrupt .nnc file: {what} has unknown coder tag {tag} (0 = Huffman, 1 = rANS)")


__all__ = ["CODERS", "CODER_NAMES", "HUFFMAN", "RANS", "EncodedStream", "encode_stream", "estimate_stream_bytes",
           "huffman_stream_bytes", "huffman_table", "rans_estimate_bytes", "read_stream"]
