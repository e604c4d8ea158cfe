"""Compact symbol arrays: the smallest unsigned dtype for an alphabet, and histograms taken in chunks.

Why: a 100 M-weight layer pruned to 10 % has ~10^7 stored entries; as int64 each of its streams (codebook
indices, relative-index gaps) is 80 MB, and `np.bincount` casts its whole input to int64 first. Held as
uint8 / uint16 (an index alphabet of k + 1 <= 2^16 + 1 symbols, a gap alphabet of 2^gap_bits <= 2^16),
the same streams take 10-20 MB, and a histogram taken `CHUNK` symbols at a time needs 2 MB of scratch
whatever the stream's length. The .nnc writer, reader and the entropy coders work on these arrays
without widening them (issue 13: prune → share → .nnc → load of a 105 M-parameter model within
2.5x its fp32 bytes).
"""
from __future__ import annotations

import numpy as np

CHUNK = 1 << 18
"""Symbols (or weights) processed per step by the chunked loops of the encoding path: 2 MB per int64 temporary."""


def symbol_dtype(max_symbol: int) -> np.dtype:
    """The smallest unsigned integer dtype holding 0..max_symbol (uint8, uint16, uint32 or uint64)."""
    return np.dtype(np.min_scalar_type(max(int(max_symbol), 0)))


def symbol_histogram(symbols, minlength: int = 0, chunk: int = CHUNK) -> np.ndarray:
    """`np.bincount(symbols, minlength=minlength)` (int64) for a 1-D integer array, `chunk` symbols at a
    time, so a uint8 stream is never widened to int64 as a whole. Raises ValueError for a negative symbol."""
    s = np.asarray(symbols)
    if s.ndim != 1:
        raise ValueError(f"symbols must be 1-D, got shape {s.shape}")
    if s.size and s.dtype.kind not in "iu":
        raise ValueError(f"symbols must be integers, got {s.dtype}")
    if s.size <= chunk:
        return np.bincount(s.astype(np.intp, copy=False), minlength=minlength).astype(np.int64, copy=False)
    hist = np.zeros(max(int(minlength), 0), dtype=np.int64)
    for lo in range(0, s.size, chunk):
        h = np.bincount(s[lo : lo + chunk].astype(np.intp, copy=False))
        if h.size > hist.size:
            hist = np.concatenate([hist, np.zeros(h.size - hist.size, dtype=np.int64)])
        hist[: h.size] += h
    return hist


__all__ = ["CHUNK", "symbol_dtype", "symbol_histogram"]
