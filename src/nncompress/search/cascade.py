"""Coarse-to-fine localization cascade (Sun, Wang, Tang, CVPR 2013, "Deep convolutional network cascade for
facial point detection"), applied to finding a digit on a larger canvas.

What is built, precisely: level 1 regresses the object's center (y, x) from the *whole* canvas, average-pooled by
`downsample` (cheap: a 56×56 canvas pooled 4× is 14×14). Each later level k sees only a `window_px` window cropped
(at full or pooled resolution) around level k−1's estimate and regresses the residual offset, so

    ĉ_1 = S/2 + S·f_1(pool(x))                       (S = canvas side)
    ĉ_k = o_k + w_k/2 + w_k·f_k(pool(crop(x, ĉ_{k−1}, w_k)))   (o_k = the window's integer origin)

Every f_k is a small CNN (`PointRegressor`) trained with mean squared error on normalized offsets. As in Sun et al.,
level k ≥ 2 is trained on windows centered at the ground truth shifted by a uniform random jitter in
[−j_k, j_k]² pixels (the error scale of the level before), so at test time it corrects level k−1's mistakes.
Deviation from the paper: one net per level (Sun et al. average several nets on different facial regions),
because a digit has a single point of interest. MACs are counted per level with `nncompress.analysis.count_macs`
(average pooling and cropping are additions and indexing: 0 MACs). All levels always run: the saving comes
from later levels looking at small windows instead of the full-resolution canvas.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from nncompress.analysis.macs import count_macs
from nncompress.core.errors import UserError
from nncompress.core.guards import DivergenceError, check_hyperparameter
from nncompress.data.canvas import CanvasDataset, crop_at


class PointRegressor(nn.Module):
    """conv 3×3 (C→w) → ReLU → maxpool 2 → conv 3×3 (w→2w) → ReLU → maxpool 2 → linear (2w·⌊⌊s/2⌋/2⌋² → hidden)
    → ReLU → linear (hidden → 2): a normalized 2-D offset from an s×s input."""

    def __init__(self, in_px: int, in_channels: int = 1, width: int = 8, hidden: int = 64):
        super().__init__()
        side = in_px // 2 // 2
        if side < 1:
            raise UserError(f"PointRegressor needs inputs of at least 4 px, got {in_px}; use a larger window or less downsampling")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * side * side, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass(frozen=True)
class LevelSpec:
    """One cascade level: the side of the canvas window it sees (level 1: the whole canvas), the average-pooling
    factor applied to that window, and the training jitter (pixels, per axis) of the window's center."""

    window_px: int
    downsample: int = 1
    jitter_px: float = 0.0


