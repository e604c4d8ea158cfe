"""Search strategies over a `MobileNetSpace`, both driven by an `evaluate(arch) -> Candidate` function.

- `random_search`: distinct uniform samples; the baseline every search method must beat (Li & Talwalkar 2019).
- `evolutionary_search`: regularized (aging) evolution (Real et al., AAAI 2019): keep a population queue;
  each step picks the best-reward of `sample_size` random members, mutates one choice, adds the child and
  drops the *oldest* member, which keeps the search from clinging to one lucky early model.
"""
from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import replace

from nncompress.core.progress import track
from nncompress.search.evaluator import Candidate
from nncompress.search.space import Arch, MobileNetSpace

Evaluate = Callable[[Arch], Candidate]
_MAX_TRIES = 100  # draws before accepting that the space has no unseen architecture left nearby


def _fresh(draw: Callable[[], Arch], seen: set[Arch]) -> Arch:
    arch = draw()
    for _ in range(_MAX_TRIES):
        if arch not in seen:
            break
        arch = draw()
    return arch


def random_search(space: MobileNetSpace, evaluate: Evaluate, trials: int, seed: int = 0,
                  progress: bool | None = None) -> list[Candidate]:
    """Evaluate `trials` distinct random architectures (fewer if the space is smaller)."""
    rng, seen, out = random.Random(seed), set(), []
    for _ in track(range(min(trials, space.size)), "random search", enabled=progress):
        arch = _fresh(lambda: space.sample(rng), seen)
        if arch in seen:
            break
        seen.add(arch)
        out.append(replace(evaluate(arch), strategy="random"))
    return out


def evolutionary_search(space: MobileNetSpace, evaluate: Evaluate, trials: int, population: int = 4,
                        sample_size: int = 2, seed: int = 0, progress: bool | None = None) -> list[Candidate]:
    """Regularized evolution for `trials` evaluations: `population` random founders, then tournament + mutation."""
    if population < 1 or not 1 <= sample_size <= population:
        raise ValueError(f"need population >= 1 and 1 <= sample_size <= population, got {population}, {sample_size}")
    rng, seen, out = random.Random(seed), set(), []
    pop: deque[tuple[Arch, Candidate]] = deque()
    for step in track(range(min(trials, space.size)), "evolution", enabled=progress):
        if step < population:
            arch = _fresh(lambda: space.sample(rng), seen)
        else:
            parent = max(rng.sample(list(pop), sample_size), key=lambda ac: ac[1].reward)[0]
            arch = _fresh(lambda: space.mutate(parent, rng), seen)
        if arch in seen:
            break
        seen.add(arch)
        cand = replace(evaluate(arch), strategy="evolution")
        out.append(cand)
        pop.append((arch, cand))
        if len(pop) > population:
            pop.popleft()  # aging: the oldest dies, not the worst
    return out
