"""The report's figures as PNG bytes (matplotlib's Agg canvas, no pyplot global state), ready to inline."""
from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch


def _figure(**kwargs):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def histograms_png(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], bins: int = 80) -> bytes:
    """Per layer, the non-zero weight values before (grey) and after (blue) compression on shared bins."""
    names = [n for n in before if n in after]
    fig = _figure(figsize=(6, 1.9 * max(len(names), 1)), layout="constrained")
    axes = fig.subplots(max(len(names), 1), 1, squeeze=False)[:, 0]
    for ax, name in zip(axes, names):
        b, a = before[name].flatten().float().numpy(), after[name].flatten().float().numpy()
        b, a = b[b != 0], a[a != 0]
        lo, hi = float(min(b.min(initial=0), a.min(initial=0))), float(max(b.max(initial=0), a.max(initial=0)))
        edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, bins + 1)
        ax.hist(b, bins=edges, color="0.7", label=f"before ({b.size:,} non-zero)")
        ax.hist(a, bins=edges, color="tab:blue", alpha=0.8, label=f"after ({a.size:,} non-zero)")
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=7)
    axes[-1].set_xlabel("weight value")
    return _png(fig)


def sensitivity_png(levels: Sequence[float], metrics: dict[str, Sequence[float]], baseline: float) -> bytes:
    """Top-1 with one layer pruned at a time, per pruning level (Han et al. 2015, Fig. 6)."""
    fig = _figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.subplots()
    for name, values in metrics.items():
        ax.plot([100 * s for s in levels], values, marker="o", ms=3, label=name)
    ax.axhline(baseline, color="0.5", ls="--", lw=1, label="unpruned")
    ax.set_xlabel("sparsity of the one pruned layer (%)")
    ax.set_ylabel("top-1 (%)")
    ax.legend(fontsize=7)
    return _png(fig)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated (bytes, accuracy) points: no other point is at most as big and at least as
    accurate with one of the two strictly better. Sorted by size."""
    keep = []
    for i, (b, a) in enumerate(points):
        if not any((b2 <= b and a2 >= a) and (b2 < b or a2 > a) for j, (b2, a2) in enumerate(points) if j != i):
            keep.append(i)
    return sorted(keep, key=lambda i: points[i][0])


def pareto_png(labels: Sequence[str], kbytes: Sequence[float], top1: Sequence[float]) -> bytes:
    """Accuracy vs size, log-scaled size, the Pareto front joined."""
    fig = _figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.subplots()
    ax.scatter(kbytes, top1, color="tab:blue")
    for label, x, y in zip(labels, kbytes, top1):
        ax.annotate(label, (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
    front = pareto_front(list(zip(kbytes, top1)))
    ax.plot([kbytes[i] for i in front], [top1[i] for i in front], color="tab:orange", lw=1, label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("weights (KB)")
    ax.set_ylabel("top-1 (%)")
    ax.legend(fontsize=7)
    return _png(fig)


def history_png(history: Sequence[dict]) -> bytes:
    """Top-1 and weight sparsity per epoch of the compression run."""
    fig = _figure(figsize=(6, 3), layout="constrained")
    ax = fig.subplots()
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h.get("top1") or float("nan") for h in history], marker="o", ms=3, color="tab:blue", label="top-1")
    ax.set_xlabel("epoch")
    ax.set_ylabel("top-1 (%)", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(epochs, [100 * h.get("sparsity", 0.0) for h in history], marker="s", ms=3, color="tab:orange")
    ax2.set_ylabel("weight sparsity (%)", color="tab:orange")
    return _png(fig)
