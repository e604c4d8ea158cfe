"""Digits placed at seeded random positions on a larger canvas, and square windows cropped back out of it.

The test bed for conditional computation (search/selective_attention.py, search/cascade.py): a 28×28 mnist5k digit
pasted at a uniformly drawn integer position on a 56×56 (or larger) canvas filled with the background value,
so a classifier of the whole canvas spends most of its MACs on empty pixels.

Coordinates are continuous pixel coordinates (y, x) where pixel i covers [i, i + 1). A digit pasted with its
top-left pixel at (r, c) covers [r, r + h) × [c, c + w), so its center is (r + h/2, c + w/2).
A window of `crop_px` "at center (cy, cx)" starts at origin = floor(c − crop_px/2 + 1/2) (nearest integer,
halves rounded up), clamped into [0, canvas − crop_px] so it never leaves the canvas; the window's own
center is then origin + crop_px/2.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from nncompress.core.errors import UserError


@dataclass
class CanvasDataset:
    """Canvases [N, C, S, S] with labels [N] and digit centers [N, 2] (y, x in canvas pixels), train and test."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    c_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    c_test: torch.Tensor
    num_classes: int
    digit_px: int
    digits_train: torch.Tensor | None = None  # the training images before placement (for fresh placements)
    background: float = 0.0

    @property
    def canvas_px(self) -> int:
        return int(self.x_train.shape[-1])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def place_digits(images: torch.Tensor, canvas_px: int, generator: torch.Generator,
                 background: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste each image [N, C, h, w] at a uniformly drawn integer top-left (r, c) ∈ [0, S−h] × [0, S−w] of an S×S
    canvas filled with `background`; returns (canvases [N, C, S, S], centers [N, 2] = (r + h/2, c + w/2))."""
    if images.ndim != 4:
        raise UserError(f"place_digits: expected images of shape [N, C, h, w], got {list(images.shape)}")
    n, ch, h, w = images.shape
    if canvas_px < max(h, w):
        raise UserError(f"canvas of {canvas_px} px is smaller than the {h}×{w} images; use canvas_px ≥ {max(h, w)}")
    rows = torch.randint(0, canvas_px - h + 1, (n,), generator=generator)
    cols = torch.randint(0, canvas_px - w + 1, (n,), generator=generator)
    canvases = torch.full((n, ch, canvas_px, canvas_px), float(background), dtype=images.dtype)
    for i in range(n):
        r, c = int(rows[i]), int(cols[i])
        canvases[i, :, r:r + h, c:c + w] = images[i]
    centers = torch.stack([rows.to(torch.float32) + h / 2, cols.to(torch.float32) + w / 2], dim=1)
    return canvases, centers


def make_canvas_dataset(data: str = "mnist5k", canvas_px: int = 56, seed: int = 0, n_train: int | None = None,
                        n_test: int | None = None) -> CanvasDataset:
    """Load `data` (a square-image dataset, e.g. mnist5k: 4,000 train / 1,000 test, standardized) and paste each
    digit once on a `canvas_px` canvas at a position seeded by `seed` (train and test drawn from separate streams).

    The background is the training images' minimum: for MNIST that is exactly the standardized 0 of the black
    border, so a canvas is indistinguishable from a larger black MNIST image.
    """
    from nncompress.data.datasets import load_dataset

    ds = load_dataset(data, seed=seed).subset(n_train, n_test)
    if len(ds.input_shape) != 3 or ds.input_shape[1] != ds.input_shape[2]:
        raise UserError(f"dataset '{data}' has samples of shape {list(ds.input_shape)}; canvases need square images [C, h, h]")
    background = float(ds.x_train.min())
    g_train = torch.Generator().manual_seed(seed * 2 + 1)
    g_test = torch.Generator().manual_seed(seed * 2 + 2)
    x_tr, c_tr = place_digits(ds.x_train, canvas_px, g_train, background)
    x_te, c_te = place_digits(ds.x_test, canvas_px, g_test, background)
    return CanvasDataset(ds.name, x_tr, ds.y_train, c_tr, x_te, ds.y_test, c_te, ds.num_classes, ds.input_shape[1],
                         ds.x_train, background)


class PlacedDigits(torch.utils.data.Dataset):
    """`placements` × N training samples, made on the fly: item i is digit i mod N pasted at its own seeded position
    (so each pass over the data sees every digit at `placements` different places), returned as (canvas, label),
    or with `crop_px` as (the crop_px window at the digit's center shifted by U[−j, j]², label).

    Position augmentation for whole-canvas and crop classifiers alike, without holding K·N canvases in memory.
    """

    def __init__(self, digits: torch.Tensor, labels: torch.Tensor, canvas_px: int, placements: int = 1, seed: int = 0,
                 background: float = 0.0, crop_px: int | None = None, jitter_px: float = 0.0):
        if digits.ndim != 4 or len(digits) != len(labels):
            raise UserError(f"PlacedDigits: expected digits [N, C, h, w] and labels [N], got {list(digits.shape)} and {list(labels.shape)}")
        if isinstance(placements, bool) or not isinstance(placements, int) or placements < 1:
            raise UserError(f"placements must be a whole number ≥ 1, got {placements!r}")
        n, _, h, w = digits.shape
        if canvas_px < max(h, w):
            raise UserError(f"canvas of {canvas_px} px is smaller than the {h}×{w} images; use canvas_px ≥ {max(h, w)}")
        if crop_px is not None and not 1 <= crop_px <= canvas_px:
            raise UserError(f"crop of {crop_px} px does not fit a {canvas_px} px canvas; use 1 ≤ crop_px ≤ {canvas_px}")
        g = torch.Generator().manual_seed(seed)
        total = n * placements
        self.digits, self.labels, self.canvas_px, self.background = digits, labels, canvas_px, float(background)
        self.rows = torch.randint(0, canvas_px - h + 1, (total,), generator=g)
        self.cols = torch.randint(0, canvas_px - w + 1, (total,), generator=g)
        self.crop_px = crop_px
        centers = torch.stack([self.rows.to(torch.float32) + h / 2, self.cols.to(torch.float32) + w / 2], dim=1)
        self.origins = None
        if crop_px is not None:
            jitter = (torch.rand((total, 2), generator=g) * 2 - 1) * float(jitter_px)
            self.origins = crop_origins(centers + jitter, crop_px, canvas_px)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.digits[i % len(self.digits)]
        ch, h, w = d.shape
        r, c = int(self.rows[i]), int(self.cols[i])
        canvas = torch.full((ch, self.canvas_px, self.canvas_px), self.background, dtype=d.dtype)
        canvas[:, r:r + h, c:c + w] = d
        label = self.labels[i % len(self.labels)]
        if self.origins is None:
            return canvas, label
        o0, o1, k = int(self.origins[i, 0]), int(self.origins[i, 1]), self.crop_px
        return canvas[:, o0:o0 + k, o1:o1 + k], label


def crop_origins(centers: torch.Tensor, crop_px: int, canvas_px: int) -> torch.Tensor:
    """Integer top-left (row, col) [N, 2] of the `crop_px` window nearest to centered at `centers` [N, 2]:
    floor(center − crop_px/2 + 1/2), clamped into [0, canvas_px − crop_px]."""
    if crop_px > canvas_px or crop_px < 1:
        raise UserError(f"crop of {crop_px} px does not fit a {canvas_px} px canvas; use 1 ≤ crop_px ≤ {canvas_px}")
    if centers.ndim != 2 or centers.shape[1] != 2:
        raise UserError(f"centers must have shape [N, 2] (y, x), got {list(centers.shape)}")
    origins = torch.floor(centers.to(torch.float64) - crop_px / 2 + 0.5).to(torch.int64)
    return origins.clamp(0, canvas_px - crop_px)


def crop_windows(images: torch.Tensor, origins: torch.Tensor, crop_px: int) -> torch.Tensor:
    """Windows images[n, :, r:r+crop_px, c:c+crop_px] for each origin (r, c) [N, 2], as one gather: [N, C, k, k]."""
    n, _, h, w = images.shape
    if origins.shape != (n, 2):
        raise UserError(f"origins must have shape [{n}, 2], got {list(origins.shape)}")
    if bool((origins < 0).any()) or bool((origins[:, 0] + crop_px > h).any()) or bool((origins[:, 1] + crop_px > w).any()):
        raise UserError(f"a {crop_px} px window at the given origins leaves the {h}×{w} image; clamp them (crop_origins does)")
    offs = torch.arange(crop_px, device=images.device)
    rows = origins[:, 0:1].to(images.device) + offs  # [N, k]
    cols = origins[:, 1:2].to(images.device) + offs
    batch = torch.arange(n, device=images.device)[:, None, None]
    return images[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def crop_at(images: torch.Tensor, centers: torch.Tensor, crop_px: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(windows [N, C, k, k], origins [N, 2]) of the `crop_px` windows at `centers` (see `crop_origins`)."""
    origins = crop_origins(centers, crop_px, int(images.shape[-1]))
    if images.shape[-2] != images.shape[-1]:
        raise UserError(f"crop_at expects square canvases, got {list(images.shape[-2:])}")
    return crop_windows(images, origins, crop_px), origins
