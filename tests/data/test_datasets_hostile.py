"""Hostile .npz files: every one gives one clear UserError, never a crash, a silent 200,001-class model or -0.0 inputs."""
import io
import tracemalloc
import zipfile

import numpy as np
import numpy.lib.format as npy
import pytest

from nncompress.core import UserError
from nncompress.data import load_dataset

RNG = np.random.default_rng(0)
X = RNG.normal(size=(40, 6, 6)).astype(np.float32)
Y = np.arange(40) % 4


def _save(tmp_path, name, **arrays):
    path = tmp_path / f"{name}.npz"
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize(
    "x, y, match",
    [
        (np.where(np.arange(X.size).reshape(X.shape) == 5, np.nan, X), Y, "NaN or infinite"),
        (np.where(np.arange(X.size).reshape(X.shape) == 5, np.inf, X), Y, "NaN or infinite"),
        (X.astype(np.complex64), Y, "real numbers .*complex64"),
        (X > 0, Y, "real numbers .*bool"),
        (np.full((40, 3), "abc"), Y, "real numbers"),
        (X, (Y > 1), "labels y must be non-negative integers .*bool"),
        (X, Y.astype(np.float32), "labels y must be non-negative integers"),
        (X, np.where(Y == 0, np.uint64(2**63), Y.astype(np.uint64)), "would make a 9223372036854775809-class model"),
        (X, np.where(np.arange(40) == 0, 200_000, Y), "label 200000 would make a 200001-class model .*max 100000"),
        (X, np.where(Y == 3, 5000, Y), "labels are sparse: 4 distinct values up to 5000"),
        (X, -Y, "non-negative"),
        (X, Y[:39], "expected x of shape"),
        (X[:1], Y[:1], "single sample"),
        (X[:0], Y[:0], "empty"),
        (X, np.zeros(40, dtype=np.int64), "at least 2 classes"),
        (X.astype(np.float64) * 1e30, Y, "values up to .*rescale"),
        (np.zeros((40, 0)), Y, "each dim must be >= 1"),
        (RNG.integers(0, 255, size=(40, 1, 2, 2)).astype(np.uint8), Y, None),  # uint8 images are fine
    ],
)
def test_hostile_arrays_are_refused_with_one_line(tmp_path, x, y, match):
    path = _save(tmp_path, "d", x=x, y=y)
    if match is None:
        assert load_dataset(path).num_classes == 4
        return
    with pytest.raises(UserError, match=match) as info:
        load_dataset(path)
    assert "\n" not in str(info.value) and path in str(info.value)


def test_object_arrays_are_refused_without_unpickling(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([{"a": 1}] * 4, dtype=object), y=np.arange(4))  # pickled by numpy
    with pytest.raises(UserError, match="dtype object, which is not numeric"):
        load_dataset(str(path))


def test_large_but_valid_magnitudes_normalise_in_float64(tmp_path):
    """Inputs around 1e15 with a spread of 1e3: float32 arithmetic would give all -0.0; float64 stats do not."""
    x = 1e15 + RNG.normal(size=(40, 6)) * 1e3
    ds = load_dataset(_save(tmp_path, "big", x=x, y=Y))
    assert abs(float(ds.x_train.std(correction=0)) - 1.0) < 1e-3 and float(ds.x_train.abs().max()) > 0.5


def _npz_claiming(tmp_path, shape) -> str:
    """An .npz whose x header claims `shape` but holds 16 bytes of data."""
    header = io.BytesIO()
    npy.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    path = tmp_path / "claims.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.npy", npy.magic(1, 0) + header.getvalue() + b"\0" * 16)
        y = io.BytesIO()
        np.save(y, Y)
        zf.writestr("y.npy", y.getvalue())
    return str(path)


@pytest.mark.parametrize("shape", [(40, 1 << 14, 1 << 14), (40, 30000, 30000), (2**40, 2**40)])
def test_huge_shape_claims_are_refused_before_allocating(tmp_path, shape):
    path = _npz_claiming(tmp_path, shape)
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match="claims"):
            load_dataset(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20


def test_damaged_npz_is_one_clear_error(tmp_path):
    with open(_save(tmp_path, "ok", x=X, y=Y), "rb") as f:
        data = bytearray(f.read())
    rng = np.random.default_rng(1)
    refused = 0
    for i in range(60):
        mutated = bytearray(data)
        if i % 3 == 0:
            mutated = mutated[: int(rng.integers(len(mutated)))]
        else:
            for _ in range(3):
                mutated[int(rng.integers(len(mutated)))] = int(rng.integers(256))
        path = tmp_path / "m.npz"
        path.write_bytes(bytes(mutated))
        try:
            load_dataset(str(path))
        except UserError as e:
            assert "\n" not in str(e)
            refused += 1
    assert refused > 20
