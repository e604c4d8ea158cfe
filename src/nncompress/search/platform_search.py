"""`run_search`: the one-call platform-aware search (the API twin of `nncompress search`).

Measures the hand-picked baseline (MobileNet V1 0.25 by default) under the same protocol first; unless a
target is given, its latency becomes T, so a candidate beats the baseline on the reward exactly when it is
more accurate at equal speed, or faster at equal accuracy (5% reward per halving of latency).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from nncompress.architectures import build_model
from nncompress.core.errors import UserError
from nncompress.core.io import atomic_write_text
from nncompress.data import load_dataset
from nncompress.search.evaluator import Evaluator
from nncompress.search.pareto import pareto_front, plot_pareto
from nncompress.search.reward import latency_reward
from nncompress.search.space import MobileNetSpace
from nncompress.search.strategies import evolutionary_search, random_search

STRATEGIES = ("random", "evolution", "both")


def run_search(data: str = "mnist5k", strategy: str = "evolution", trials: int = 8, epochs: int = 1,
               n_train: int | None = None, n_test: int | None = None, target_ms: float | None = None,
               alpha: float = -0.07, beta: float = -0.07, baseline: str = "mobilenet_v1", baseline_width: float = 0.25,
               space: MobileNetSpace | None = None, population: int = 4, threads: int = 1, latency_repeats: int = 20,
               seed: int = 0, out_dir: str | os.PathLike | None = None, progress: bool | None = None) -> dict:
    """Search `trials` architectures per strategy; returns baseline, candidates, Pareto front and the best reward.

    With `out_dir`, writes `search.json` and `pareto.png` there (atomically).
    """
    if strategy not in STRATEGIES:
        raise UserError(f"unknown strategy '{strategy}': use one of {', '.join(STRATEGIES)}")
    if trials < 1 or epochs < 1:
        raise UserError(f"--trials and --epochs must be >= 1, got {trials} and {epochs}")
    if target_ms is not None and target_ms <= 0:
        raise UserError(f"--target-ms must be positive, got {target_ms}")
    ds = load_dataset(data, seed=seed).subset(n_train, n_test)
    space = space or MobileNetSpace()
    ev = Evaluator(space, ds, target_ms, epochs=epochs, threads=threads, latency_repeats=latency_repeats,
                   alpha=alpha, beta=beta, seed=seed)
    torch.manual_seed(seed)
    base_model = build_model(baseline, ds.input_shape, ds.num_classes, width_mult=baseline_width)
    base = ev.measure(base_model, f"{baseline} {baseline_width:g}")
    ev.target_ms = target_ms if target_ms is not None else base.latency_ms
    base.reward = latency_reward(base.top1, base.latency_ms, ev.target_ms, alpha, beta)
    candidates = []
    if strategy in ("random", "both"):
        candidates += random_search(space, ev, trials, seed, progress)
    if strategy in ("evolution", "both"):
        # a different seed than the random search, so "both" does not spend its founders on the same draws
        candidates += evolutionary_search(space, ev, trials, population, min(2, population), seed + 1, progress)
    front = pareto_front([c.latency_ms for c in candidates], [c.top1 for c in candidates])
    best = max(candidates, key=lambda c: c.reward)
    result = {
        "data": data, "strategy": strategy, "trials": trials, "epochs": epochs, "threads": threads,
        "target_ms": ev.target_ms, "alpha": alpha, "beta": beta, "space_size": space.size,
        "baseline": base.to_dict(), "candidates": [c.to_dict() for c in candidates],
        "pareto": [candidates[i].name for i in front], "best": best.to_dict(),
        "best_on_pareto_front": candidates.index(best) in front, "best_beats_baseline": best.reward > base.reward,
    }
    if out_dir is not None:
        out = Path(out_dir)
        atomic_write_text(out / "search.json", json.dumps(result, indent=2))
        plot_pareto(result["candidates"], out / "pareto.png", [result["baseline"]], ev.target_ms)
    return result
