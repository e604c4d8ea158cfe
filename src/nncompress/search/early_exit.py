"""Early exit (BranchyNet, Teerapittayanon et al. 2016; "shallow-deep" exits, Kaya et al. 2019): classifier
branches after chosen layers of a sequential backbone, trained jointly, and a per-exit confidence threshold.

Training minimizes Σ_k w_k · CE(exit_k(x), y) + w_final · CE(final(x), y). At inference a sample stops at the
first exit k whose softmax confidence max_c p_c > τ_k (strictly), so τ = 1.0 never exits and the net equals
the backbone. `calibrate_thresholds` picks, exit by exit on held-out data, the lowest τ_k whose exiting
samples lose at most the remaining accuracy budget relative to the final classifier.
"""
from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from nncompress.architectures.summary import count_macs
from nncompress.core.errors import UserError
from nncompress.training import Callback
from nncompress.training.device import module_device


def to_sequential(model: nn.Module) -> nn.Sequential:
    """The layers of a sequential-style backbone in order: an nn.Sequential itself, or `features` + `classifier`."""
    if isinstance(model, nn.Sequential):
        return model
    if isinstance(getattr(model, "features", None), nn.Sequential) and isinstance(getattr(model, "classifier", None), nn.Module):
        return nn.Sequential(*model.features, model.classifier)
    raise UserError(f"{type(model).__name__} is not sequential-style: pass an nn.Sequential or a model with "
                    "`features` (nn.Sequential) and `classifier` modules")


