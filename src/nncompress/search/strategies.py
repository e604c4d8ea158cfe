"""Search strategies over a `MobileNetSpace`, both driven by an `evaluate(arch) -> Candidate` function.

- `random_search`: distinct uniform samples; the baseline every search method must beat (Li & Talwalkar 2019).
- `evolutionary_search`: regularized (aging) evolution (Real et al., AAAI 2019): keep a population queue;
  each step picks the best-reward of `sample_size` random members, mutates one choice, adds the child and
  drops the *oldest* member, which keeps the search from clinging to one lucky early model.
- `reinforce_search`: a REINFORCE controller (Williams 1992), the RL search of Zoph & Le (ICLR 2017) and of
  MnasNet (Tan et al., CVPR 2019; MnasNet itself optimizes the same objective with PPO): one categorical policy
  per decision of the space, nudged towards the choices of architectures whose reward beats a moving average.
"""
from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from nncompress.core.errors import UserError
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


def decisions(space: MobileNetSpace) -> list[tuple]:
    """The space's decisions, in `MobileNetSpace.mutate`'s gene order: the width, then per stage its depth and
    its kernel. Each entry is the tuple of that decision's choices."""
    out: list[tuple] = [space.widths]
    for _ in space.stages:
        out += [space.depths, space.kernels]
    return out


def encode(space: MobileNetSpace, arch: Arch) -> tuple[int, ...]:
    """An architecture as one choice index per decision (the inverse of `decode`)."""
    values = [arch.width_mult]
    for d, k in zip(arch.depths, arch.kernels):
        values += [d, k]
    return tuple(choices.index(v) for choices, v in zip(decisions(space), values))


def decode(space: MobileNetSpace, actions: tuple[int, ...]) -> Arch:
    """The architecture that picks choice `actions[i]` at decision i."""
    values = [choices[a] for choices, a in zip(decisions(space), actions)]
    return Arch(values[0], tuple(values[1::2]), tuple(values[2::2]))


class ReinforceController:
    """A factorized policy: one vector of logits per decision, π(a) = Π_i softmax(logits_i)[a_i].

    Zoph & Le (2017) and MnasNet (Tan et al. 2019) drive an RNN controller; over a space whose decisions are
    independent choices from fixed lists, as here, independent per-decision logits are the same family without
    the recurrent coupling, and small enough to check by hand. `update` is one REINFORCE step (Williams 1992):

        logits_i += lr · [(R − b) · (onehot(a_i) − p_i) + entropy · ∂H(p_i)/∂logits_i]

    (∂ log softmax(z)[a] / ∂z = onehot(a) − p), plain gradient *ascent* (SGD without momentum) on the logits,
    so one step is exactly reproducible by hand. b is an exponential moving average of the rewards (decay
    `baseline_decay`), updated after the step; it starts at the first reward, so the first sample moves nothing
    rather than pushing its choices up by its whole (positive) reward. Rewards are MnasNet rewards in top-1
    percent points, so `lr` is per percent point of advantage.
    """

    def __init__(self, space: MobileNetSpace, lr: float = 0.1, baseline_decay: float = 0.9, entropy: float = 0.0):
        if not lr > 0 or not 0.0 <= baseline_decay < 1.0 or entropy < 0:
            raise UserError(f"reinforce needs lr > 0, 0 <= baseline_decay < 1, entropy >= 0; got {lr}, {baseline_decay}, {entropy}")
        self.space, self.lr, self.baseline_decay, self.entropy = space, lr, baseline_decay, entropy
        self.choices = decisions(space)
        self.logits = [np.zeros(len(c)) for c in self.choices]
        self.baseline: float | None = None

    def probs(self) -> list[np.ndarray]:
        out = []
        for z in self.logits:
            e = np.exp(z - z.max())
            out.append(e / e.sum())
        return out

    def sample(self, rng: random.Random) -> tuple[int, ...]:
        """One choice index per decision, drawn from the policy with `rng` (seeded: repeatable)."""
        actions = []
        for p in self.probs():
            u, acc = rng.random(), 0.0
            a = len(p) - 1
            for i, pi in enumerate(p):
                acc += pi
                if u < acc:
                    a = i
                    break
            actions.append(a)
        return tuple(actions)

    def log_prob(self, actions: tuple[int, ...]) -> float:
        return float(sum(math.log(p[a]) for p, a in zip(self.probs(), actions)))

    def update(self, actions: tuple[int, ...], reward: float) -> float:
        """One policy-gradient step for the sampled `actions` and their `reward`; returns the advantage R − b."""
        if not math.isfinite(reward):
            raise UserError(f"reinforce needs a finite reward, got {reward}")
        if self.baseline is None:
            self.baseline = reward
        advantage = reward - self.baseline
        for i, (p, a) in enumerate(zip(self.probs(), actions)):
            grad = -advantage * p
            grad[a] += advantage
            if self.entropy:
                logp = np.log(np.clip(p, 1e-300, None))
                grad += self.entropy * (-p * (logp + float(-(p * logp).sum())))
            self.logits[i] = self.logits[i] + self.lr * grad
        self.baseline = self.baseline_decay * self.baseline + (1.0 - self.baseline_decay) * reward
        return advantage

    def best(self) -> Arch:
        """The policy's mode: the most probable choice at every decision."""
        return decode(self.space, tuple(int(np.argmax(z)) for z in self.logits))


def reinforce_search(space: MobileNetSpace, evaluate: Evaluate, trials: int, seed: int = 0, lr: float = 0.1,
                     baseline_decay: float = 0.9, entropy: float = 0.0, max_samples: int | None = None,
                     progress: bool | None = None, controller: ReinforceController | None = None) -> list[Candidate]:
    """REINFORCE for `trials` *distinct* evaluations (fewer if the space is smaller or `max_samples` runs out).

    Every sample updates the policy, but an architecture drawn again reuses its first reward instead of being
    trained again: the policy still learns that it is likely good (as Zoph & Le's controller sees the same
    reward for a repeated child), and `trials` keeps meaning "architectures trained and timed", as for the
    other strategies. Since a converging policy draws mostly repeats, sampling stops after `max_samples`
    (default 20 · trials) draws in all. Pass `controller` to inspect the policy afterwards.
    """
    if trials < 1:
        raise UserError(f"--trials must be >= 1, got {trials}")
    ctl = controller or ReinforceController(space, lr, baseline_decay, entropy)
    budget = max_samples if max_samples is not None else 20 * trials
    if budget < 1:
        raise UserError(f"reinforce max_samples must be >= 1, got {budget}")
    rng, rewards, out = random.Random(seed), {}, []
    target = min(trials, space.size)
    bar = iter(track(range(target), "reinforce", enabled=progress))
    for _ in range(budget):
        actions = ctl.sample(rng)
        arch = decode(space, actions)
        if arch not in rewards:
            cand = replace(evaluate(arch), strategy="reinforce")
            rewards[arch] = cand.reward
            out.append(cand)
            next(bar, None)
        ctl.update(actions, rewards[arch])
        if len(out) >= target:
            break
    for _ in bar:  # close the progress bar when sampling stopped early
        pass
    return out
