"""Sharded .npz datasets (a glob or a folder of shards), read one by one through the hardened .npz reader."""
import numpy as np
import pytest

from nncompress.core import UserError
from nncompress.data import load_dataset, make_loaders


def _shards(folder, n=3):
    """Class-sorted shards: each holds a single label, as a dataset written class by class would."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for c in range(n):
        np.savez(folder / f"part-{c:02d}.npz", x=rng.normal(c, 1, size=(10, 5, 5)).astype(np.float32), y=np.full(10, c))
    return folder


def test_folder_and_glob_of_shards_load_as_one_dataset(tmp_path):
    folder = _shards(tmp_path / "shards")
    ds = load_dataset(str(folder), seed=0)
    assert ds.name == "shards" and ds.num_classes == 3 and ds.input_shape == (1, 5, 5)
    assert len(ds.y_train) == 24 and len(ds.y_test) == 6 and sorted(ds.y_test.tolist()) == [0, 0, 1, 1, 2, 2]
    same = load_dataset(str(folder / "part-*.npz"), seed=0)
    assert (same.x_train == ds.x_train).all() and (same.y_test == ds.y_test).all()
    train, _ = make_loaders(ds, batch_size=8)
    assert sum(len(y) for _, y in train) == 24
    two = load_dataset(str(folder / "part-0[01].npz"))
    assert two.num_classes == 2 and len(two.y_train) + len(two.y_test) == 20


def test_shard_refusals_are_one_line(tmp_path):
    folder = _shards(tmp_path / "shards")
    with pytest.raises(UserError, match="no .npz files match"):
        load_dataset(str(tmp_path / "nothing-*.npz"))
    np.savez(folder / "part-99.npz", x=np.zeros((4, 6, 6), np.float32), y=np.zeros(4, int))
    with pytest.raises(UserError, match="all shards must match") as e:
        load_dataset(str(folder))
    assert "part-99.npz" in str(e.value) and "\n" not in str(e.value)
    (folder / "part-99.npz").write_bytes(b"junk")
    with pytest.raises(UserError, match="part-99.npz: not a readable"):
        load_dataset(str(folder))
    one = tmp_path / "one"
    one.mkdir()
    np.savez(one / "a.npz", x=np.zeros((4, 3), np.float32), y=np.zeros(4, int))
    with pytest.raises(UserError, match="at least 2 classes"):
        load_dataset(str(one))
