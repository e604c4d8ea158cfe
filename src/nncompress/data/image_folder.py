"""Image folders (`root/<class>/<image>.jpg`) as streaming datasets, so ImageNet on disk works with every command.

Written here rather than imported from torchvision (which nncompress does not depend on). The layout and the
transforms follow torchvision's `ImageFolder` and the usual ImageNet recipe:

* eval: resize the shorter side to `resize` (256), center-crop `size` (224);
* train: random-resized crop (scale 0.08-1, aspect 3/4-4/3; Szegedy et al. 2015) + horizontal flip;
* both: scale to [0, 1], then normalize per channel with `mean` / `std` (ImageNet's by default).

Images are decoded one at a time in `__getitem__`, never all at once, because ImageNet does not fit in memory.
Training augmentation is drawn from `numpy.random.default_rng([seed, epoch, index])`, so a run is reproducible
given the seed and the epoch even with DataLoader worker processes (no shared global RNG state).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from torch.utils.data import Dataset as TorchDataset

from nncompress.core.errors import UserError
from nncompress.data.datasets import stratified_split

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_MEAN, GRAY_STD = (0.449,), (0.226,)
"""The channel average of ImageNet's statistics: a sensible default for grayscale images."""
MAX_MATERIALIZE = 4096
"""Most images a split's `x_train[...]` / `x_test[...]` view stacks into one tensor (example inputs, calibration)."""


def _no_images(where: Path, detail: str = "") -> UserError:
    return UserError(f"no images found under {where}: expected {where}/<class>/<image>.jpg{detail}")