class ExitHead(nn.Module):
    """A cheap classifier on an intermediate map: average pool to 4×4 → linear (C·16 → hidden) → ReLU → linear.

    Pooling first keeps the head's cost to C·16·hidden + hidden·classes MACs (33 k for a 32-channel map, ~1% of
    MobileNet V1 0.25 on 28×28), while the 4×4 grid keeps the coarse layout a global pool would lose.
    """

    def __init__(self, channels: int, num_classes: int, hidden: int = 64, grid: int = 4):
        super().__init__()
        self.body = nn.Sequential(nn.AdaptiveAvgPool2d(grid), nn.Flatten(), nn.Linear(channels * grid * grid, hidden),
                                  nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class EarlyExitNet(nn.Module):
    """A backbone cut into segments after the layers `exit_after` (indices into `to_sequential(backbone)`),
    with an `ExitHead` on each cut. `thresholds[k]` is τ_k (1.0 = exit k never taken).

    forward(x) returns the final logits (and keeps the exits' logits in `self.exit_logits` for the loss);
    `predict(x)` is the dynamic inference that runs each sample only as deep as it needs.
    """

    def __init__(self, backbone: nn.Module, exit_after: Sequence[int], in_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        layers = list(to_sequential(backbone))
        cuts = sorted(set(int(i) for i in exit_after))
        if not cuts or cuts[0] < 0 or cuts[-1] >= len(layers) - 1:
            raise UserError(f"exit points must be layer indices in 0..{len(layers) - 2} (after layer i), got {list(exit_after)}")
        bounds = [0, *[c + 1 for c in cuts], len(layers)]
        self.segments = nn.ModuleList(nn.Sequential(*layers[a:b]) for a, b in zip(bounds, bounds[1:]))
        self.exit_after = cuts
        self.in_shape = tuple(in_shape)
        heads, shapes = [], [self.in_shape]
        with torch.no_grad():
            x = torch.zeros(1, *in_shape, device=module_device(backbone))
            was = [m.training for m in self.segments]
            self.segments.eval()
            for seg in self.segments[:-1]:
                x = seg(x)
                if x.dim() != 4:
                    raise UserError(f"exit after layer {cuts[len(heads)]} sees a {x.dim()}-D tensor; exits need [N, C, H, W] feature maps")
                heads.append(ExitHead(x.shape[1], num_classes).to(x.device))
                shapes.append(tuple(x.shape[1:]))
            for m, w in zip(self.segments, was):
                m.train(w)
        self.heads = nn.ModuleList(heads)
        self.segment_in_shapes = shapes
        self.register_buffer("thresholds", torch.ones(len(heads), device=x.device))
        self.exit_logits: list[torch.Tensor] = []

    @property
    def num_exits(self) -> int:
        return len(self.heads)

    def forward_all(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every exit and, last, of the final classifier (every sample through the whole net)."""
        outs = []
        for seg, head in zip(self.segments, self.heads):
            x = seg(x)
            outs.append(head(x))
        outs.append(self.segments[-1](x))
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *self.exit_logits, final = self.forward_all(x)
        return final

    @torch.no_grad()
    def predict(self, x: torch.Tensor, thresholds: Sequence[float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Dynamic inference: (logits, exit index per sample; num_exits = the final classifier), on x's device."""
        taus = self.thresholds.tolist() if thresholds is None else list(thresholds)
        if len(taus) != self.num_exits:
            raise UserError(f"{len(taus)} thresholds for {self.num_exits} exits")
        logits = torch.empty(0, device=x.device)
        exit_idx = torch.full((x.shape[0],), self.num_exits, dtype=torch.long, device=x.device)
        idx = torch.arange(x.shape[0], device=x.device)
        for k, (seg, head) in enumerate(zip(self.segments, self.heads)):
            x = seg(x)
            if taus[k] >= 1.0:
                continue  # τ = 1: no sample can exit here, skip the head's cost too
            out = head(x)
            if logits.numel() == 0:
                logits = torch.empty(exit_idx.shape[0], out.shape[1], dtype=out.dtype, device=x.device)
            done = out.softmax(1).amax(1) > taus[k]
            logits[idx[done]] = out[done]
            exit_idx[idx[done]] = k
            x, idx = x[~done], idx[~done]
            if idx.numel() == 0:
                return logits, exit_idx
        out = self.segments[-1](x)
        if logits.numel() == 0:
            logits = torch.empty(exit_idx.shape[0], out.shape[1], dtype=out.dtype, device=x.device)
        logits[idx] = out
        return logits, exit_idx

    def costs_macs(self) -> tuple[list[int], list[int]]:
        """MACs per sample of each segment and of each exit head."""
        seg = [count_macs(s, shape) for s, shape in zip(self.segments, self.segment_in_shapes)]
        heads = [count_macs(h, shape) for h, shape in zip(self.heads, self.segment_in_shapes[1:])]
        return seg, heads


class ExitLoss(Callback):
    """Joint training: loss = w_final · CE(final) + Σ_k w_k · CE(exit_k) (weights default to 1 each)."""

    def __init__(self, exit_weights: Sequence[float] | None = None, final_weight: float = 1.0):
        self.exit_weights = None if exit_weights is None else list(exit_weights)
        self.final_weight = final_weight

    def loss(self, model, x, y, output, loss):
        weights = self.exit_weights or [1.0] * len(model.exit_logits)
        if len(weights) != len(model.exit_logits):
            raise UserError(f"{len(weights)} exit weights for {len(model.exit_logits)} exits")
        total = self.final_weight * loss
        for w, logits in zip(weights, model.exit_logits):
            total = total + w * nn.functional.cross_entropy(logits, y)
        return total


@torch.no_grad()
def collect_outputs(net: EarlyExitNet, loader: DataLoader) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every exit's and the final classifier's logits on a loader (eval mode, on the net's device), and the labels, on the CPU."""
    was = net.training
    net.eval()
    device = module_device(net)
    outs, ys = [], []
    for x, y in loader:
        outs.append([o.cpu() for o in net.forward_all(x.to(device))])
        ys.append(y)
    net.train(was)
    return [torch.cat(o) for o in zip(*outs)], torch.cat(ys)


def thresholds_for_budget(outs: Sequence[torch.Tensor], y: torch.Tensor, max_drop_pp: float = 0.5) -> list[float]:
    """Per-exit thresholds, lowest first, so the top-1 drop vs the final classifier stays ≤ `max_drop_pp` on (outs, y).

    `outs` are the logits of every exit and, last, of the final classifier. For exit k and the samples still
    running, Δ(τ) = Σ over the samples leaving at k of ([final right] − [exit right]) is the number of correct
    answers lost by stopping there; τ_k is the smallest candidate with Δ(τ) ≤ the remaining budget
    (max_drop_pp/100 · N samples), which then shrinks by Δ(τ_k). Exits take disjoint samples, so the losses
    add up: on this data the early-exit top-1 ≥ final top-1 − max_drop_pp. An exit no sample reaches gets τ = 1.
    """
    if max_drop_pp < 0:
        raise UserError(f"max drop must be >= 0 percentage points, got {max_drop_pp}")
    final_right = (outs[-1].argmax(1) == y).numpy()
    budget = max_drop_pp / 100.0 * len(y)
    running = np.ones(len(y), dtype=bool)
    taus = []
    for logits in outs[:-1]:
        conf = logits.softmax(1).amax(1).numpy()
        delta = final_right.astype(np.int64) - (logits.argmax(1) == y).numpy().astype(np.int64)
        best_tau, best_delta = 1.0, 0
        if running.any():
            for tau in np.concatenate(([0.0], np.unique(conf[running]))):  # ascending: the first that fits is lowest
                d = int(delta[running & (conf > tau)].sum())
                if d <= budget:
                    best_tau, best_delta = float(tau), d
                    break
        taus.append(best_tau)
        budget -= best_delta
        running &= ~(conf > best_tau)
    return taus


def calibrate_thresholds(net: EarlyExitNet, loader: DataLoader, max_drop_pp: float = 0.5) -> list[float]:
    """`thresholds_for_budget` on held-out data from `loader`; sets `net.thresholds` and returns them."""
    if max_drop_pp < 0:
        raise UserError(f"max drop must be >= 0 percentage points, got {max_drop_pp}")
    outs, y = collect_outputs(net, loader)
    taus = thresholds_for_budget(outs, y, max_drop_pp)
    net.thresholds.copy_(torch.tensor(taus))
    return taus


def simulate_exits(outs: Sequence[torch.Tensor], y: torch.Tensor, thresholds: Sequence[float],
                   segment_macs: Sequence[int], head_macs: Sequence[int]) -> dict:
    """Top-1, average MACs per sample and exit fractions of the exit policy, computed from every exit's logits.

    Sample i stops at the first k with max softmax > τ_k; its cost is the segments up to k plus the heads
    evaluated on the way (a head with τ = 1 is skipped, as `EarlyExitNet.predict` does).
    """
    n_exits = len(thresholds)
    stop = torch.full((len(y),), n_exits, dtype=torch.long)
    for k in reversed(range(n_exits)):
        stop[outs[k].softmax(1).amax(1) > thresholds[k]] = k
    pred = torch.stack([o.argmax(1) for o in outs])[stop, torch.arange(len(y))]
    used = [h if t < 1.0 else 0 for h, t in zip(head_macs, thresholds)]
    cost = [sum(segment_macs[: k + 1]) + sum(used[: k + 1]) for k in range(n_exits)]
    cost.append(sum(segment_macs) + sum(used))
    avg = float(torch.tensor(cost, dtype=torch.float64)[stop].mean())
    return {"top1": 100.0 * float((pred == y).float().mean()), "avg_macs": avg,
            "macs_saving": 1.0 - avg / sum(segment_macs),
            "exit_fraction": [float((stop == k).float().mean()) for k in range(n_exits + 1)]}


def tradeoff_curve(net: EarlyExitNet, calib_loader: DataLoader, test_loader: DataLoader,
                   budgets_pp: Sequence[float] = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)) -> list[dict]:
    """Accuracy vs average MACs on test data for thresholds calibrated at each drop budget (no latency)."""
    cal_outs, cal_y = collect_outputs(net, calib_loader)
    outs, y = collect_outputs(net, test_loader)
    seg, heads = net.costs_macs()
    rows = []
    for b in budgets_pp:
        taus = thresholds_for_budget(cal_outs, cal_y, b)
        rows.append({"max_drop_pp": b, "thresholds": taus, **simulate_exits(outs, y, taus, seg, heads)})
    return rows


def _per_sample_ms(fn, xs: torch.Tensor) -> float:
    t0 = time.perf_counter()
    for i in range(xs.shape[0]):
        fn(xs[i : i + 1])
    return (time.perf_counter() - t0) * 1e3 / xs.shape[0]


@torch.no_grad()
def early_exit_report(net: EarlyExitNet, loader: DataLoader, latency_samples: int = 200, repeats: int = 3,
                      threads: int = 1) -> dict:
    """Accuracy vs average MACs (and measured batch-1 latency) per sample: backbone alone vs early exit.

    Average MACs = mean over samples of the segments run plus the heads evaluated on the way. Latency is the
    median over `repeats` of the mean per-sample time over `latency_samples` inputs, both paths timed in
    alternation in one run on `threads` threads.
    """
    was = net.training
    net.eval()
    outs, y = collect_outputs(net, loader)
    device = module_device(net)
    xs = torch.cat([x for x, _ in loader])
    preds, exits = [], []
    for x, _ in loader:
        logits, e = net.predict(x.to(device))
        preds.append(logits.argmax(1).cpu())
        exits.append(e.cpu())
    pred, exit_idx = torch.cat(preds), torch.cat(exits)
    seg_macs, head_macs = net.costs_macs()
    taus = net.thresholds.tolist()
    used_heads = [h if t < 1.0 else 0 for h, t in zip(head_macs, taus)]
    cost = [sum(seg_macs[: k + 1]) + sum(used_heads[: k + 1]) for k in range(net.num_exits)]
    cost.append(sum(seg_macs) + sum(used_heads))
    per_sample = torch.tensor(cost, dtype=torch.float64)[exit_idx]
    full_macs = sum(seg_macs)

    def backbone(x):
        for seg in net.segments:
            x = seg(x)
        return x

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        sample = xs[:latency_samples].to(device)
        net.predict(sample[:1]), backbone(sample[:1])  # warm-up
        full_ms, exit_ms = [], []
        for _ in range(repeats):
            full_ms.append(_per_sample_ms(backbone, sample))
            exit_ms.append(_per_sample_ms(net.predict, sample))
    finally:
        torch.set_num_threads(before)
        net.train(was)
    full_top1 = 100.0 * float((outs[-1].argmax(1) == y).float().mean())
    ee_top1 = 100.0 * float((pred == y).float().mean())
    avg_macs = float(per_sample.mean())
    return {
        "exit_after": net.exit_after, "thresholds": taus,
        "exit_top1": [100.0 * float((o.argmax(1) == y).float().mean()) for o in outs[:-1]],
        "exit_fraction": [float((exit_idx == k).float().mean()) for k in range(net.num_exits + 1)],
        "full_top1": full_top1, "early_exit_top1": ee_top1, "top1_drop_pp": full_top1 - ee_top1,
        "full_macs": full_macs, "avg_macs": avg_macs, "macs_saving": 1.0 - avg_macs / full_macs,
        "full_ms": float(np.median(full_ms)), "early_exit_ms": float(np.median(exit_ms)),
        "latency_saving": 1.0 - float(np.median(exit_ms)) / float(np.median(full_ms)), "threads": threads,
    }


def run_early_exit(model: str = "mobilenet_v1", data: str = "mnist5k", exit_after: Sequence[int] | None = None,
                   epochs: int = 3, lr: float = 0.05, exit_weights: Sequence[float] | None = None,
                   max_drop_pp: float = 0.5, calib_fraction: float = 0.15, n_train: int | None = None,
                   n_test: int | None = None, model_kwargs: dict | None = None, threads: int = 1,
                   latency_samples: int = 200, seed: int = 0, progress: bool | None = None) -> tuple[EarlyExitNet, dict]:
    """Build `model` with exits, train jointly, calibrate τ on a held-out slice of the training split, report on test.

    The API twin of `nncompress early-exit`. Default exits: after 1/3 and 2/3 of the backbone's feature layers.
    """
    from nncompress.architectures import build_model
    from nncompress.data import Dataset, load_dataset
    from nncompress.training import TrainConfig, train
    from torch.utils.data import TensorDataset

    if not 0.0 < calib_fraction < 1.0:
        raise UserError(f"calib_fraction must be in (0, 1), got {calib_fraction}")
    ds = load_dataset(data, seed=seed).subset(n_train, n_test)
    n_cal = max(1, int(len(ds.y_train) * calib_fraction))
    fit = Dataset(ds.name, ds.x_train[n_cal:], ds.y_train[n_cal:], ds.x_test, ds.y_test, ds.num_classes)
    torch.manual_seed(seed)
    backbone = build_model(model, ds.input_shape, ds.num_classes, **(model_kwargs or {}))
    n_layers = len(to_sequential(backbone))
    if exit_after is None:
        exit_after = sorted({max(0, (n_layers - 1) // 3 - 1), max(0, 2 * (n_layers - 1) // 3 - 1)})
    net = EarlyExitNet(backbone, exit_after, ds.input_shape, ds.num_classes)
    g = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(TensorDataset(fit.x_train, fit.y_train), batch_size=64, shuffle=True, generator=g)
    cal_loader = DataLoader(TensorDataset(ds.x_train[:n_cal], ds.y_train[:n_cal]), batch_size=512)
    test_loader = DataLoader(TensorDataset(ds.x_test, ds.y_test), batch_size=512)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        train(net, train_loader, TrainConfig(epochs=epochs, lr=lr, seed=seed, progress=progress),
              callbacks=[ExitLoss(exit_weights)])
    finally:
        torch.set_num_threads(before)
    calibrate_thresholds(net, cal_loader, max_drop_pp)
    report = early_exit_report(net, test_loader, latency_samples=latency_samples, threads=threads)
    report["tradeoff"] = tradeoff_curve(net, cal_loader, test_loader)
    calibrate_thresholds(net, cal_loader, max_drop_pp)  # the curve leaves thresholds alone; keep the chosen ones
    report.update({"model": model, "data": data, "epochs": epochs, "max_drop_pp": max_drop_pp, "calibration_samples": n_cal})
    return net, report
