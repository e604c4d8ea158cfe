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

from nncompress.encoding.symbols import CHUNK, symbol_dtype

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


def relative_streams(positions, codes, gap_bits: int, filler_code: int, chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """The two coded streams of a stored tensor, built `chunk` positions at a time in compact dtypes.

    Returns (entry codes, gap symbols), both of length `count_entries(positions, gap_bits)`: entry i's
    code is `codes[j]` for a real entry j and `filler_code` (the reserved symbol K) for a filler; its gap
    symbol is gap - 1 in 0..2**gap_bits - 1 (a filler's is always 2**gap_bits - 1). The same streams as
    `to_relative` (gaps - 1, and codes spread over the non-filler entries), but the entry codes are held
    in the smallest unsigned dtype for 0..filler_code and the gaps in uint8 / uint16, and no int64 array
    longer than `chunk` is ever made: for 10^7 stored weights, ~30 MB instead of ~400 MB of temporaries.
    Positions must be strictly increasing non-negative integers (ValueError otherwise).
    """
    g = _check_gap_bits(gap_bits)
    m = 1 << g
    p = np.asarray(positions)
    c = np.asarray(codes)
    if p.ndim != 1 or c.shape != p.shape:
        raise ValueError(f"positions and codes must be 1-D of equal length, got {p.shape} and {c.shape}")
    if p.size and (p.dtype.kind not in "iu" or c.dtype.kind not in "iu"):
        raise ValueError("positions and codes must be integer arrays")

    def gaps(lo: int, prev: int) -> np.ndarray:  # raw gaps d of positions[lo : lo + chunk], from p[lo - 1] = prev
        d = np.diff(p[lo : lo + chunk].astype(np.int64), prepend=prev)
        if d.size and d.min() <= 0:  # the first gap is p_0 + 1, so this also refuses p_0 < 0
            raise ValueError("positions must be >= 0 and strictly increasing")
        return d

    n_fillers = 0
    for lo in range(0, p.size, chunk):
        d = gaps(lo, -1 if lo == 0 else int(p[lo - 1]))
        n_fillers += int(np.sum((d - 1) >> g))
    n_entries = p.size + n_fillers
    entry_codes = np.empty(n_entries, dtype=symbol_dtype(filler_code))
    gap_symbols = np.empty(n_entries, dtype=symbol_dtype(m - 1))
    out = 0
    for lo in range(0, p.size, chunk):
        d = gaps(lo, -1 if lo == 0 else int(p[lo - 1]))
        fillers = (d - 1) >> g
        if not fillers.any():
            entry_codes[out : out + d.size] = c[lo : lo + chunk]
            gap_symbols[out : out + d.size] = d - 1
            out += d.size
            continue
        last = np.cumsum(fillers + 1) - 1  # each real entry is the last of its group (its fillers come first)
        span = int(last[-1]) + 1
        seg_codes, seg_gaps = entry_codes[out : out + span], gap_symbols[out : out + span]
        seg_codes.fill(filler_code)
        seg_gaps.fill(m - 1)
        seg_codes[last] = c[lo : lo + chunk]
        seg_gaps[last] = d - fillers * m - 1
        out += span
    return entry_codes, gap_symbols


def positions_from_symbols(gap_symbols, is_filler, numel: int, dtype=np.int64, gap_bits: int | None = None,
                           chunk: int = CHUNK) -> np.ndarray:
    """Inverse of `relative_streams` for the positions: (cumsum(gap_symbols + 1) - 1) of the non-filler
    entries, as `dtype`, `chunk` entries at a time (no int64 array of the stream's length is made).

    Raises ValueError if a position reaches `numel` or (when `gap_bits` is given) a filler's symbol is not
    2**gap_bits - 1. The result is strictly increasing by construction (every gap is >= 1).
    """
    s = np.asarray(gap_symbols)
    f = np.asarray(is_filler, dtype=bool)
    if s.ndim != 1 or f.shape != s.shape:
        raise ValueError(f"gap symbols and is_filler must be 1-D of equal length, got {s.shape} and {f.shape}")
    if s.size and s.dtype.kind not in "iu":
        raise ValueError(f"gap symbols must be integers, got {s.dtype}")
    top = None if gap_bits is None else (1 << _check_gap_bits(gap_bits)) - 1
    out = np.empty(s.size - int(np.count_nonzero(f)), dtype=dtype)
    base, done = -1, 0
    for lo in range(0, s.size, chunk):
        sym, fil = s[lo : lo + chunk], f[lo : lo + chunk]
        if top is not None and np.any(sym[fil] != top):
            raise ValueError(f"a filler whose gap is not 2**gap_bits = {top + 1}")
        if sym.size and int(sym.min()) < 0:
            raise ValueError("a negative gap symbol")
        pos = np.cumsum(sym, dtype=np.int64)
        pos += base + np.arange(1, sym.size + 1, dtype=np.int64)  # cumsum(sym + 1) from the previous entry
        base = int(pos[-1]) if pos.size else base
        if base >= numel:
            raise ValueError(f"position {base} beyond its {numel} elements")
        real = pos[~fil]
        out[done : done + real.size] = real
        done += real.size
    return out
