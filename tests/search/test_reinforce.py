"""REINFORCE controller (issue 17): the update by hand, learning on a synthetic reward, determinism, run_search."""
import math

import numpy as np
import pytest

from nncompress.core.errors import UserError
from nncompress.search import Arch, Candidate, MobileNetSpace, run_search
from nncompress.search.platform_search import STRATEGIES
from nncompress.search.strategies import ReinforceController, decode, decisions, encode, reinforce_search

OPT = Arch(0.5, (2, 2, 2, 2), (5, 5, 5, 5))


def _matches(arch: Arch) -> int:
    return (arch.width_mult == OPT.width_mult) + sum(d == 2 for d in arch.depths) + sum(k == 5 for k in arch.kernels)


def _fake(calls: list):
    """A reward that prefers one choice per decision (no training): 50 + 5 per preferred choice, in percent."""
    def evaluate(arch: Arch) -> Candidate:
        calls.append(arch)
        r = 50.0 + 5.0 * _matches(arch)
        return Candidate(str(arch), 0, 0, 1.0, r, reward=r, arch=arch.to_dict())
    return evaluate


def test_encoding_round_trips_in_mutate_gene_order():
    space = MobileNetSpace()
    assert decisions(space) == [space.widths] + [space.depths, space.kernels] * 4
    arch = Arch(0.75, (1, 2, 3, 1), (7, 5, 3, 3))
    assert encode(space, arch) == (3, 0, 2, 1, 1, 2, 0, 0, 0)
    assert decode(space, encode(space, arch)) == arch


def test_policy_gradient_step_matches_hand_computation():
    space = MobileNetSpace(widths=(0.25, 0.5), depths=(1,), kernels=(3,), stages=((24, 2),))
    ctl = ReinforceController(space, lr=0.1, baseline_decay=0.9)
    ctl.baseline = 0.5
    # p = [0.5, 0.5]; d log π(0) / d logits = onehot(0) − p = [0.5, −0.5]; step = lr · (R − b) · that
    #   = 0.1 · (1 − 0.5) · [0.5, −0.5] = [0.025, −0.025]
    assert ctl.update((0, 0, 0), 1.0) == pytest.approx(0.5)
    np.testing.assert_allclose(ctl.logits[0], [0.025, -0.025], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ctl.logits[1], [0.0], atol=1e-12)  # a one-choice decision has nothing to learn
    assert ctl.baseline == pytest.approx(0.9 * 0.5 + 0.1 * 1.0)  # EMA after the step
    assert ctl.probs()[0][0] == pytest.approx(1 / (1 + math.exp(-0.05)))
    assert ctl.log_prob((0, 0, 0)) == pytest.approx(math.log(1 / (1 + math.exp(-0.05))))


def test_first_reward_sets_the_baseline_and_moves_nothing():
    space = MobileNetSpace(widths=(0.25, 0.5), depths=(1, 2), kernels=(3,), stages=((24, 2),))
    ctl = ReinforceController(space)
    assert ctl.update((1, 1, 0), 70.0) == 0.0
    assert all(np.all(z == 0) for z in ctl.logits) and ctl.baseline == 70.0


def test_entropy_bonus_pulls_towards_uniform():
    space = MobileNetSpace(widths=(0.25, 0.5), depths=(1,), kernels=(3,), stages=((24, 2),))
    ctl = ReinforceController(space, lr=0.1, entropy=1.0)
    ctl.logits[0] = np.array([2.0, 0.0])
    ctl.baseline = 1.0
    ctl.update((0, 0, 0), 1.0)  # zero advantage: only the entropy term acts
    assert 0 < ctl.logits[0][0] - ctl.logits[0][1] < 2.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reinforce_learns_the_preferred_choices_on_a_synthetic_reward(seed):
    space, calls = MobileNetSpace(), []
    ctl = ReinforceController(space, lr=0.1)
    out = reinforce_search(space, _fake(calls), trials=10**6, seed=seed, max_samples=300, controller=ctl, progress=False)
    preferred = [p[a] for p, a in zip(ctl.probs(), encode(space, OPT))]
    assert min(preferred) > 0.9  # from 1/5 (width) and 1/3 (depth, kernel) at the start
    assert ctl.best() == OPT
    assert max(out, key=lambda c: c.reward).name == str(OPT)
    assert len(calls) == len(set(calls)) == len(out)  # a repeated draw reuses its reward, never re-evaluates
    assert all(c.strategy == "reinforce" for c in out)


def test_trials_count_distinct_evaluations_and_seed_determines_the_run():
    space = MobileNetSpace()
    a = reinforce_search(space, _fake([]), trials=12, seed=7, progress=False)
    b = reinforce_search(space, _fake([]), trials=12, seed=7, progress=False)
    c = reinforce_search(space, _fake([]), trials=12, seed=8, progress=False)
    assert len(a) == 12 and len({x.name for x in a}) == 12
    assert [x.name for x in a] == [x.name for x in b]
    assert [x.name for x in a] != [x.name for x in c]
    ca, cb = ReinforceController(space), ReinforceController(space)
    reinforce_search(space, _fake([]), trials=12, seed=7, controller=ca, progress=False)
    reinforce_search(space, _fake([]), trials=12, seed=7, controller=cb, progress=False)
    assert all(np.array_equal(x, y) for x, y in zip(ca.logits, cb.logits))


def test_small_space_and_bad_settings():
    space = MobileNetSpace(widths=(0.25,), depths=(1,), kernels=(3, 5), stages=((24, 2),))
    assert len(reinforce_search(space, _fake([]), trials=10, seed=0, progress=False)) == 2  # the whole space
    with pytest.raises(UserError):
        ReinforceController(space, lr=0.0)
    with pytest.raises(UserError):
        ReinforceController(space, baseline_decay=1.0)
    with pytest.raises(UserError):
        reinforce_search(space, _fake([]), trials=0)
    with pytest.raises(UserError):
        ReinforceController(space).update((0, 0, 0), math.nan)


def test_run_search_reinforce_end_to_end():
    assert "reinforce" in STRATEGIES and STRATEGIES[:3] == ("random", "evolution", "both")
    space = MobileNetSpace(widths=(0.25,), depths=(1,), kernels=(3, 5))
    r = run_search("digits", "reinforce", trials=2, epochs=1, n_train=200, n_test=100, latency_repeats=3, space=space,
                   progress=False)
    assert r["strategy"] == "reinforce" and len(r["candidates"]) == 2
    assert {c["strategy"] for c in r["candidates"]} == {"reinforce"}
    assert len({c["name"] for c in r["candidates"]}) == 2
    assert r["best"]["name"] == max(r["candidates"], key=lambda c: c["reward"])["name"]
    assert r["best_test_top1"] is not None
