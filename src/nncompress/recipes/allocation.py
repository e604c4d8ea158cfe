"""Per-layer sparsity and codebook bits chosen from sensitivity under an accuracy budget (Deep Compression's knobs).

Han et al. (2015, Fig. 6; 2016, §3) pick each layer's pruning level and codebook size by hand from per-layer
sensitivity curves: sensitive layers (first conv, last FC) keep more weights and more bits. This module makes
that choice automatic and repeatable:

1. **Sensitivity grid.** For every layer l alone and every (sparsity s, bits b) on the layer's ladders, the layer is
   magnitude-pruned to s and its survivors k-means-shared to 2^b centroids (one shot, no fine-tuning) and the
   model is scored on a validation split carved from the training data (never the test split):
   drop[l][s, b] = metric of the untouched model − metric with layer l so compressed, the metric being the
   expected top-1 (`expected_top1`: mean probability of the true class, in points), which unlike hard top-1 on a
   few hundred images also registers the small losses of confidence that add up across layers.
   The same pass measures the layer's coded size from its real streams:
   bytes[l][s, b] = (H(codes) + H(gaps)) / 8 + 4·2^b, with H the empirical entropy (bits) of the codebook-index
   stream and of the relative-index gap stream (`encoding.entropy.empirical_entropy_bits`), which an entropy
   coder reaches to within a few percent, plus the fp32 codebook.
2. **Greedy allocation (multiple-choice knapsack, greedy by marginal cost).** Every layer starts at its cheapest-in-
   accuracy option (lowest sparsity, most bits). Each step considers, per layer, one more sparsity rung or one bit
   fewer and takes the move with the smallest accuracy cost per byte saved,
   Δdrop / Δbytes (ties: the move that saves more bytes; then layer order), as long as the sum of the layers'
   drops stays within `budget_pp`. Drops are clipped at zero and made monotone first (a sparser or coarser option never counts as
   cheaper in accuracy than a denser or finer one), so noise on a small validation split cannot make the greedy
   prefer a worse option for free.

The budget is spent on *one-shot* drops; the pipeline's fine-tuning then recovers most of it (Han 2015, Fig. 6
vs. Fig. 7: a layer that loses points pruned alone loses none after retraining). Summing per-layer drops treats
layers as independent — the usual approximation of sensitivity-based allocation (Han 2015; Distiller's
sensitivity analysis) — and the pipeline reports the real validation top-1 after fine-tuning.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from nncompress.core.errors import UserError
from nncompress.encoding.entropy import empirical_entropy_bits
from nncompress.sharing.kmeans import kmeans_1d

SPARSITY_LADDER: tuple[float, ...] = (0.3, 0.5, 0.7, 0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97)
"""Sparsity rungs tried per layer; finer near the top, where LeNet layers' accuracy starts to move."""
BITS_LADDER = {"conv": (8, 7, 6, 5, 4), "linear": (6, 5, 4, 3)}
"""Codebook bits tried per layer kind, most first; Han 2016 use 8 (conv) and 5 (FC) with no loss."""
KMEANS_ITERS = 20
"""Lloyd iterations for the grid's one-shot sharing (the pipeline's own sharing runs to convergence)."""


@dataclass
class LayerGrid:
    """One layer's sensitivity grid: drop_pp[i, j] and est_bytes[i, j] at sparsities[i], bits[j]."""

    name: str
    sparsities: list[float]
    bits: list[int]
    drop_pp: np.ndarray
    est_bytes: np.ndarray

    def __post_init__(self) -> None:
        shape = (len(self.sparsities), len(self.bits))
        if not self.sparsities or not self.bits:
            raise UserError(f"layer '{self.name}': the sparsity and bits ladders must not be empty")
        self.drop_pp = np.asarray(self.drop_pp, dtype=np.float64).reshape(shape)
        self.est_bytes = np.asarray(self.est_bytes, dtype=np.float64).reshape(shape)

    def monotone_drop(self) -> np.ndarray:
        """drop clipped at 0 (a one-shot "gain" is validation noise, not budget to spend elsewhere) and made
        non-decreasing along more sparsity (axis 0) and fewer bits (axis 1): running maxima."""
        return np.maximum.accumulate(np.maximum.accumulate(np.maximum(self.drop_pp, 0.0), axis=0), axis=1)


