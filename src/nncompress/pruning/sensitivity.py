"""Per-layer pruning sensitivity: prune one layer alone at increasing sparsity and watch the metric.

Han et al. (2015, Fig. 6) use these curves to pick a pruning level per layer: sensitive layers (the
first conv, the last FC) are pruned less. `SensitivityResult.targets(max_drop)` turns the curves into
per-layer sparsities for `LevelPruner`; `sensitivity_to_s` turns them into per-layer s for the s·σ
`SensitivityPruner` (Han et al. 2015; Distiller's SensitivityPruner).
"""
from __future__ import annotations

import copy
import io
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from nncompress.core.errors import UserError
from nncompress.core.io import atomic_write_bytes
from nncompress.core.progress import track
from nncompress.pruning.criteria import check_sparsity
from nncompress.pruning.mask import dense_tensor
from nncompress.pruning.pruners import LevelPruner, resolve_layers

DEFAULT_LEVELS: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


@dataclass
class SensitivityResult:
    """metrics[layer][i] is the metric with only `layer` pruned to levels[i]; `baseline` is the unpruned metric."""

    levels: list[float]
    metrics: dict[str, list[float]]
    baseline: float
    metric_name: str = "top1"
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.levels = [check_sparsity(x, "sensitivity level") for x in self.levels]
        for layer, values in self.metrics.items():
            if len(values) != len(self.levels):
                raise UserError(f"sensitivity result: layer '{layer}' has {len(values)} metrics for {len(self.levels)} levels")

    def to_dict(self) -> dict:
        return {"levels": list(self.levels), "metrics": {k: list(v) for k, v in self.metrics.items()},
                "baseline": self.baseline, "metric_name": self.metric_name, "meta": dict(self.meta)}

    @classmethod
    def from_dict(cls, d: dict) -> "SensitivityResult":
        try:
            return cls(levels=[float(x) for x in d["levels"]],
                       metrics={str(k): [float(x) for x in v] for k, v in d["metrics"].items()},
                       baseline=float(d["baseline"]), metric_name=str(d.get("metric_name", "top1")),
                       meta={str(k): str(v) for k, v in d.get("meta", {}).items()})
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise UserError(f"not a sensitivity result (needs 'levels', 'metrics', 'baseline'): {type(e).__name__}: {e}") from None

    def table(self) -> list[dict[str, float | str]]:
        """One row per (layer, level): layer, sparsity, metric, drop = baseline − metric."""
        return [{"layer": layer, "sparsity": level, self.metric_name: m, "drop": self.baseline - m}
                for layer, values in self.metrics.items() for level, m in zip(self.levels, values)]

    def targets(self, max_drop: float) -> dict[str, float]:
        """Per layer, the largest level whose drop from the baseline is at most `max_drop` (0.0 if none).

        The largest such level is taken even if a smaller level dropped more (noisy curves); the result
        is a dict for `LevelPruner(sparsity=...)`.
        """
        if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or not max_drop >= 0 or math.isinf(max_drop):
            raise UserError(f"max_drop must be a finite number >= 0 (in metric units, e.g. top-1 points), got {max_drop!r}")
        out = {}
        for layer, values in self.metrics.items():
            ok = [level for level, m in zip(self.levels, values) if self.baseline - m <= max_drop]
            out[layer] = max(ok, default=0.0)
        return out

    def plot(self, path: str | os.PathLike) -> Path:
        """Metric vs. sparsity, one line per layer, as a PNG written atomically."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg canvas; pyplot's global backend untouched
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6, 4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for layer, values in self.metrics.items():
            ax.plot([100 * x for x in self.levels], values, marker="o", label=layer)
        ax.axhline(self.baseline, color="gray", linestyle=":", linewidth=1)
        ax.set_xlabel("sparsity of the one pruned layer (%)")
        ax.set_ylabel(self.metric_name)
        ax.set_title("pruning sensitivity per layer")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return atomic_write_bytes(path, buf.getvalue())


def sensitivity_analysis(model: nn.Module, evaluate_fn: Callable[[nn.Module], float],
                         levels: Sequence[float] = DEFAULT_LEVELS, layers: Sequence[str] | None = None,
                         metric_name: str = "top1", progress: bool | None = None) -> SensitivityResult:
    """Prune each layer alone to each level (level pruning, on a copy) and record `evaluate_fn(copy)`.

    `model` is never modified. Level 0 is the unpruned model, evaluated once as the baseline.
    """
    levels = [check_sparsity(x, "sensitivity level") for x in levels]
    if not levels:
        raise UserError("levels is empty: give at least one sparsity level, e.g. 0,0.5,0.9")
    names = list(resolve_layers(model, layers))
    baseline = float(evaluate_fn(copy.deepcopy(model)))
    metrics: dict[str, list[float]] = {n: [] for n in names}
    jobs = [(n, level) for n in names for level in levels]
    for name, level in track(jobs, "sensitivity", total=len(jobs), enabled=progress):
        if level == 0.0:
            metrics[name].append(baseline)
            continue
        pruned = LevelPruner({name: level}).prune(copy.deepcopy(model))
        metrics[name].append(float(evaluate_fn(pruned)))
    return SensitivityResult(levels=levels, metrics=metrics, baseline=baseline, metric_name=metric_name)


def sensitivity_to_s(result: SensitivityResult, model: nn.Module, max_drop: float) -> dict[str, float]:
    """Per layer, the s whose threshold s·σ(W) removes the sparsity `result.targets(max_drop)` chose.

    Han et al. (2015) and Distiller prune with threshold = s·σ(W), σ the standard deviation of the layer's
    weights; the sweep picks sparsities, so the s is read off the layer's actual weights:
    s = quantile(|W|, sparsity) / σ(W). σ is the population std (divide by N), the σ `SensitivityPruner`
    uses, so `SensitivityPruner(sensitivity_to_s(...))` removes the chosen fraction (up to ties and
    the one weight at the quantile). A layer with σ = 0 (constant weights) gets s = 0. The result feeds
    `SensitivityPruner(s)` directly.
    """
    targets = result.targets(max_drop)
    layers = resolve_layers(model, list(targets))
    out = {}
    for name, sparsity in targets.items():
        w = dense_tensor(layers[name]).detach().double().cpu().flatten()
        sigma = float(w.std(correction=0)) if w.numel() > 1 else 0.0
        if sigma == 0.0 or sparsity == 0.0:
            out[name] = 0.0
            continue
        out[name] = float(np.quantile(w.abs().numpy(), sparsity)) / sigma
    return out
