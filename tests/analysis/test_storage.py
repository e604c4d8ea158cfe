import pytest
import torch

from nncompress.analysis import coo_bytes, csc_bytes, csr_bytes, dense_bytes, index_bits_for, layer_storage
from nncompress.core.errors import UserError

# Hand-worked: a 4×5 matrix (m=4 rows, n=5 cols) with a = 3 non-zeros
#   [[0, 7, 0, 0, 0],
#    [0, 0, 0, 0, 0],
#    [1, 0, 0, 0, 2],
#    [0, 0, 0, 0, 0]]
M = torch.tensor([[0, 7, 0, 0, 0], [0, 0, 0, 0, 0], [1, 0, 0, 0, 2], [0, 0, 0, 0, 0]], dtype=torch.float32)


def test_dense_bytes_rounds_up():
    assert dense_bytes(20, 32) == 80
    assert dense_bytes(3, 5) == 2  # 15 bits → 2 bytes
    assert dense_bytes(266_610, 32) == 1_066_440


def test_coo_csr_csc_with_16_bit_indices():
    # COO: 3 entries × (row 2 B + col 2 B + value 4 B) = 24 B
    assert coo_bytes(3, (4, 5), value_bits=32, index_bits=16) == 24
    assert coo_bytes(3, 2, value_bits=32, index_bits=16) == 24  # ndim instead of shape
    # CSR: 3 values × 4 B + 3 column indices × 2 B + (4+1) row pointers × 2 B = 12 + 6 + 10 = 28 B
    assert csr_bytes(3, 4, value_bits=32, index_bits=16) == 28
    # CSC: 12 + 3 row indices × 2 B + (5+1) column pointers × 2 B = 12 + 6 + 12 = 30 B
    assert csc_bytes(3, 5, value_bits=32, index_bits=16) == 30


def test_index_width_rule():
    assert index_bits_for(0) == 8 and index_bits_for(255) == 8
    assert index_bits_for(256) == 16 and index_bits_for(65_535) == 16
    assert index_bits_for(65_536) == 32 and index_bits_for(2**32) == 64


def test_layer_storage_default_widths_hand_worked():
    # all indices ≤ 5 → 8-bit:  COO 3·(1+1+4) = 18; CSR 12 + 3 + 5 = 20; CSC 12 + 3 + 6 = 21; dense 20·4 = 80
    assert layer_storage(M) == {"dense_bytes": 80, "coo_bytes": 18, "csr_bytes": 20, "csc_bytes": 21}
    assert layer_storage(M, index_bits=16) == {"dense_bytes": 80, "coo_bytes": 24, "csr_bytes": 28, "csc_bytes": 30}
    # 5-bit values (Deep Compression FC codebook), 8-bit indices: COO ceil(3·21/8) = 8; CSR ceil((15 + 8·8)/8) = 10
    assert layer_storage(M, value_bits=5)["coo_bytes"] == 8
    assert layer_storage(M, value_bits=5)["csr_bytes"] == 10


def test_conv_weight_is_out_by_in_k_k_matrix():
    w = torch.zeros(2, 3, 2, 2)  # → 2×12 matrix
    w[1, 2, 1, 1] = 1.0  # one non-zero
    # dense 24·4 = 96; COO 1·(1+1+4) = 6; CSR 4 + 1 + 3 = 8; CSC 4 + 1 + 13 = 18 (8-bit indices)
    assert layer_storage(w) == {"dense_bytes": 96, "coo_bytes": 6, "csr_bytes": 8, "csc_bytes": 18}


def test_large_dims_use_wider_indices():
    # LeNet-300-100 fc1 as stored: 300×784, 1,000 non-zeros: COO coordinates ≤ 783 → 16 bits
    assert coo_bytes(1000, (300, 784)) == 1000 * (2 + 2 + 4)
    # CSR: columns ≤ 783, row pointers ≤ 1000 → 16 bits: 4000 + 2000 + 301·2
    assert csr_bytes(1000, 300, n_cols=784) == 4000 + 2000 + 602


def test_bad_input():
    with pytest.raises(UserError):
        csr_bytes(3, 4)  # no index width, no n_cols
    with pytest.raises(UserError):
        coo_bytes(3, 2)  # ndim without an explicit width
    with pytest.raises(UserError):
        dense_bytes(3, 0)