@dataclass
class Allocation:
    """The chosen per-layer sparsity and bits, and how they were reached."""

    sparsity: dict[str, float]
    bits: dict[str, int]
    budget_pp: float
    spent_pp: float  # sum of the chosen options' (monotone) one-shot drops
    est_bytes: float  # sum of the chosen options' estimated coded bytes
    baseline_val_top1: float
    steps: list[dict] = field(default_factory=list)
    grid: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def expected_top1(model: nn.Module, batches) -> float:
    """Mean probability of the true class, in percent: the top-1 the model would score if it sampled its answer.

    The allocation's metric: a 400-image validation split resolves hard top-1 only in 0.25 pp steps, so many
    damaging options would look free; the expected top-1 moves with every loss of confidence on the right class
    and is in the same units (points of accuracy)."""
    was = model.training
    model.eval()
    total, n = 0.0, 0
    for x, y in batches:
        p = torch.softmax(model(x).float(), dim=1)
        total += float(p.gather(1, y.reshape(-1, 1)).sum())
        n += len(y)
    model.train(was)
    return 100.0 * total / max(n, 1)


def greedy_allocate(grids: Sequence[LayerGrid], budget_pp: float) -> tuple[dict[str, tuple[int, int]], list[dict]]:
    """Indices (sparsity rung, bits rung) per layer chosen greedily by accuracy cost per byte saved (module doc).

    Returns ({layer: (i, j)}, steps), each step {"layer", "move", "sparsity", "bits", "cost_per_kb", "spent_pp", "bytes"}.
    """
    if isinstance(budget_pp, bool) or not isinstance(budget_pp, (int, float)) or not np.isfinite(budget_pp) or budget_pp < 0:
        raise UserError(f"the sensitivity budget must be a finite number of top-1 points >= 0, got {budget_pp!r}")
    drops = {g.name: g.monotone_drop() for g in grids}
    state = {g.name: (0, 0) for g in grids}
    spent = sum(float(drops[g.name][0, 0]) for g in grids)
    steps: list[dict] = []
    while True:
        best = None
        for order, g in enumerate(grids):
            i, j = state[g.name]
            for move, (ni, nj) in (("sparsity", (i + 1, j)), ("bits", (i, j + 1))):
                if ni >= len(g.sparsities) or nj >= len(g.bits):
                    continue
                saved = float(g.est_bytes[i, j] - g.est_bytes[ni, nj])
                if saved <= 0:
                    continue
                cost = float(drops[g.name][ni, nj] - drops[g.name][i, j])
                if spent + cost > budget_pp + 1e-9:
                    continue
                key = (cost / saved, -saved, order, move)
                if best is None or key < best[0]:
                    best = (key, g, (ni, nj), cost, move)
        if best is None:
            break
        (ratio, _, _, move), g, (ni, nj), cost, _ = best
        state[g.name] = (ni, nj)
        spent += cost
        steps.append({"layer": g.name, "move": move, "sparsity": g.sparsities[ni], "bits": g.bits[nj],
                      "cost_per_kb": round(1024 * ratio, 6), "spent_pp": round(spent, 6),
                      "bytes": round(sum(float(x.est_bytes[state[x.name]]) for x in grids), 1)})
    return state, steps


def _one_shot(flat: np.ndarray, order: np.ndarray, sparsity: float, bits: int) -> tuple[np.ndarray, float]:
    """(flat layer weight magnitude-pruned to `sparsity` with survivors shared to 2^bits centroids, estimated coded bytes).

    `order`: the flat indices by ascending magnitude (sorted once per layer)."""
    n_prune = int(round(sparsity * flat.size))
    mask = flat != 0
    mask[order[:n_prune]] = False
    kept = np.where(mask, flat, 0.0)
    centroids, codes = kmeans_1d(kept, bits, max_iter=KMEANS_ITERS)
    out = np.zeros_like(flat)
    out[mask] = centroids.numpy()[codes.numpy()]
    positions = np.flatnonzero(mask)
    gaps = np.diff(positions, prepend=-1) - 1  # symbol = gap − 1 ≥ 0, as the container codes it
    bits_total = empirical_entropy_bits(codes.numpy()) + empirical_entropy_bits(gaps) + 32 * centroids.numel()
    return out, bits_total / 8


