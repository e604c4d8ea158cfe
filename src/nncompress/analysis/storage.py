"""Bytes to store a weight matrix densely or in a sparse format: pure formulas.

For an m×n matrix with a non-zeros, v-bit values and i-bit indices (bytes = ceil(bits / 8), whole structure):
  dense:  m·n·v
  COO:    a·(d·i + v)             (d = number of dimensions: one index per dimension per entry; 2-D → 3a entries)
  CSR:    a·v + a·i + (m+1)·i     (a values, a column indices, m+1 row pointers: 2a + m + 1 entries)
  CSC:    a·v + a·i + (n+1)·i     (a values, a row indices, n+1 column pointers: 2a + n + 1 entries)

Default index width (stated explicitly, overridable with index_bits): the smallest of 8, 16, 32, 64 bits
whose unsigned range holds the largest integer the format stores: for COO the largest coordinate
max(shape) − 1; for CSR max(n − 1, a) (column index or row pointer, which ends at a); for CSC max(m − 1, a).
A conv weight [out, in, k_h, k_w] is stored as the [out, in·k_h·k_w] matrix; a 1-D tensor as a [1, n] row.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from nncompress.core.errors import UserError

INDEX_WIDTHS_BITS = (8, 16, 32, 64)


def index_bits_for(max_value: int) -> int:
    """Smallest of 8/16/32/64 bits whose unsigned range 0 .. 2^b − 1 holds `max_value`."""
    max_value = max(int(max_value), 0)
    for b in INDEX_WIDTHS_BITS:
        if max_value < 2**b:
            return b
    raise UserError(f"index value {max_value} needs more than 64 bits")


def _check_bits(name: str, bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < 1:
        raise UserError(f"{name} must be a positive integer number of bits, got {bits!r}")
    return bits


def _bytes(total_bits: int) -> int:
    return math.ceil(total_bits / 8)


def dense_bytes(numel: int, bits: int = 32) -> int:
    """ceil(numel · bits / 8)."""
    return _bytes(numel * _check_bits("bits", bits))


def coo_bytes(nnz: int, shape: Sequence[int] | int, value_bits: int = 32, index_bits: int | None = None) -> int:
    """ceil(a·(d·i + v) / 8). `shape` is the tensor shape (or its number of dimensions d when index_bits is given)."""
    if isinstance(shape, int):
        if index_bits is None:
            raise UserError("coo_bytes: pass the shape (not just ndim) or an explicit index_bits")
        ndim = shape
    else:
        ndim = len(shape)
        if index_bits is None:
            index_bits = index_bits_for(max(shape, default=1) - 1)
    return _bytes(nnz * (ndim * _check_bits("index_bits", index_bits) + _check_bits("value_bits", value_bits)))


def csr_bytes(nnz: int, n_rows: int, value_bits: int = 32, index_bits: int | None = None, n_cols: int | None = None) -> int:
    """ceil((a·v + (a + m + 1)·i) / 8): values, column indices, m+1 row pointers. Default i needs n_cols."""
    if index_bits is None:
        if n_cols is None:
            raise UserError("csr_bytes: pass index_bits, or n_cols so the default index width can be chosen")
        index_bits = index_bits_for(max(n_cols - 1, nnz))
    return _bytes(nnz * _check_bits("value_bits", value_bits) + (nnz + n_rows + 1) * _check_bits("index_bits", index_bits))


def csc_bytes(nnz: int, n_cols: int, value_bits: int = 32, index_bits: int | None = None, n_rows: int | None = None) -> int:
    """ceil((a·v + (a + n + 1)·i) / 8): values, row indices, n+1 column pointers. Default i needs n_rows."""
    if index_bits is None:
        if n_rows is None:
            raise UserError("csc_bytes: pass index_bits, or n_rows so the default index width can be chosen")
        index_bits = index_bits_for(max(n_rows - 1, nnz))
    return csr_bytes(nnz, n_cols, value_bits, index_bits)


def matrix_shape(shape: Sequence[int]) -> tuple[int, int]:
    """The 2-D view a weight is stored as: [out, prod(rest)]; a vector is a [1, n] row; a scalar [1, 1]."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, shape[0]
    return shape[0], math.prod(shape[1:])


def layer_storage(weight: torch.Tensor, value_bits: int = 32, index_bits: int | None = None) -> dict[str, int]:
    """Bytes of `weight` as dense, COO, CSR and CSC, seen as a 2-D matrix (see module docstring)."""
    m, n = matrix_shape(weight.shape)
    a = int(torch.count_nonzero(weight.detach()))
    return {
        "dense_bytes": dense_bytes(m * n, value_bits),
        "coo_bytes": coo_bytes(a, (m, n), value_bits, index_bits),
        "csr_bytes": csr_bytes(a, m, value_bits, index_bits, n_cols=n),
        "csc_bytes": csc_bytes(a, n, value_bits, index_bits, n_rows=m),
    }