class CascadeLevel(nn.Module):
    """avg-pool by `downsample`, then a PointRegressor: the offset of the object's center from the window's center,
    in units of the window side."""

    def __init__(self, spec: LevelSpec, in_channels: int = 1, width: int = 8, hidden: int = 64):
        super().__init__()
        if spec.downsample < 1 or spec.window_px % spec.downsample:
            raise UserError(f"level window of {spec.window_px} px is not divisible by downsample={spec.downsample}; "
                            "pick a factor of the window side")
        self.spec = spec
        self.pool = nn.AvgPool2d(spec.downsample) if spec.downsample > 1 else nn.Identity()
        self.net = PointRegressor(spec.window_px // spec.downsample, in_channels, width, hidden)

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        return self.net(self.pool(window))


class LocalizationCascade(nn.Module):
    """Levels run in order, each refining the previous center estimate (see the module docstring).

    forward(x) returns the last level's centers [N, 2] (y, x, canvas pixels); `estimates(x)` returns every level's.
    """

    def __init__(self, canvas_px: int, levels: Sequence[LevelSpec], in_channels: int = 1, width: int = 8, hidden: int = 64):
        super().__init__()
        levels = list(levels)
        if not levels:
            raise UserError("a cascade needs at least one level")
        if levels[0].window_px != canvas_px:
            raise UserError(f"level 1 must see the whole canvas: window_px={levels[0].window_px}, canvas is {canvas_px} px")
        for k, spec in enumerate(levels[1:], start=2):
            if not 1 <= spec.window_px <= canvas_px:
                raise UserError(f"level {k}: window of {spec.window_px} px does not fit the {canvas_px} px canvas")
        self.canvas_px = canvas_px
        self.in_channels = in_channels
        self.levels = nn.ModuleList(CascadeLevel(s, in_channels, width, hidden) for s in levels)

    def _window(self, x: torch.Tensor, k: int, previous: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(window, origin [N, 2]) that level k sees."""
        if k == 0:
            return x, torch.zeros(len(x), 2, dtype=torch.int64, device=x.device)
        return crop_at(x, previous, self.levels[k].spec.window_px)

    def estimates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Center estimates [N, 2] after each level."""
        if x.ndim != 4 or x.shape[-1] != self.canvas_px or x.shape[-2] != self.canvas_px:
            raise UserError(f"cascade expects canvases [N, C, {self.canvas_px}, {self.canvas_px}], got {list(x.shape)}")
        out, est = [], None
        for k, level in enumerate(self.levels):
            w = level.spec.window_px
            window, origin = self._window(x, k, est)
            est = origin.to(x.dtype) + w / 2 + w * level(window)
            out.append(est)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.estimates(x)[-1]

    def macs_per_level(self) -> list[int]:
        """MACs of each level for one canvas (pooling and cropping count 0)."""
        return [count_macs(level, (self.in_channels, level.spec.window_px, level.spec.window_px)).total_macs
                for level in self.levels]


def localization_error_px(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Euclidean distance ‖ĉ − c‖₂ per sample, in pixels."""
    return torch.linalg.vector_norm(pred.to(torch.float64) - true.to(torch.float64), dim=1)


def jittered_centers(centers: torch.Tensor, jitter_px: float, generator: torch.Generator) -> torch.Tensor:
    """centers + U[−j, j]² (independent per sample and axis), drawn from `generator`."""
    if jitter_px < 0 or not math.isfinite(jitter_px):
        raise UserError(f"jitter_px must be a finite number ≥ 0, got {jitter_px}")
    return centers + (torch.rand(centers.shape, generator=generator) * 2 - 1) * jitter_px


def level_training_set(cascade: LocalizationCascade, k: int, x: torch.Tensor, centers: torch.Tensor,
                       generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(windows, normalized offset targets) for level k: level 1 sees x with target (c − S/2)/S; level k ≥ 2 sees the
    window around c + jitter with target (c − (o + w/2))/w, o the window's (clamped) origin."""
    spec = cascade.levels[k].spec
    if k == 0:
        return x, (centers - cascade.canvas_px / 2) / cascade.canvas_px
    windows, origin = crop_at(x, jittered_centers(centers, spec.jitter_px, generator), spec.window_px)
    return windows, (centers - (origin.to(centers.dtype) + spec.window_px / 2)) / spec.window_px


def train_cascade(cascade: LocalizationCascade, x: torch.Tensor, centers: torch.Tensor, epochs: int = 8,
                  lr: float = 2e-3, batch_size: int = 64, seed: int = 0, progress: bool | None = False) -> list[float]:
    """Train the levels one after another with `nncompress.training.train` (Adam, cosine schedule, MSE on
    normalized offsets); returns each level's final training loss."""
    from nncompress.training import TrainConfig, train

    check_hyperparameter("learning rate lr", lr)
    losses = []
    for k, level in enumerate(cascade.levels):
        g = torch.Generator().manual_seed(seed * 1000 + k)
        windows, targets = level_training_set(cascade, k, x, centers, g)
        loader = DataLoader(TensorDataset(windows, targets.to(torch.float32)), batch_size=batch_size, shuffle=True, generator=g)
        hist = train(level, loader, TrainConfig(epochs=epochs, lr=lr, optimizer="adam", seed=seed + k, progress=progress),
                     loss_fn=nn.functional.mse_loss)
        losses.append(hist[-1]["loss"] if hist else float("nan"))
    return losses


@torch.no_grad()
def cascade_centers(cascade: LocalizationCascade, x: torch.Tensor, batch_size: int = 500) -> list[torch.Tensor]:
    """Every level's center estimates for a whole tensor of canvases, in eval mode, batched."""
    was = cascade.training
    cascade.eval()
    parts = [cascade.estimates(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    cascade.train(was)
    return [torch.cat([p[k] for p in parts]) for k in range(len(cascade.levels))]


def train_crop_classifier(classifier: nn.Module, ds: CanvasDataset, crop_px: int, jitter_px: float = 3.0,
                          placements: int = 1, epochs: int = 6, lr: float = 1e-3, batch_size: int = 64, seed: int = 0,
                          progress: bool | None = False) -> None:
    """Train `classifier` on `crop_px` windows cut from the training digits placed `placements` times each
    (`PlacedDigits`), each window centered at the true center shifted by U[−j, j]² pixels (seeded), so the
    classifier tolerates a localizer's error of up to about j pixels per axis."""
    from nncompress.data.canvas import PlacedDigits
    from nncompress.training import TrainConfig, train

    if ds.digits_train is None:
        raise UserError("the canvas dataset holds no training digits; build it with make_canvas_dataset")
    items = PlacedDigits(ds.digits_train, ds.y_train, ds.canvas_px, placements, seed * 1000 + 998, ds.background,
                         crop_px, jitter_px)
    g = torch.Generator().manual_seed(seed * 1000 + 999)
    loader = DataLoader(items, batch_size=batch_size, shuffle=True, generator=g)
    train(classifier, loader, TrainConfig(epochs=epochs, lr=lr, optimizer="adam", seed=seed, progress=progress))


@torch.no_grad()
def top1_percent(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy (percent) of `model` on a tensor of inputs, eval mode, batched."""
    was = model.training
    model.eval()
    correct = sum(int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum()) for i in range(0, len(x), batch_size))
    model.train(was)
    return 100.0 * correct / max(len(y), 1)


def check_not_chance(top1: float, num_classes: int, what: str, hint: str) -> None:
    """A chance-level result is an error, never a row in a table (core/guards.py)."""
    from nncompress.core.guards import near_chance

    if near_chance(top1, num_classes):
        raise DivergenceError(f"{what}: top-1 {top1:.2f}% is at chance level for {num_classes} classes; {hint}")


def cascade_experiment(seed: int = 0, epochs: int = 8, canvas_px: int = 56, levels: Sequence[LevelSpec] | None = None,
                       crop_px: int = 28, classifier_epochs: int = 4, data: str = "mnist5k", n_train: int | None = None,
                       n_test: int | None = None, threads: int = 1, progress: bool | None = False) -> dict:
    """Train a localization cascade on digits placed on a canvas and measure, per level, the test localization
    error (mean and 95th percentile, pixels), the level's MACs and the cumulative MACs; then the top-1 of a
    LeNet-5 trained on jittered 28×28 crops when it classifies the crop at each level's estimate.

    Default levels scale with the canvas: (S, 4×), (S/2, 2×, ±6 px), (20, 1×, ±1.5 px). On 56×56 mnist5k canvases
    (8 epochs per level) they reach 1.02, 0.60 and 0.50 px mean error; a 16-px third window with ±3 px jitter made
    it worse (0.87 px): the last window must still show most of the digit, and its jitter should match the
    previous level's error, as in Sun et al.
    """
    from nncompress.analysis.latency import num_threads
    from nncompress.architectures.lenet import LeNet5
    from nncompress.core.seed import seed_everything
    from nncompress.data.canvas import make_canvas_dataset

    if levels is None:
        levels = (LevelSpec(canvas_px, 4), LevelSpec(canvas_px // 2, 2, 6.0), LevelSpec(20, 1, 1.5))
    with num_threads(threads):
        ds: CanvasDataset = make_canvas_dataset(data, canvas_px, seed, n_train, n_test)
        seed_everything(seed)
        cascade = LocalizationCascade(canvas_px, levels, in_channels=ds.input_shape[0])
        train_cascade(cascade, ds.x_train, ds.c_train, epochs=epochs, seed=seed, progress=progress)
        per_level = cascade_centers(cascade, ds.x_test)
        macs = cascade.macs_per_level()
        seed_everything(seed)
        classifier = LeNet5((ds.input_shape[0], crop_px, crop_px), ds.num_classes)
        train_crop_classifier(classifier, ds, crop_px, epochs=classifier_epochs, seed=seed, progress=progress)
        oracle = top1_percent(classifier, crop_at(ds.x_test, ds.c_test, crop_px)[0], ds.y_test)
        check_not_chance(oracle, ds.num_classes, "cascade_experiment: crop classifier", "train for more epochs")
        rows, cum = [], 0
        for k, (spec, est, m) in enumerate(zip(levels, per_level, macs), start=1):
            err = localization_error_px(est, ds.c_test)
            cum += m
            rows.append({"level": k, "window_px": spec.window_px, "downsample": spec.downsample, "jitter_px": spec.jitter_px,
                         "mean_error_px": float(err.mean()), "p95_error_px": float(torch.quantile(err, 0.95)),
                         "macs": m, "cumulative_macs": cum,
                         "crop_top1": top1_percent(classifier, crop_at(ds.x_test, est, crop_px)[0], ds.y_test)})
    return {"canvas_px": canvas_px, "crop_px": crop_px, "epochs": epochs, "seed": seed, "data": data,
            "n_train": len(ds.y_train), "n_test": len(ds.y_test), "levels": rows,
            "oracle_crop_top1": oracle, "classifier_macs": count_macs(classifier, (ds.input_shape[0], crop_px, crop_px)).total_macs}
