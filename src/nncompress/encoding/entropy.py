"""How close each coded stream of a CompressedModel gets to its empirical entropy, Huffman vs rANS.

Deep Compression (Han, Mao & Dally 2016, section 4) Huffman-codes the codebook indices and the
relative-index gaps. A prefix code spends whole bits per symbol, so on skewed streams (a filler
symbol dominating, or gaps that are mostly 1) it can sit well above the Shannon bound that rANS
(`rans`, Duda 2013) reaches to within a fraction of a percent. `stream_report` measures both on
every stream, tables included, and what the .nnc v2 writer stores (`streams.encode_stream`: the smaller
of the two, tagged per stream): its coder, coded bits and table bits beside the entropy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nncompress.core.errors import UserError
from nncompress.encoding import huffman, rans
from nncompress.encoding.streams import encode_stream
from nncompress.encoding.relative_index import to_relative


def empirical_entropy_bits(symbols) -> float:
    """sum_s -c_s·log2(c_s / n) over the symbol counts c_s of `symbols` (n = len): the least any
    coder using the stream's own static statistics can spend, table not counted."""
    s = np.asarray(symbols)
    if s.ndim != 1:
        raise UserError(f"symbols must be 1-D, got shape {s.shape}")
    if s.size == 0:
        return 0.0
    if s.dtype.kind not in "iu" or s.min() < 0:
        raise UserError("symbols must be non-negative integers")
    return huffman.entropy_bits(np.bincount(s.astype(np.int64)))


@dataclass(frozen=True)
class StreamStats:
    """Sizes of one coded stream. Bits are data only; *_table_bytes is the coder's table."""

    tensor: str
    stream: str  # "codes" (codebook index per entry, symbol k = filler) or "gaps" (gap - 1)
    alphabet_size: int
    n_symbols: int
    entropy_bits: float
    huffman_bits: int
    huffman_table_bytes: int
    rans_bits: int
    rans_table_bytes: int
    rans_precision: int
    coder: str = "huffman"  # what the .nnc v2 writer stores for this stream ("huffman" or "rans")
    coded_bits: int = 0  # the stored payload: Huffman bit count or 8 x rANS bytes (lane states included)
    table_bits: int = 0  # the stored coder tag, table and size fields

    @property
    def overhead(self) -> float:
        """(coded + table bits) / (entropy + table bits) - 1: how far the stored stream is above its bound."""
        bound = self.entropy_bits + self.table_bits
        return (self.coded_bits + self.table_bits) / bound - 1 if bound else 0.0

    @property
    def huffman_bytes(self) -> int:
        """Huffman data + table, in whole bytes."""
        return (self.huffman_bits + 7) // 8 + self.huffman_table_bytes

    @property
    def rans_bytes(self) -> int:
        """rANS data + table, in whole bytes."""
        return self.rans_bits // 8 + self.rans_table_bytes

    @property
    def best(self) -> str:
        """The smaller coder, tables included ("huffman" on ties: the format's current coder)."""
        return "rans" if self.rans_bytes < self.huffman_bytes else "huffman"


def _huffman_table_bytes(lengths: np.ndarray) -> int:
    """Size of the container's code-length table: u32 count + one byte per length up to the last used."""
    used = np.flatnonzero(lengths)
    return 4 + (int(used[-1]) + 1 if used.size else 0)


def coder_stats(tensor: str, stream: str, symbols, alphabet_size: int) -> StreamStats:
    """Measure one stream: empirical entropy, exact Huffman and rANS sizes (rANS actually encoded)."""
    s = np.asarray(symbols, dtype=np.int64)
    a = max(int(alphabet_size), 2)
    counts = np.bincount(s, minlength=a)
    if counts.size > a:
        raise UserError(f"{tensor}/{stream}: symbol {int(s.max())} outside the alphabet of {a}")
    lengths = huffman.code_lengths(counts)
    h_bits = huffman.expected_bits(counts, lengths)
    p = rans.choose_precision(counts)
    freqs = rans.quantize_counts(counts, p)
    data = rans.encode(s, freqs)
    stored = encode_stream(s, a)
    return StreamStats(
        tensor=tensor,
        stream=stream,
        alphabet_size=a,
        n_symbols=int(s.size),
        entropy_bits=huffman.entropy_bits(counts),
        huffman_bits=int(h_bits),
        huffman_table_bytes=_huffman_table_bytes(lengths),
        rans_bits=8 * len(data),
        rans_table_bytes=len(rans.serialize_frequencies(freqs)),
        rans_precision=p,
        coder=stored.coder_name,
        coded_bits=stored.coded_bits,
        table_bits=stored.table_bits,
    )


def stream_report(compressed_model) -> list[StreamStats]:
    """Every coded stream of `compressed_model` (an encoding.container.CompressedModel), in the order
    the .nnc writer emits them: per shared tensor its index stream (entries = non-zeros + fillers,
    filler symbol k = len(codebook)) and its gap stream (symbol = gap - 1), built as the container does.
    """
    out: list[StreamStats] = []
    for name, t in compressed_model.shared.items():
        k = int(np.asarray(t.codebook).size)
        pos = np.asarray(t.positions, dtype=np.int64)
        gaps, is_filler = to_relative(pos, int(t.gap_bits))
        entry_codes = np.full(gaps.size, k, dtype=np.int64)
        entry_codes[~is_filler] = np.asarray(t.codes, dtype=np.int64)
        out.append(coder_stats(name, "codes", entry_codes, k + 1))
        out.append(coder_stats(name, "gaps", gaps - 1, 1 << int(t.gap_bits)))
    return out


def format_report(stats: list[StreamStats]) -> str:
    """A plain-text table of `stream_report`'s rows (bits/symbol relative to entropy)."""
    lines = [f"{'tensor':30} {'stream':6} {'n':>9} {'H bits':>11} {'huff B':>9} {'rANS B':>9} {'stored':7} {'coded b':>10} "
             f"{'table b':>8} {'over':>7}"]
    for r in stats:
        lines.append(
            f"{r.tensor[:30]:30} {r.stream:6} {r.n_symbols:9d} {r.entropy_bits:11.1f} "
            f"{r.huffman_bytes:9d} {r.rans_bytes:9d} {r.coder:7} {r.coded_bits:10d} {r.table_bits:8d} {100 * r.overhead:6.2f}%"
        )
    return "\n".join(lines)


__all__ = ["StreamStats", "coder_stats", "empirical_entropy_bits", "format_report", "stream_report"]
