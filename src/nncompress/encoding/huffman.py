"""Length-limited canonical Huffman coding of integer symbols (Deep Compression, stage 3).

A code is described only by its code *lengths* l_s (0 = symbol unused); the bits follow from the
canonical rule (RFC 1951, 3.2.2): symbols sorted by (length, symbol) get consecutive code values,
and the first code of length l is  first[l] = (first[l-1] + count[l-1]) << 1.  Storing lengths
instead of codes is what makes the table small, and canonical order is what makes decoding a
search over per-length limits instead of a tree walk.

Lengths come from package-merge (Larmore & Hirschberg 1990), which gives the *optimal* prefix code
under the constraint l_s <= max_len; when the limit does not bind it equals Huffman's cost, so
    H(f) <= sum_s f_s l_s < H(f) + N        (N = sum_s f_s, H the Shannon bound in bits).
Bits are packed most-significant-bit first.
"""
from __future__ import annotations

import math

import numpy as np

from nncompress.encoding.errors import CorruptFileError

MAX_CODE_LENGTH = 24
"""Longest code the encoder produces and the decoder accepts (a 32-bit window covers it at any bit offset)."""

_CHUNK_BITS = 1 << 16  # decode works on this many bit positions at a time: bounded memory, cache-friendly
_ENCODE_BLOCK = 1 << 18  # symbols per encoding block (~40 B of scratch each)
_BAD = 1 << 62  # "next position" marker for an invalid code word during decoding


