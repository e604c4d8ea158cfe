"""The accuracy/latency Pareto front: models that no other model beats on both at once."""
from __future__ import annotations

import io
import os
from collections.abc import Sequence

from nncompress.core.io import atomic_write_bytes


def pareto_front(latency_ms: Sequence[float], accuracy: Sequence[float]) -> list[int]:
    """Indices of the non-dominated points, fastest first.

    Point j dominates i when latency_j ≤ latency_i and accuracy_j ≥ accuracy_i with one of them strict.
    """
    if len(latency_ms) != len(accuracy):
        raise ValueError("latency_ms and accuracy must have the same length")
    order = sorted(range(len(latency_ms)), key=lambda i: (latency_ms[i], -accuracy[i]))
    front, best = [], float("-inf")
    for i in order:  # scanning by increasing latency, a point is on the front iff it beats every faster one
        if accuracy[i] > best:
            front.append(i)
            best = accuracy[i]
    return front


def plot_pareto(points: Sequence[dict], path: str | os.PathLike, baselines: Sequence[dict] = (),
                target_ms: float | None = None, title: str = "accuracy vs measured latency",
                ylabel: str = "top-1 (%)") -> None:
    """Scatter of every candidate ({'latency_ms', 'top1', 'strategy'}), the front as a line, baselines as stars; PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for strategy in sorted({p.get("strategy", "") for p in points}):
        sel = [p for p in points if p.get("strategy", "") == strategy]
        ax.scatter([p["latency_ms"] for p in sel], [p["top1"] for p in sel], s=18, alpha=0.7, label=strategy or "candidates")
    front = pareto_front([p["latency_ms"] for p in points], [p["top1"] for p in points])
    ax.plot([points[i]["latency_ms"] for i in front], [points[i]["top1"] for i in front], "k--", lw=1, label="Pareto front")
    for b in baselines:
        ax.scatter([b["latency_ms"]], [b["top1"]], marker="*", s=120, label=b.get("name", "baseline"))
    if target_ms is not None:
        ax.axvline(target_ms, color="grey", lw=0.8, ls=":", label=f"target T = {target_ms:.2f} ms")
    ax.set_xlabel("latency per image (ms, measured)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