def scan_image_folder(root: str | Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Sorted class names and (file, class index) pairs; hidden entries and non-images skipped.

    Class indices follow the sorted folder names, as torchvision's ImageFolder does, so labels agree with
    models trained there. A class folder without images is refused: it would be a class the model can never see.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"image folder not found: {root} (expected {root}/<class>/<image>.jpg)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise _no_images(root)
    samples: list[tuple[Path, int]] = []
    for index, name in enumerate(classes):
        files = sorted(f for f in (root / name).iterdir()
                       if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            if not samples and all(not _has_images(root / c) for c in classes):
                raise _no_images(root)
            raise _no_images(root, f" (class folder '{name}' holds no .jpg, .jpeg or .png; remove it or add images)")
        samples.extend((f, index) for f in files)
    if len(classes) < 2:
        raise UserError(f"{root}: only one class folder ('{classes[0]}'); a classifier needs at least 2 classes")
    return classes, samples


def _has_images(folder: Path) -> bool:
    return any(f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS
               for f in folder.iterdir())


def _decode(path: Path, mode: str, draft: int | None):
    """Open one image fully (so damage shows here), with Pillow's decompression-bomb guard as an error."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if draft and img.format == "JPEG":
                    img.draft(mode, (draft, draft))  # JPEG DCT scaling: a cheap decode at >= the size we need
                img.load()
                return img.convert(mode)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError(f"{path}: image has more than Image.MAX_IMAGE_PIXELS ({Image.MAX_IMAGE_PIXELS}) pixels; "
                        "refused as a possible decompression bomb (downscale it)") from None
    except Exception as e:  # noqa: BLE001 - any decode failure is the user's file
        raise UserError(f"{path}: not a readable image ({type(e).__name__}); re-save it as JPEG or PNG or remove it") from None


def _random_resized_crop_box(w: int, h: int, rng: np.random.Generator,
                             scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """A crop box covering `scale` of the area at aspect `ratio` (log-uniform); center crop if 10 tries fail."""
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            return x0, y0, x0 + cw, y0 + ch
    aspect = w / h  # fallback: the largest central crop within the allowed aspect range
    if aspect < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif aspect > ratio[1]:
        cw, ch = int(round(h * ratio[1])), h
    else:
        cw, ch = w, h
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    return x0, y0, x0 + cw, y0 + ch


class ImageFolderDataset(TorchDataset):
    """`root/<class>/*.{jpg,jpeg,png}` as a torch Dataset of (float32 [C, size, size], int64 label).

    `samples` restricts it to given (file, label) pairs (a train/test split) without rescanning the folder.
    An item may be indexed by `i` (epoch 0) or by `(i, epoch)`, which `EpochSampler` yields so that training
    augmentation changes per epoch yet stays reproducible given `seed` and the epoch.
    """

    def __init__(self, root: str | Path, *, size: int = 224, resize: int = 256, train: bool = True,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None, grayscale: bool = False,
                 seed: int = 0, samples: Sequence[tuple[Path, int]] | None = None, classes: Sequence[str] | None = None):
        if size < 1 or resize < 1:
            raise UserError(f"image size and resize must be >= 1, got size={size} resize={resize}")
        if resize < size:
            raise UserError(f"resize ({resize}) must be >= the crop size ({size})")
        self.root, self.size, self.resize, self.train, self.seed = Path(root), int(size), int(resize), bool(train), int(seed)
        self.mode = "L" if grayscale else "RGB"
        channels = 1 if grayscale else 3
        mean = tuple(mean) if mean is not None else (GRAY_MEAN if grayscale else IMAGENET_MEAN)
        std = tuple(std) if std is not None else (GRAY_STD if grayscale else IMAGENET_STD)
        if len(mean) != channels or len(std) != channels or min(std) <= 0:
            raise UserError(f"mean and std need {channels} value(s) each, std > 0; got mean={list(mean)} std={list(std)}")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        if samples is None:
            self.classes, self.samples = scan_image_folder(self.root)
        else:
            self.classes, self.samples = list(classes or []), [(Path(p), int(c)) for p, c in samples]
        self.targets = [c for _, c in self.samples]

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return (1 if self.mode == "L" else 3, self.size, self.size)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        path, label = self.samples[index]
        img = self._transform(path, int(index), int(epoch))
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
        x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
        return ((x - self.mean) / self.std).contiguous(), torch.tensor(label, dtype=torch.int64)

    def _transform(self, path: Path, index: int, epoch: int):
        from PIL import Image

        if not self.train:
            img = _decode(path, self.mode, self.resize)
            w, h = img.size
            s = self.resize / min(w, h)
            nw, nh = max(self.size, round(w * s)), max(self.size, round(h * s))
            img = img.resize((nw, nh), Image.BILINEAR)
            x0, y0 = (nw - self.size) // 2, (nh - self.size) // 2
            return img.crop((x0, y0, x0 + self.size, y0 + self.size))
        rng = np.random.default_rng([self.seed, epoch, index])
        img = _decode(path, self.mode, None)
        box = _random_resized_crop_box(*img.size, rng)
        img = img.resize((self.size, self.size), Image.BILINEAR, box=box)
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return img


class EpochSampler(Sampler):
    """Seeded shuffling that yields (index, epoch) and counts epochs itself, so augmentation follows the epoch
    without the training loop having to call `set_epoch` (nncompress.training.train does not know about it)."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n) if self.shuffle else np.arange(self.n)
        return iter([(int(i), epoch) for i in order])


class LazyImages:
    """`x_train` / `x_test` of a streaming split: `len()` and small indexing (`x[:n]`, `x[idx]`) decode on demand.

    Commands take example inputs and calibration batches as `ds.x_test[:n]`; this keeps that working without
    holding the split in memory. Asking for more than MAX_MATERIALIZE images at once, or using it as a whole
    tensor (`TensorDataset(ds.x_train, ...)`), is refused with a one-line UserError instead of exhausting memory.
    """

    def __init__(self, dataset: ImageFolderDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.dataset), *self.dataset.sample_shape)

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, (int, np.integer)):
            return self.dataset[int(key) % len(self.dataset) if key < 0 else int(key)][0]
        if isinstance(key, slice):
            indices = range(*key.indices(len(self.dataset)))
        else:
            indices = [int(i) for i in np.asarray(key.cpu() if isinstance(key, torch.Tensor) else key).reshape(-1)]
        if len(indices) > MAX_MATERIALIZE:
            raise self._refuse(f"asks for {len(indices)} images at once")
        if not len(indices):
            return torch.empty((0, *self.dataset.sample_shape))
        return torch.stack([self.dataset[i][0] for i in indices])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """`np.asarray(ds.x_test)` (e.g. ONNX Runtime on the test split): stacked if small, refused if not."""
        out = self[:].numpy()
        return out if dtype is None else out.astype(dtype)

    def size(self, dim: int | None = None):
        raise self._refuse("needs the whole split as one in-memory tensor")

    def _refuse(self, what: str) -> UserError:
        return UserError(f"image folder {self.dataset.root}: this step {what}; image folders stream from disk "
                         f"(at most {MAX_MATERIALIZE} images at once): use an .npz dataset for this command")