def sensitivity_grid(model: nn.Module, layers: Sequence[str], sparsities: dict[str, Sequence[float]],
                     bits: dict[str, Sequence[int]], evaluate_fn: Callable[[nn.Module], float],
                     baseline: float | None = None) -> tuple[list[LayerGrid], float]:
    """Measure drop and coded bytes for every layer alone at every (sparsity, bits) of its ladders (module doc, step 1).

    `model` is restored exactly afterwards; `evaluate_fn(model)` returns validation top-1 in percent. Runs with one
    torch thread: the products are small, and two threads on a busy machine wait on each other far longer.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _grid(model, layers, sparsities, bits, evaluate_fn, baseline)
    finally:
        torch.set_num_threads(threads)


def _grid(model: nn.Module, layers: Sequence[str], sparsities: dict[str, Sequence[float]], bits: dict[str, Sequence[int]],
          evaluate_fn: Callable[[nn.Module], float], baseline: float | None) -> tuple[list[LayerGrid], float]:
    modules = dict(model.named_modules())
    base = float(evaluate_fn(model)) if baseline is None else float(baseline)
    grids = []
    for name in layers:
        layer = modules[name]
        original = layer.weight.detach().clone()
        flat = original.reshape(-1).numpy().copy()
        order = np.argsort(np.abs(flat), kind="stable")
        drop = np.zeros((len(sparsities[name]), len(bits[name])))
        size = np.zeros_like(drop)
        try:
            for i, s in enumerate(sparsities[name]):
                for j, b in enumerate(bits[name]):
                    w, size[i, j] = _one_shot(flat, order, float(s), int(b))
                    with torch.no_grad():
                        layer.weight.copy_(torch.from_numpy(w).reshape(original.shape))
                    drop[i, j] = base - float(evaluate_fn(model))
        finally:
            with torch.no_grad():
                layer.weight.copy_(original)
        grids.append(LayerGrid(name, [float(s) for s in sparsities[name]], [int(b) for b in bits[name]], drop, size))
    return grids, base


def allocate(model: nn.Module, layers: Sequence[str], evaluate_fn: Callable[[nn.Module], float], budget_pp: float,
             sparsities: dict[str, Sequence[float]] | None = None, bits: dict[str, Sequence[int]] | None = None) -> Allocation:
    """Sensitivity grid + greedy allocation: per-layer sparsity and bits for the pipeline (module doc)."""
    modules = dict(model.named_modules())
    kinds = {n: "conv" if isinstance(modules[n], nn.Conv2d) else "linear" for n in layers}
    sparsities = {n: (sparsities or {}).get(n, SPARSITY_LADDER) for n in layers}
    bits = {n: (bits or {}).get(n, BITS_LADDER[kinds[n]]) for n in layers}
    grids, base = sensitivity_grid(model, layers, sparsities, bits, evaluate_fn)
    state, steps = greedy_allocate(grids, budget_pp)
    chosen_s = {g.name: g.sparsities[state[g.name][0]] for g in grids}
    chosen_b = {g.name: g.bits[state[g.name][1]] for g in grids}
    spent = sum(float(g.monotone_drop()[state[g.name]]) for g in grids)
    est = sum(float(g.est_bytes[state[g.name]]) for g in grids)
    grid_rows = {g.name: {"sparsities": g.sparsities, "bits": g.bits, "drop_pp": np.round(g.drop_pp, 4).tolist(),
                          "est_bytes": np.round(g.est_bytes, 1).tolist()} for g in grids}
    return Allocation(chosen_s, chosen_b, float(budget_pp), spent, est, base, steps, grid_rows)
