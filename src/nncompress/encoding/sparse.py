"""Sparse storage formats of a weight matrix: COO, CSR and CSC, with exact round trips to dense.

A tensor of any rank is viewed as the 2-D matrix [shape[0], prod(shape[1:])] (a conv weight
[out, in, kh, kw] becomes one row per output channel); 1-D becomes one row, 0-D a 1x1 matrix.
An entry is stored when it is != 0 (NaN counts as stored). Index arrays are int64.

    COO:  row[k], col[k], val[k]                          for the nnz entries in row-major order
    CSR:  indptr[r] .. indptr[r+1] index indices/data of row r   (len(indptr) = rows + 1)
    CSC:  indptr[c] .. indptr[c+1] index indices/data of column c (len(indptr) = cols + 1)

Byte counts of these layouts belong to `nncompress.analysis`; this module only builds the arrays.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class COO(NamedTuple):
    row: np.ndarray
    col: np.ndarray
    val: np.ndarray
    shape: tuple[int, int]


class CSR(NamedTuple):
    indptr: np.ndarray
    indices: np.ndarray  # column of each stored value
    data: np.ndarray
    shape: tuple[int, int]


class CSC(NamedTuple):
    indptr: np.ndarray
    indices: np.ndarray  # row of each stored value
    data: np.ndarray
    shape: tuple[int, int]


def as_matrix(array) -> np.ndarray:
    """View a tensor as [shape[0], rest]: 2-D unchanged, N-D flattened after dim 0, 1-D as one row."""
    a = np.asarray(array)
    if a.ndim == 0:
        return a.reshape(1, 1)
    if a.ndim == 1:
        return a.reshape(1, -1)
    return a.reshape(a.shape[0], int(np.prod(a.shape[1:])))


def to_coo(array) -> COO:
    """Coordinates and values of the non-zeros, row-major."""
    m = as_matrix(array)
    row, col = np.nonzero(m)
    return COO(row.astype(np.int64), col.astype(np.int64), m[row, col], (int(m.shape[0]), int(m.shape[1])))


def _compress(major: np.ndarray, n_major: int) -> np.ndarray:
    """indptr[i+1] = number of stored entries in major lines 0..i."""
    indptr = np.zeros(n_major + 1, dtype=np.int64)
    np.cumsum(np.bincount(major, minlength=n_major), out=indptr[1:])
    return indptr


def to_csr(array) -> CSR:
    """Compressed sparse rows: indptr from per-row counts, column indices in increasing order."""
    m = as_matrix(array)
    row, col = np.nonzero(m)  # already row-major sorted
    return CSR(_compress(row, m.shape[0]), col.astype(np.int64), m[row, col], (int(m.shape[0]), int(m.shape[1])))


def to_csc(array) -> CSC:
    """Compressed sparse columns: the CSR of the transpose."""
    m = as_matrix(array)
    col, row = np.nonzero(m.T)  # column-major order
    return CSC(_compress(col, m.shape[1]), row.astype(np.int64), m[row, col], (int(m.shape[0]), int(m.shape[1])))


def _check_shape(shape) -> tuple[int, int]:
    if len(shape) != 2 or min(shape) < 0:
        raise ValueError(f"shape must be (rows, cols) with rows, cols >= 0, got {shape}")
    return int(shape[0]), int(shape[1])


def _check_index(name: str, idx: np.ndarray, bound: int, n: int) -> np.ndarray:
    idx = np.asarray(idx)
    if idx.shape != (n,):
        raise ValueError(f"{name} must have {n} entries, got shape {idx.shape}")
    if n and (idx.dtype.kind not in "iu" or idx.min() < 0 or idx.max() >= bound):
        raise ValueError(f"{name} must be integers in 0..{bound - 1}")
    return idx.astype(np.int64)


def _expand_indptr(indptr, n_major: int, nnz: int) -> np.ndarray:
    p = np.asarray(indptr)
    if p.shape != (n_major + 1,) or (p.size and p.dtype.kind not in "iu"):
        raise ValueError(f"indptr must have {n_major + 1} integer entries, got {p.dtype} {p.shape}")
    p = p.astype(np.int64)
    if p[0] != 0 or p[-1] != nnz or np.any(np.diff(p) < 0):
        raise ValueError(f"indptr must rise from 0 to nnz={nnz} without decreasing")
    return np.repeat(np.arange(n_major, dtype=np.int64), np.diff(p))


def coo_to_dense(coo: COO) -> np.ndarray:
    rows, cols = _check_shape(coo.shape)
    val = np.asarray(coo.val)
    r = _check_index("row", coo.row, rows, val.size)
    c = _check_index("col", coo.col, cols, val.size)
    out = np.zeros((rows, cols), dtype=val.dtype)
    out[r, c] = val
    return out


def csr_to_dense(csr: CSR) -> np.ndarray:
    rows, cols = _check_shape(csr.shape)
    data = np.asarray(csr.data)
    r = _expand_indptr(csr.indptr, rows, data.size)
    c = _check_index("indices", csr.indices, cols, data.size)
    out = np.zeros((rows, cols), dtype=data.dtype)
    out[r, c] = data
    return out


def csc_to_dense(csc: CSC) -> np.ndarray:
    rows, cols = _check_shape(csc.shape)
    data = np.asarray(csc.data)
    c = _expand_indptr(csc.indptr, cols, data.size)
    r = _check_index("indices", csc.indices, rows, data.size)
    out = np.zeros((rows, cols), dtype=data.dtype)
    out[r, c] = data
    return out


def to_dense(sparse: COO | CSR | CSC) -> np.ndarray:
    """The 2-D dense matrix of any of the three formats (reshape to the tensor's shape yourself)."""
    if isinstance(sparse, COO):
        return coo_to_dense(sparse)
    if isinstance(sparse, CSR):
        return csr_to_dense(sparse)
    if isinstance(sparse, CSC):
        return csc_to_dense(sparse)
    raise TypeError(f"expected COO, CSR or CSC, got {type(sparse).__name__}")