@dataclass
class StreamingDataset:
    """The `Dataset` interface the commands use, for data that stays on disk: train/test are torch Datasets.

    Same attributes as `nncompress.data.Dataset` (name, num_classes, input_shape, x_*/y_*, subset) so
    `make_loaders`, model building and example-input slicing work unchanged; `x_train`/`x_test` are LazyImages.
    Labels are small, so `y_train`/`y_test` are ordinary int64 tensors.
    """

    name: str
    train: ImageFolderDataset
    test: ImageFolderDataset
    num_classes: int
    num_workers: int = 0
    classes: list[str] = field(default_factory=list)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.train.sample_shape

    @property
    def x_train(self) -> LazyImages:
        return LazyImages(self.train)

    @property
    def x_test(self) -> LazyImages:
        return LazyImages(self.test)

    @property
    def y_train(self) -> torch.Tensor:
        return torch.tensor(self.train.targets, dtype=torch.int64)

    @property
    def y_test(self) -> torch.Tensor:
        return torch.tensor(self.test.targets, dtype=torch.int64)

    def subset(self, n_train: int | None = None, n_test: int | None = None) -> "StreamingDataset":
        """The first n files of each split (already shuffled by the split), for fast runs."""
        return StreamingDataset(self.name, _take(self.train, n_train), _take(self.test, n_test),
                                self.num_classes, self.num_workers, self.classes)

    def loaders(self, batch_size: int = 64, seed: int = 0) -> tuple[DataLoader, DataLoader]:
        """Seeded, epoch-aware shuffling train loader and an ordered test loader, decoding as they go."""
        train = DataLoader(self.train, batch_size=batch_size, sampler=EpochSampler(len(self.train), seed),
                           num_workers=self.num_workers)
        test = DataLoader(self.test, batch_size=min(512, max(batch_size, 64)), shuffle=False, num_workers=self.num_workers)
        return train, test


def _take(ds: ImageFolderDataset, n: int | None) -> ImageFolderDataset:
    return ImageFolderDataset(ds.root, size=ds.size, resize=ds.resize, train=ds.train, mean=tuple(ds.mean.view(-1).tolist()),
                              std=tuple(ds.std.view(-1).tolist()), grayscale=ds.mode == "L", seed=ds.seed,
                              samples=ds.samples[:n], classes=ds.classes)


def load_image_folder(root: str | Path, test_fraction: float = 0.2, seed: int = 0, *, size: int = 224, resize: int = 256,
                      grayscale: bool = False, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                      num_workers: int = 0) -> StreamingDataset:
    """An image folder split per class by file (seeded, stratified like `load_dataset`) into train and test.

    The train split gets training augmentation, the test split the deterministic eval transform.
    """
    root = Path(root)
    classes, samples = scan_image_folder(root)
    labels = np.array([c for _, c in samples])
    train_idx, test_idx = stratified_split(labels, test_fraction, seed)  # every class has images (scan checked)
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise UserError(f"image folder {root} is too small to split into train and test ({len(samples)} images)")
    common = dict(size=size, resize=resize, mean=mean, std=std, grayscale=grayscale, seed=seed, classes=classes)
    train = ImageFolderDataset(root, train=True, samples=[samples[i] for i in train_idx], **common)
    test = ImageFolderDataset(root, train=False, samples=[samples[i] for i in test_idx], **common)
    return StreamingDataset(root.resolve().name or str(root), train, test, len(classes), num_workers, list(classes))
