"""COO / CSR / CSC built from dense arrays, checked on a hand-worked matrix and by round trips."""
import numpy as np
import pytest

from nncompress.encoding.sparse import COO, CSC, CSR, as_matrix, to_coo, to_csc, to_csr, to_dense

M = np.array(
    [
        [0, 5, 0, 0],
        [0, 0, 0, 0],
        [7, 0, 0, 9],
    ],
    dtype=np.float32,
)


def test_hand_worked_coo():
    coo = to_coo(M)
    assert coo.row.tolist() == [0, 2, 2]
    assert coo.col.tolist() == [1, 0, 3]
    assert coo.val.tolist() == [5, 7, 9]
    assert coo.shape == (3, 4)


def test_hand_worked_csr():
    csr = to_csr(M)
    assert csr.indptr.tolist() == [0, 1, 1, 3]  # row 1 is empty
    assert csr.indices.tolist() == [1, 0, 3]
    assert csr.data.tolist() == [5, 7, 9]


def test_hand_worked_csc():
    csc = to_csc(M)
    assert csc.indptr.tolist() == [0, 1, 2, 2, 3]  # column 2 is empty
    assert csc.indices.tolist() == [2, 0, 2]
    assert csc.data.tolist() == [7, 5, 9]


def test_tensor_views():
    assert as_matrix(np.zeros((8, 3, 5, 5))).shape == (8, 75)
    assert as_matrix(np.zeros(6)).shape == (1, 6)
    assert as_matrix(np.float32(2.0)).shape == (1, 1)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int64])
def test_round_trips(seed, dtype):
    rng = np.random.default_rng(seed)
    shape = [(17, 23), (4, 3, 3, 3), (50,), (0, 5), (6, 1)][seed % 5]
    a = (rng.normal(size=shape) * 10).astype(dtype)
    a[rng.random(shape) < 0.7] = 0
    m = as_matrix(a)
    for fmt in (to_coo(a), to_csr(a), to_csc(a)):
        back = to_dense(fmt)
        assert back.dtype == a.dtype
        np.testing.assert_array_equal(back, m)
        np.testing.assert_array_equal(back.reshape(a.shape), a)
        assert fmt[2].size == np.count_nonzero(a)


def test_all_zero_and_full():
    z = np.zeros((3, 4))
    assert to_csr(z).indptr.tolist() == [0, 0, 0, 0] and to_csr(z).indices.size == 0
    f = np.ones((2, 2))
    assert to_csc(f).indptr.tolist() == [0, 2, 4] and to_csc(f).indices.tolist() == [0, 1, 0, 1]


def test_invalid_inputs():
    with pytest.raises(ValueError):
        to_dense(CSR(np.array([0, 2, 1]), np.array([0]), np.array([1.0]), (2, 2)))
    with pytest.raises(ValueError):
        to_dense(CSR(np.array([0, 1, 1]), np.array([5]), np.array([1.0]), (2, 2)))
    with pytest.raises(ValueError):
        to_dense(COO(np.array([2]), np.array([0]), np.array([1.0]), (2, 2)))
    with pytest.raises(ValueError):
        to_dense(CSC(np.array([0, 1]), np.array([0]), np.array([1.0]), (2, 2)))
    with pytest.raises(TypeError):
        to_dense(np.zeros((2, 2)))