def code_lengths(freqs, max_len: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Optimal prefix-code lengths with every length <= `max_len`, by package-merge.

    `freqs[s]` is the count of symbol s (>= 0). Returns int64 lengths of the same size, 0 for unused
    symbols. One used symbol gets length 1 (a decoder needs at least one bit per symbol); no used
    symbols gives all zeros. For n >= 2 used symbols the code is complete: sum_s 2^-l_s = 1.

    Package-merge: list_D = the leaves sorted by weight; list_d = merge(leaves, pairs of list_{d+1})
    for d = D-1 .. 1; the first 2n-2 items of list_1 are the cheapest "coins", and a symbol's length
    is the number of coins (leaves or packages containing it) it appears in.
    """
    f = np.asarray(freqs)
    if f.ndim != 1:
        raise ValueError(f"freqs must be 1-D, got shape {f.shape}")
    if not 1 <= max_len <= MAX_CODE_LENGTH:
        raise ValueError(f"max_len must be in 1..{MAX_CODE_LENGTH}, got {max_len}")
    f = f.astype(np.int64) if f.dtype.kind in "biu" else f.astype(np.float64)
    if f.size and (not np.all(np.isfinite(f)) or f.min() < 0):
        raise ValueError("freqs must be finite and >= 0")
    lengths = np.zeros(f.size, dtype=np.int64)
    used = np.flatnonzero(f > 0)
    n = used.size
    if n == 0:
        return lengths
    if n == 1:
        lengths[used] = 1
        return lengths
    if n > (1 << max_len):
        raise ValueError(f"{n} symbols cannot be coded with codes of at most {max_len} bits")
    order = used[np.argsort(f[used], kind="stable")]  # ties broken by symbol index: deterministic
    leaves = f[order]
    depth = min(max_len, n - 1)  # an unconstrained Huffman tree is never deeper than n-1
    # Build list_D .. list_1; remember which entries of each merged list are packages.
    is_package: list[np.ndarray] = []
    prev = leaves
    for _ in range(depth - 1):
        half = prev.size // 2
        packages = prev[0 : 2 * half : 2] + prev[1 : 2 * half : 2]
        merged = np.concatenate([leaves, packages])
        idx = np.argsort(merged, kind="stable")  # leaves before packages on ties
        is_package.append(idx >= n)
        prev = merged[idx]
    # Walk back from list_1: the leaves in a prefix of a merged list are a prefix of `leaves`.
    per_leaf = np.zeros(n + 1, dtype=np.int64)  # difference array: per_leaf[:k] += 1
    m = 2 * n - 2
    for pkg in reversed(is_package):
        packages_taken = int(np.count_nonzero(pkg[:m]))
        per_leaf[0] += 1
        per_leaf[m - packages_taken] -= 1
        m = 2 * packages_taken
    per_leaf[0] += 1  # list_D holds leaves only
    per_leaf[m] -= 1
    lengths[order] = np.cumsum(per_leaf)[:n]
    return lengths


def validate_lengths(lengths, max_len: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Check a code-length table: integers in 0..max_len whose Kraft sum  sum 2^-l  is <= 1.

    Kraft <= 1 is exactly the condition for a prefix code with these lengths to exist; a table
    that breaks it (a corrupted file) would make canonical codes overlap. Raises CorruptFileError.
    Returns the lengths as int64.
    """
    ls = np.asarray(lengths)
    if ls.ndim != 1 or (ls.size and ls.dtype.kind not in "iu"):
        raise CorruptFileError(f"Huffman code-length table must be a 1-D integer array, got {ls.dtype} {ls.shape}")
    ls = ls.astype(np.int64)
    if ls.size and (ls.min() < 0 or ls.max() > max_len):
        raise CorruptFileError(f"Huffman code length out of range 0..{max_len} (found {int(ls.min())}..{int(ls.max())})")
    used = ls[ls > 0]
    if int(np.sum(np.left_shift(np.int64(1), max_len - used))) > (1 << max_len):
        raise CorruptFileError("Huffman code lengths violate the Kraft inequality (sum of 2^-length > 1)")
    return ls


def canonical_codes(lengths) -> np.ndarray:
    """Canonical code values (uint64, read as `lengths[s]`-bit numbers, MSB first); 0 for unused symbols.

    first[1] = 0, first[l] = (first[l-1] + count[l-1]) << 1; within one length, symbols get
    consecutive values in increasing symbol order (RFC 1951 section 3.2.2).
    """
    ls = validate_lengths(lengths)
    codes = np.zeros(ls.size, dtype=np.uint64)
    if not ls.size or ls.max() == 0:
        return codes
    first, _ = _first_codes(ls)
    order = np.lexsort((np.arange(ls.size), ls))  # by length, then symbol
    order = order[ls[order] > 0]
    sorted_len = ls[order]
    rank = np.arange(order.size) - np.searchsorted(sorted_len, sorted_len, side="left")  # index within its length
    codes[order] = (first[sorted_len] + rank).astype(np.uint64)
    return codes


def _first_codes(ls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """first[l] (canonical first code of length l) and count[l], for l = 0..max(ls)."""
    top = int(ls.max())
    count = np.bincount(ls[ls > 0], minlength=top + 1).astype(np.int64)
    count[0] = 0
    first = np.zeros(top + 1, dtype=np.int64)
    for bits in range(1, top + 1):
        first[bits] = (first[bits - 1] + count[bits - 1]) << 1
    return first, count


def encode(symbols, lengths) -> tuple[bytes, int]:
    """Huffman-encode `symbols` (ints indexing `lengths`) into MSB-first packed bytes.

    Returns (data, nbits) with nbits = sum_i lengths[symbols[i]] and len(data) = ceil(nbits / 8);
    the tail of the last byte is zero. Vectorised: one pass per (distinct length, bit index) per block of
    `_ENCODE_BLOCK` symbols; each block's bits are packed as soon as they are set (the < 8 bits that do not
    fill a byte are carried into the next block), so memory beyond the input and the output is a few
    bytes per symbol of one block, whatever the stream's length. `symbols` keeps its dtype (a uint8 stream
    is never widened to int64 as a whole).
    """
    ls = validate_lengths(lengths)
    sym = np.asarray(symbols)
    if sym.ndim != 1:
        raise ValueError(f"symbols must be 1-D, got shape {sym.shape}")
    if sym.size == 0:
        return b"", 0
    if sym.dtype.kind not in "iu":
        raise ValueError(f"symbols must be integers, got {sym.dtype}")
    if int(sym.min()) < 0 or int(sym.max()) >= ls.size:
        raise ValueError(f"symbols must be in 0..{ls.size - 1}")
    from nncompress.encoding.symbols import symbol_histogram

    counts = symbol_histogram(sym, ls.size)
    missing = np.flatnonzero((counts > 0) & (ls == 0))
    if missing.size:
        raise ValueError(f"symbol {int(missing[0])} occurs but has no code (length 0)")
    nbits = int(np.dot(counts, ls))
    table = canonical_codes(ls).astype(np.int64)
    parts: list[bytes] = []
    carry = np.zeros(0, dtype=np.uint8)  # bits of the previous block that did not fill a byte
    for lo in range(0, sym.size, _ENCODE_BLOCK):
        block = sym[lo : lo + _ENCODE_BLOCK]
        sym_len = ls[block]
        codes = table[block]
        ends = np.cumsum(sym_len) + carry.size
        starts = ends - sym_len
        bits = np.empty(int(ends[-1]), dtype=np.uint8)
        bits[: carry.size] = carry
        for length in np.unique(sym_len).tolist():
            sel = sym_len == length
            st, c = starts[sel], codes[sel]
            for j in range(length):
                bits[st + j] = (c >> (length - 1 - j)) & 1
        whole = bits.size - bits.size % 8
        parts.append(np.packbits(bits[:whole]).tobytes())
        carry = bits[whole:].copy()
    if carry.size:
        parts.append(np.packbits(carry).tobytes())  # zero-padded to a byte
    return b"".join(parts), nbits


def decode(data: bytes, nbits: int, lengths, count: int, dtype=np.int64) -> np.ndarray:
    """Decode exactly `count` symbols from the first `nbits` bits of `data`; an array of `dtype` (int64 by
    default; any integer dtype wide enough for the symbols: a uint8 stream need not be held as int64).

    Canonical property used: left-aligned to L = max length, the codes of length l fill the
    interval [limit[l-1], limit[l]) with limit[l] = (first[l] + count[l]) << (L - l), and the
    intervals are consecutive. So for the L-bit window W starting at a bit position, the code
    length there is 1 + #{l : limit[l] <= W} (a searchsorted, vectorised over every bit position of
    a chunk) and the symbol is sorted_symbols[offset[l] + (W >> (L - l)) - first[l]]. Only the
    walk from one code start to the next is a Python loop (one step per symbol).

    Raises CorruptFileError if the table breaks Kraft, a window matches no code (incomplete
    code), the stream ends before `count` symbols, or bits are left over after them.
    """
    ls = validate_lengths(lengths)
    nbits, count = int(nbits), int(count)
    if nbits < 0 or count < 0:
        raise CorruptFileError("negative bit or symbol count in Huffman stream")
    if len(data) < (nbits + 7) // 8:
        raise CorruptFileError(f"Huffman stream claims {nbits} bits but holds only {len(data)} bytes")
    if count == 0:
        if nbits:
            raise CorruptFileError(f"Huffman stream has {nbits} bits but no symbols")
        return np.zeros(0, dtype=dtype)
    if not ls.size or ls.max() == 0:
        raise CorruptFileError(f"Huffman stream has {count} symbols but an empty code table")
    if count > nbits:  # every code is at least one bit; also bounds the allocation below
        raise CorruptFileError(f"Huffman stream of {nbits} bits cannot hold {count} symbols")

    top = int(ls.max())
    first, per_len = _first_codes(ls)
    limits = (first[1:] + per_len[1:]) << (top - np.arange(1, top + 1))  # exclusive upper bounds, left-aligned
    offset = np.concatenate([[0], np.cumsum(per_len)])[:-1]  # rank of the first code of each length
    order = np.lexsort((np.arange(ls.size), ls))
    sorted_syms = order[ls[order] > 0].astype(np.int64)
    buf = np.frombuffer(bytes(data[: (nbits + 7) // 8]) + b"\0\0\0\0", dtype=np.uint8)
    mask = (1 << top) - 1

    out = np.empty(count, dtype=dtype)  # after the checks above: `count` is backed by the stream's bits
    done = 0
    pos = 0
    while done < count:
        if pos >= nbits:
            raise CorruptFileError(f"Huffman stream exhausted after {done} of {count} symbols")
        lo, hi = pos, min(nbits, pos + _CHUNK_BITS)
        p = np.arange(lo, hi, dtype=np.int64)
        b = p >> 3
        word = (buf[b].astype(np.int64) << 24) | (buf[b + 1].astype(np.int64) << 16) | (buf[b + 2].astype(np.int64) << 8) | buf[b + 3]
        win = (word >> (32 - top - (p & 7))) & mask
        k = np.searchsorted(limits, win, side="right")  # 0-based length index; == top means no code
        valid = k < top
        code_len = k + 1
        nxt = np.where(valid & (p + code_len <= nbits), p - lo + code_len, _BAD)  # next start, chunk-local
        step = memoryview(nxt)
        # Walk code starts inside this chunk.
        starts = []
        append = starts.append
        j, n_chunk, budget = 0, hi - lo, count - done
        while j < n_chunk and budget:
            append(j)
            j = step[j]
            budget -= 1
        if j >= _BAD:
            at = starts[-1]
            if not valid[at]:
                raise CorruptFileError(f"invalid Huffman code at bit {lo + at}")
            raise CorruptFileError(f"Huffman stream ends inside a code word at bit {lo + at}")
        st = np.asarray(starts, dtype=np.int64)
        length = code_len[st]
        out[done : done + st.size] = sorted_syms[offset[length] + (win[st] >> (top - length)) - first[length]]
        done += st.size
        pos = lo + j
    if pos != nbits:
        raise CorruptFileError(f"Huffman stream has {nbits - pos} unused bits after {count} symbols")
    return out


def expected_bits(freqs, lengths) -> int:
    """Exact size in bits of coding symbol counts `freqs` with `lengths`: sum_s f_s * l_s."""
    f = np.asarray(freqs, dtype=np.int64)
    ls = np.asarray(lengths, dtype=np.int64)
    if f.shape != ls.shape:
        raise ValueError(f"freqs and lengths differ in shape: {f.shape} vs {ls.shape}")
    if np.any((f > 0) & (ls == 0)):
        raise ValueError("a symbol with non-zero frequency has no code")
    return int(sum(int(a) * int(b) for a, b in zip(f[f > 0], ls[f > 0])))


def entropy_bits(freqs) -> float:
    """Shannon bound in bits for the whole message: N * H = sum_s f_s * log2(N / f_s).

    No prefix code does better; Huffman is within one bit per symbol of it.
    """
    f = np.asarray(freqs, dtype=np.float64)
    f = f[f > 0]
    total = float(f.sum())
    if total == 0:
        return 0.0
    return float(np.sum(f * (math.log2(total) - np.log2(f))))
