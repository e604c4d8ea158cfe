"""Selective attention: a cheap localizer picks where to look, the classifier runs only on that window.

Conditional computation in the "glimpse" sense (Larochelle & Hinton 2010; Mnih et al. 2014, "Recurrent models
of visual attention", here with one glimpse and a supervised localizer instead of REINFORCE): for a digit at a
random position on an S×S canvas,

    ĉ = L(x)                     L: a LocalizationCascade (search/cascade.py), by default one level that sees
                                 the canvas average-pooled 2× and regresses the digit's center
    ŷ = f(crop(x, ĉ, k))         f: LeNet-5 (Caffe) on a k×k window (k = 28: the digit's own size)

MACs(attention) = MACs(L) + MACs(f on k×k)   (the crop is indexing: 0 MACs)
MACs(baseline)  = MACs(LeNet-5 on the whole S×S canvas)
saving = 1 − MACs(attention) / MACs(baseline)

For LeNet-5 (Caffe: conv 20@5×5, pool 2, conv 50@5×5, pool 2, fc 500, fc 10), MACs on an s×s input are
20·25·(s−4)² + 50·500·((s−4)/2−4)² + 50·⌊((s−4)/2−4)/2⌋²·500 + 5000: 2,293,000 at s = 28, 16,482,000 at s = 56,
so the crop classifier alone costs 13.9 % of the baseline and the localizer has the rest of a 50 % budget.

The baseline is the same LeNet-5 architecture given the whole canvas (its fc1 grows with the canvas: the cheapest
whole-canvas LeNet, so the saving is not flattered), trained on the same samples as the crop classifier — each
training digit placed at `placements` seeded positions (`PlacedDigits`: position augmentation, which the
whole-canvas net needs far more than the crop net) — with the same optimizer, learning rate, batch size and
epochs. The crop classifier is trained on windows at those true centers shifted by ±`jitter_px`, so it
tolerates the localizer's error; the localizer is trained on the fixed training canvases.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from nncompress.analysis.macs import count_macs
from nncompress.core.errors import UserError
from nncompress.data.canvas import crop_at
from nncompress.search.cascade import (
    LevelSpec, LocalizationCascade, cascade_centers, check_not_chance, localization_error_px, top1_percent,
    train_cascade, train_crop_classifier,
)


class SelectiveAttention(nn.Module):
    """localizer(x) → centers; classifier(crop(x, centers, crop_px)) → logits. `last_centers` keeps the centers."""

    def __init__(self, localizer: LocalizationCascade, classifier: nn.Module, crop_px: int):
        super().__init__()
        if not 1 <= crop_px <= localizer.canvas_px:
            raise UserError(f"crop_px={crop_px} must be between 1 and the canvas side {localizer.canvas_px}")
        self.localizer = localizer
        self.classifier = classifier
        self.crop_px = crop_px
        self.last_centers: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centers = self.localizer(x)
        self.last_centers = centers.detach()
        windows, _ = crop_at(x, centers.detach(), self.crop_px)
        return self.classifier(windows)

    def macs(self) -> dict[str, int]:
        """MACs per canvas: localizer, classifier on the crop, and their total (cropping is free)."""
        c, s = self.localizer.in_channels, self.localizer.canvas_px
        loc = sum(self.localizer.macs_per_level())
        cls = count_macs(self.classifier, (c, self.crop_px, self.crop_px)).total_macs
        total = count_macs(self, (c, s, s)).total_macs
        if total != loc + cls:  # the pipeline traced as a whole must be the sum of its parts
            raise RuntimeError(f"MAC count of the pipeline ({total}) differs from localizer + classifier ({loc + cls})")
        return {"localizer_macs": loc, "classifier_macs": cls, "total_macs": total}


def lenet5_macs(side_px: int, in_channels: int = 1, num_classes: int = 10) -> int:
    """MACs of the Caffe LeNet-5 (architectures/lenet.py, unpadded for sides ≥ 28) on a side×side input, closed form."""
    if side_px < 28:
        raise UserError(f"the closed form covers unpadded LeNet-5 (inputs ≥ 28 px), got {side_px}")
    a = side_px - 4            # conv1 output side
    b = a // 2 - 4             # conv2 output side (after pool 2)
    c = b // 2                 # after the second pool
    return 20 * in_channels * 25 * a * a + 50 * 20 * 25 * b * b + 50 * c * c * 500 + 500 * num_classes


def selective_attention_experiment(seed: int = 0, epochs: int = 3, canvas: int = 56, crop_px: int = 28,
                                   jitter_px: float = 3.0, placements: int = 3, levels: Sequence[LevelSpec] | None = None,
                                   localizer_epochs: int = 6, baseline_epochs: int | None = None,
                                   baseline_placements: int | None = None, lr: float = 1e-3, data: str = "mnist5k",
                                   n_train: int | None = None, n_test: int | None = None, threads: int = 1,
                                   progress: bool | None = False) -> dict:
    """Crop-then-classify vs classify-the-whole-canvas on `data` digits at seeded random positions on a
    `canvas`×`canvas` canvas; top-1 on the held-out test split, MACs per canvas for both.

    Returns baseline_top1, attention_top1, drop_pp (= baseline − attention), baseline_macs, attention_macs,
    localizer_macs, classifier_macs, macs_saved_pct, localization error (mean, p95), and oracle_top1 (the crop
    classifier on windows at the true centers: the accuracy a perfect localizer would give).
    Default localizer: one level, the canvas pooled 2×. Deterministic for a given seed.
    `baseline_epochs` / `baseline_placements` (default: the same as the crop classifier's) give the whole-canvas
    baseline a larger training budget, to check that the comparison does not rest on an under-trained baseline.
    """
    from nncompress.analysis.latency import num_threads
    from nncompress.architectures.lenet import LeNet5
    from nncompress.core.seed import seed_everything
    from nncompress.data.canvas import PlacedDigits, make_canvas_dataset
    from nncompress.training import TrainConfig, train

    if crop_px < 28:
        raise UserError(f"crop_px={crop_px}: the LeNet-5 classifier needs windows of at least 28 px (the digit's size)")
    if canvas < crop_px:
        raise UserError(f"canvas={canvas} is smaller than the crop ({crop_px} px); use canvas ≥ {crop_px}")
    levels = list(levels) if levels is not None else [LevelSpec(canvas, 2)]
    with num_threads(threads):
        ds = make_canvas_dataset(data, canvas, seed, n_train, n_test)
        ch = ds.input_shape[0]
        hint = "train for more epochs or check the learning rate"

        seed_everything(seed)
        baseline = LeNet5((ch, canvas, canvas), ds.num_classes)
        g = torch.Generator().manual_seed(seed)
        b_epochs = epochs if baseline_epochs is None else baseline_epochs
        b_placements = placements if baseline_placements is None else baseline_placements
        items = PlacedDigits(ds.digits_train, ds.y_train, canvas, b_placements, seed * 1000 + 998, ds.background)
        loader = DataLoader(items, batch_size=64, shuffle=True, generator=g)
        train(baseline, loader, TrainConfig(epochs=b_epochs, lr=lr, optimizer="adam", seed=seed, progress=progress))
        baseline_top1 = top1_percent(baseline, ds.x_test, ds.y_test)
        check_not_chance(baseline_top1, ds.num_classes, "selective attention: whole-canvas baseline", hint)

        seed_everything(seed)
        localizer = LocalizationCascade(canvas, levels, in_channels=ch)
        train_cascade(localizer, ds.x_train, ds.c_train, epochs=localizer_epochs, seed=seed, progress=progress)
        seed_everything(seed)
        classifier = LeNet5((ch, crop_px, crop_px), ds.num_classes)
        train_crop_classifier(classifier, ds, crop_px, jitter_px, placements, epochs=epochs, lr=lr, seed=seed,
                              progress=progress)
        model = SelectiveAttention(localizer, classifier, crop_px)
        attention_top1 = top1_percent(model, ds.x_test, ds.y_test)
        check_not_chance(attention_top1, ds.num_classes, "selective attention: crop-then-classify", hint)
        oracle_top1 = top1_percent(classifier, crop_at(ds.x_test, ds.c_test, crop_px)[0], ds.y_test)
        err = localization_error_px(cascade_centers(localizer, ds.x_test)[-1], ds.c_test)

    macs = model.macs()
    baseline_macs = count_macs(baseline, (ch, canvas, canvas)).total_macs
    saved = 100.0 * (1.0 - macs["total_macs"] / baseline_macs)
    drop = baseline_top1 - attention_top1
    return {
        "data": data, "canvas_px": canvas, "crop_px": crop_px, "epochs": epochs, "seed": seed,
        "n_train": len(ds.y_train), "n_test": len(ds.y_test),
        "baseline": (f"LeNet-5 (Caffe) on the whole {canvas}×{canvas} canvas, each training digit at {b_placements} "
                     f"seeded positions, Adam lr={lr:g}, {b_epochs} epochs"),
        "attention_training": (f"localizer {localizer_epochs} epochs on the fixed training canvases; crop classifier "
                               f"{epochs} epochs on each digit at {placements} positions, jitter ±{jitter_px:g} px"),
        "attention": (f"{len(levels)}-level localizer ({', '.join(f'{s.window_px} px /{s.downsample}' for s in levels)}) "
                      f"+ LeNet-5 on a {crop_px}×{crop_px} crop"),
        "baseline_top1": baseline_top1, "attention_top1": attention_top1, "oracle_top1": oracle_top1,
        "drop_pp": drop, "baseline_macs": baseline_macs, "attention_macs": macs["total_macs"],
        "localizer_macs": macs["localizer_macs"], "classifier_macs": macs["classifier_macs"],
        "macs_saved_pct": saved, "mean_error_px": float(err.mean()), "p95_error_px": float(torch.quantile(err, 0.95)),
        "met": bool(saved >= 50.0 and drop <= 1.0),
    }
