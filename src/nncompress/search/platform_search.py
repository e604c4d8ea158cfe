"""`run_search`: the one-call platform-aware search (the API twin of `nncompress search`).

Measures the hand-picked baseline (MobileNet V1 0.25 by default) under the same protocol first; unless a
target is given, its latency becomes T, so a candidate beats the baseline on the reward exactly when it is
more accurate at equal speed, or faster at equal accuracy (5% reward per halving of latency).

Every comparison (rewards, the winner, the Pareto front) uses a validation split carved from the training data
(seeded, stratified by class); the search never sees the test split. Only after the winner is fixed are it and
the baseline evaluated on the test split, once each: choosing by test accuracy and then reporting it would be
selection on the test set, an optimistic estimate (the more candidates, the larger the bias).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from nncompress.architectures import build_model
from nncompress.core.errors import UserError
from nncompress.core.io import atomic_write_text
from nncompress.data import Dataset, load_dataset, make_loaders
from nncompress.data.datasets import stratified_split
from nncompress.search.evaluator import Evaluator
from nncompress.search.pareto import pareto_front, plot_pareto
from nncompress.search.space import MobileNetSpace
from nncompress.search.strategies import evolutionary_search, random_search, reinforce_search
from nncompress.training import evaluate

STRATEGIES = ("random", "evolution", "both", "reinforce")  # "both" stays random + evolution


def validation_split(ds: Dataset, fraction: float = 0.2, seed: int = 0) -> Dataset:
    """The search's data: `ds`'s training split divided per class into fit (`x_train`) and validation (`x_test`).

    Seeded and stratified (each class split in the same proportion, with at least one sample on each side when
    the class has two), so candidates are compared on data the test split never contributes to. The returned
    Dataset holds no test sample.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
        raise UserError(f"val_fraction must be in (0, 1) (the share of the training data held out for choosing), got {fraction!r}")
    fit_idx, val_idx = stratified_split(ds.y_train.cpu().numpy(), fraction, seed, keep_both_sides=True)
    if len(fit_idx) == 0 or len(val_idx) == 0:
        raise UserError(f"{len(ds.y_train)} training samples are too few to hold out a validation split of {fraction:g}: use more data (--n-train)")
    fit_t, val_t = torch.from_numpy(fit_idx), torch.from_numpy(val_idx)
    return Dataset(ds.name, ds.x_train[fit_t], ds.y_train[fit_t], ds.x_train[val_t], ds.y_train[val_t], ds.num_classes)


def run_search(data: str = "mnist5k", strategy: str = "evolution", trials: int = 8, epochs: int = 1,
               n_train: int | None = None, n_test: int | None = None, target_ms: float | None = None,
               alpha: float = -0.07, beta: float = -0.07, baseline: str = "mobilenet_v1", baseline_width: float = 0.25,
               space: MobileNetSpace | None = None, population: int = 4, threads: int = 1, latency_repeats: int = 20,
               seed: int = 0, out_dir: str | os.PathLike | None = None, progress: bool | None = None,
               val_fraction: float = 0.2, resource: str = "latency", target_energy_pj: float | None = None) -> dict:
    """Search `trials` architectures per strategy; returns baseline, candidates, Pareto front and the best reward.

    Candidates train on the training data less a `val_fraction` validation split (seeded, stratified) and are
    compared on that split: `top1`, `reward`, the Pareto front and the winner are all validation figures. The
    winner and the baseline are then evaluated once on the test split (`test_top1`). With `out_dir`, writes
    `search.json` and `pareto.png` (validation top-1 vs latency) there, atomically. `resource="energy"`: the
    reward is ACC·(E/E_target)^w on the analysis energy estimate, E_target = `target_energy_pj` or the baseline's.
    """
    if strategy not in STRATEGIES:
        raise UserError(f"unknown strategy '{strategy}': use one of {', '.join(STRATEGIES)}")
    if trials < 1 or epochs < 1:
        raise UserError(f"--trials and --epochs must be >= 1, got {trials} and {epochs}")
    if target_ms is not None and target_ms <= 0:
        raise UserError(f"--target-ms must be positive, got {target_ms}")
    if target_energy_pj is not None and target_energy_pj <= 0:
        raise UserError(f"target_energy_pj must be positive, got {target_energy_pj}")
    ds = load_dataset(data, seed=seed).subset(n_train, n_test)
    search_ds = validation_split(ds, val_fraction, seed)  # the Evaluator gets no test data
    space = space or MobileNetSpace()
    ev = Evaluator(space, search_ds, target_ms, epochs=epochs, threads=threads, latency_repeats=latency_repeats,
                   alpha=alpha, beta=beta, seed=seed, resource=resource)
    ev._target()  # an unknown resource fails before any training
    torch.manual_seed(seed)
    base_model = build_model(baseline, ds.input_shape, ds.num_classes, width_mult=baseline_width)
    base = ev.measure(base_model, f"{baseline} {baseline_width:g}")
    ev.target_ms = target_ms if target_ms is not None else base.latency_ms
    ev.target_energy_pj = target_energy_pj if target_energy_pj is not None else base.energy_pj
    base.reward = ev.score(base)
    candidates = []
    if strategy in ("random", "both"):
        candidates += random_search(space, ev, trials, seed, progress)
    if strategy in ("evolution", "both"):
        # a different seed than the random search, so "both" does not spend its founders on the same draws
        candidates += evolutionary_search(space, ev, trials, population, min(2, population), seed + 1, progress)
    if strategy == "reinforce":
        candidates += reinforce_search(space, ev, trials, seed, progress=progress)
    front = pareto_front([c.latency_ms for c in candidates], [c.top1 for c in candidates])  # validation top-1
    best = max(candidates, key=lambda c: c.reward)  # the choice: validation only
    # the choice is fixed; now, once each, the test split
    _, test_loader = make_loaders(ds, ev.batch_size, seed)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        best.test_top1 = evaluate(ev.models[best.name], test_loader)
        base.test_top1 = evaluate(ev.models[base.name], test_loader)
    finally:
        torch.set_num_threads(before)
    result = {
        "data": data, "strategy": strategy, "trials": trials, "epochs": epochs, "threads": threads,
        "target_ms": ev.target_ms, "resource": resource, "target_energy_pj": ev.target_energy_pj, "alpha": alpha, "beta": beta, "space_size": space.size,
        "selection": "validation", "val_fraction": val_fraction, "n_fit": len(search_ds.y_train),
        "n_val": len(search_ds.y_test), "n_test": len(ds.y_test),
        "baseline": base.to_dict(), "candidates": [c.to_dict() for c in candidates],
        "pareto": [candidates[i].name for i in front], "best": best.to_dict(),
        "best_val_top1": best.top1, "best_test_top1": best.test_top1, "baseline_test_top1": base.test_top1,
        "best_on_pareto_front": candidates.index(best) in front, "best_beats_baseline": best.reward > base.reward,
    }
    if out_dir is not None:
        out = Path(out_dir)
        atomic_write_text(out / "search.json", json.dumps(result, indent=2))
        plot_pareto(result["candidates"], out / "pareto.png", [result["baseline"]], ev.target_ms,
                    title="validation accuracy vs measured latency", ylabel="validation top-1 (%)")
    return result
