import numpy as np
import pytest

from nncompress.core import UserError
from nncompress.data import load_dataset, make_loaders


def test_digits_split_is_seeded_stratified_and_normalized():
    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=0)
    assert a.x_train.shape[1:] == (1, 8, 8) and a.num_classes == 10
    assert len(a.y_train) + len(a.y_test) == 1797
    assert len(a.y_test) == sum(round(n * 0.2) for n in np.bincount(np.concatenate([a.y_train, a.y_test])))
    assert (a.x_train == b.x_train).all() and (a.y_test == b.y_test).all()
    assert abs(float(a.x_train.mean())) < 1e-4 and abs(float(a.x_train.std()) - 1) < 1e-3
    c = load_dataset("digits", seed=1)
    assert not (a.y_test[:50] == c.y_test[:50]).all()


def test_npz_dataset_and_its_errors(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "ok.npz", x=rng.normal(size=(40, 6, 6)).astype(np.float32), y=np.arange(40) % 4)
    ds = load_dataset(str(tmp_path / "ok.npz"))
    assert ds.input_shape == (1, 6, 6) and ds.num_classes == 4 and len(ds.y_test) == 8
    train, test = make_loaders(ds, batch_size=16)
    assert sum(len(y) for _, y in train) == 32

    np.savez(tmp_path / "nolabels.npz", x=np.zeros((4, 3)))
    with pytest.raises(UserError, match="must hold arrays 'x'"):
        load_dataset(str(tmp_path / "nolabels.npz"))
    np.savez(tmp_path / "mismatch.npz", x=np.zeros((4, 3)), y=np.zeros(5, dtype=int))
    with pytest.raises(UserError, match="expected x of shape"):
        load_dataset(str(tmp_path / "mismatch.npz"))
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 3)), y=np.zeros(0, dtype=int))
    with pytest.raises(UserError, match="empty"):
        load_dataset(str(tmp_path / "empty.npz"))
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(UserError, match="not a readable"):
        load_dataset(str(tmp_path / "junk.npz"))
    with pytest.raises(UserError, match="not found"):
        load_dataset(str(tmp_path / "missing.npz"))
    with pytest.raises(UserError, match="unknown dataset"):
        load_dataset("imagenet")
