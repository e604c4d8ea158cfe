import random

import pytest
import torch
from torch import nn

from nncompress.architectures.blocks import InvertedResidual
from nncompress.search import Arch, Candidate, Evaluator, MobileNetSpace, evolutionary_search, random_search


def _distance(a: Arch, b: Arch) -> int:
    return (a.width_mult != b.width_mult) + sum(x != y for x, y in zip(a.depths, b.depths)) + \
        sum(x != y for x, y in zip(a.kernels, b.kernels))


def test_space_size_sample_and_mutation():
    space = MobileNetSpace()
    assert space.size == 5 * 9 ** 4  # 5 widths · (3 depths · 3 kernels)^4 stages
    rng = random.Random(0)
    a = space.sample(rng)
    assert a == space.sample(random.Random(0))  # seeded draws repeat
    assert space.sample(random.Random(1)) == space.sample(random.Random(1))
    for _ in range(200):
        b = space.mutate(a, rng)
        assert _distance(a, b) == 1
        a = b


def test_build_follows_the_architecture():
    space = MobileNetSpace()
    arch = Arch(0.5, (1, 2, 3, 1), (3, 5, 7, 3))
    net = space.build(arch, (1, 28, 28), 10)
    blocks = [m for m in net.modules() if isinstance(m, InvertedResidual)]
    assert len(blocks) == 7
    dw_kernels = [b.block[1][0].kernel_size[0] for b in blocks]
    assert dw_kernels == [3, 5, 5, 7, 7, 7, 3]
    assert net.features[0][0].out_channels == 8  # make_divisible(16 · 0.5)
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError):
        space.build(Arch(0.5, (1, 2), (3, 5)), (1, 28, 28), 10)


def _fake_evaluate(arch: Arch) -> Candidate:
    score = sum(arch.depths) + sum(arch.kernels) + 10 * arch.width_mult  # best: 12 + 28 + 10 = 50
    return Candidate(str(arch), 0, 0, 1.0, score, reward=score, arch=arch.to_dict())


def test_random_search_distinct():
    out = random_search(MobileNetSpace(), _fake_evaluate, 30, seed=0, progress=False)
    assert len(out) == 30 and len({c.name for c in out}) == 30
    assert all(c.strategy == "random" for c in out)
    tiny = MobileNetSpace(widths=(0.5,), depths=(1, 2), kernels=(3,), stages=((16, 1),))
    assert len(random_search(tiny, _fake_evaluate, 10, progress=False)) == 2  # the whole space


def test_evolution_mutates_members_and_climbs():
    space = MobileNetSpace()
    evo = evolutionary_search(space, _fake_evaluate, 60, population=6, sample_size=3, seed=0, progress=False)
    archs = [Arch(c.arch["width_mult"], tuple(c.arch["depths"]), tuple(c.arch["kernels"])) for c in evo]
    assert len(set(archs)) == 60
    for i in range(6, 60):  # each child is one mutation away from an earlier member
        assert min(_distance(archs[i], p) for p in archs[max(0, i - 6):i]) == 1
    rnd = random_search(space, _fake_evaluate, 60, seed=0, progress=False)
    # selection pressure: the later children score well above a random draw on average, and the best is no worse
    late = [c.reward for c in evo[-20:]]
    assert sum(late) / 20 > sum(c.reward for c in rnd) / 60 + 3
    assert max(c.reward for c in evo) >= max(c.reward for c in rnd)
    with pytest.raises(ValueError):
        evolutionary_search(space, _fake_evaluate, 5, population=2, sample_size=3)


def test_evaluator_trains_times_and_scores(tmp_path):
    from nncompress.data import load_dataset

    ds = load_dataset("digits").subset(200, 100)
    space = MobileNetSpace(widths=(0.25,), depths=(1,), kernels=(3,))
    ev = Evaluator(space, ds, target_ms=1.0, epochs=1, latency_repeats=3)
    arch = Arch(0.25, (1, 1, 1, 1), (3, 3, 3, 3))
    c = ev(arch)
    net = space.build(arch, ds.input_shape, ds.num_classes)
    assert c.params == sum(p.numel() for p in net.parameters())
    assert c.latency_ms > 0 and 0 <= c.top1 <= 100
    assert c.reward == pytest.approx(c.top1 * (c.latency_ms / 1.0) ** -0.07)
    assert ev(arch) is c  # cached, not retrained
    assert isinstance(net, nn.Module)
