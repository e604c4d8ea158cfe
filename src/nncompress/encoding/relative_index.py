"""Deep Compression's relative index: store the gap to the previous non-zero in `gap_bits` bits.

Convention (the paper's Fig. 2: "3 bits, span exceeds 8 → filler"): a gap is
    gap_i = p_i - p_{i-1}  with  p_{-1} = -1,   so 1 <= gap <= M = 2**gap_bits,
and it is stored as the unsigned number gap - 1 in 0..M-1 (a gap of 0 cannot happen: positions
are distinct). A gap larger than M is split by *filler* entries, each advancing exactly M:
    d  →  (d - 1) // M fillers of gap M, then a real entry of gap d - M * ((d - 1) // M).

Filler choice: a filler is an entry of the index stream whose codebook index is the reserved
symbol K = len(codebook) (one past the last centroid) and whose implied value is an explicit zero.
Using a reserved symbol rather than "the centroid that happens to be 0" keeps fillers
distinguishable, so the stored positions are rebuilt bit-exactly and a codebook never needs a
zero centroid. Here fillers are reported as a boolean flag per entry.
"""
from __future__ import annotations

import numpy as np

MAX_GAP_BITS = 16
DEFAULT_GAP_BITS_CONV = 8  # Deep Compression, section 3: 8 bits for conv layers
DEFAULT_GAP_BITS_FC = 5  # and 5 bits for fully connected layers


def _check_gap_bits(gap_bits: int) -> int:
    if isinstance(gap_bits, bool) or int(gap_bits) != gap_bits or not 1 <= gap_bits <= MAX_GAP_BITS:
        raise ValueError(f"gap_bits must be an integer in 1..{MAX_GAP_BITS}, got {gap_bits!r}")
    return int(gap_bits)


def _raw_gaps(positions) -> np.ndarray:
    p = np.asarray(positions)
    if p.ndim != 1:
        raise ValueError(f"positions must be 1-D, got shape {p.shape}")
    if p.size == 0:
        return np.zeros(0, dtype=np.int64)
    if p.dtype.kind not in "iu":
        raise ValueError(f"positions must be integers, got {p.dtype}")
    p = p.astype(np.int64)
    if p[0] < 0:
        raise ValueError("positions must be >= 0")
    d = np.diff(p, prepend=-1)
    if d.min() <= 0:
        raise ValueError("positions must be strictly increasing")
    return d


def count_entries(positions, gap_bits: int) -> int:
    """Entries in the relative-index stream: non-zeros plus fillers, n + sum_i (d_i - 1) // M."""
    m = 1 << _check_gap_bits(gap_bits)
    d = _raw_gaps(positions)
    return int(d.size + np.sum((d - 1) // m))


def to_relative(positions, gap_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted flat positions → (gaps, is_filler), both of length `count_entries(positions, gap_bits)`.

    gaps are int64 in 1..2**gap_bits (store gaps - 1 in gap_bits bits); is_filler marks the
    inserted filler entries, whose gap is always 2**gap_bits.
    Example, gap_bits=3 (M=8), positions [1, 4, 20]: raw gaps [2, 3, 16]; 16 > 8 needs
    (16-1)//8 = 1 filler at position 12 → gaps [2, 3, 8, 8], is_filler [F, F, T, F].
    """
    m = 1 << _check_gap_bits(gap_bits)
    d = _raw_gaps(positions)
    fillers = (d - 1) // m
    per_entry = fillers + 1
    gaps = np.repeat(d - fillers * m, per_entry)  # the real entry's gap, overwritten below for fillers
    is_filler = np.ones(gaps.size, dtype=bool)
    last = np.cumsum(per_entry) - 1  # each original entry is the last of its group
    is_filler[last] = False
    gaps[is_filler] = m
    return gaps, is_filler


def from_relative(gaps, is_filler, gap_bits: int | None = None) -> np.ndarray:
    """Inverse of `to_relative`: positions = (cumsum(gaps) - 1) of the non-filler entries.

    Raises ValueError if a gap is < 1, or (when `gap_bits` is given) > 2**gap_bits, or a filler's
    gap is not exactly 2**gap_bits.
    """
    g = np.asarray(gaps)
    f = np.asarray(is_filler, dtype=bool)
    if g.ndim != 1 or f.shape != g.shape:
        raise ValueError(f"gaps and is_filler must be 1-D of equal length, got {g.shape} and {f.shape}")
    if g.size == 0:
        return np.zeros(0, dtype=np.int64)
    if g.dtype.kind not in "iu":
        raise ValueError(f"gaps must be integers, got {g.dtype}")
    g = g.astype(np.int64)
    if g.min() < 1:
        raise ValueError("gaps must be >= 1")
    if gap_bits is not None:
        m = 1 << _check_gap_bits(gap_bits)
        if g.max() > m:
            raise ValueError(f"gap {int(g.max())} exceeds 2**gap_bits = {m}")
        if np.any(g[f] != m):
            raise ValueError(f"a filler entry has a gap other than 2**gap_bits = {m}")
    return (np.cumsum(g) - 1)[~f]
