"""Relative (gap) indices with filler entries, checked on hand-worked examples (Han et al. 2016, fig. 2)."""
import numpy as np
import pytest

from nncompress.encoding.relative_index import count_entries, from_relative, to_relative


def test_paper_style_example_with_one_filler():
    # gap_bits=3 -> gaps 1..8. positions 1, 4, 20: raw gaps (from -1) 2, 3, 16.
    # 16 > 8: one filler at 4 + 8 = 12, then 20 - 12 = 8.
    gaps, filler = to_relative([1, 4, 20], 3)
    assert gaps.tolist() == [2, 3, 8, 8]
    assert filler.tolist() == [False, False, True, False]
    assert count_entries([1, 4, 20], 3) == 4
    assert from_relative(gaps, filler, 3).tolist() == [1, 4, 20]


def test_gap_at_position_zero():
    gaps, filler = to_relative([0], 3)
    assert gaps.tolist() == [1] and filler.tolist() == [False]
    # 0 then 9: gap 9 > 8 -> filler at 8, then gap 1
    gaps, filler = to_relative([0, 9], 3)
    assert gaps.tolist() == [1, 8, 1]
    assert filler.tolist() == [False, True, False]


def test_boundaries_of_the_gap_range():
    assert to_relative([7], 3)[0].tolist() == [8]  # gap exactly 8 fits: no filler
    gaps, filler = to_relative([15], 3)  # gap 16 = 8 + 8: one filler (position 7), then 8
    assert gaps.tolist() == [8, 8] and filler.tolist() == [True, False]
    gaps, filler = to_relative([16], 3)  # gap 17 = 8 + 8 + 1: two fillers (7, 15), then 1
    assert gaps.tolist() == [8, 8, 1] and filler.tolist() == [True, True, False]
    # gap_bits=1 -> gaps 1..2; positions 0, 5: gaps 1 | 2(f) 2(f) 2 ... 5 - 0 = 5 = 2 + 2 + 1
    gaps, filler = to_relative([0, 5], 1)
    assert gaps.tolist() == [1, 2, 2, 1] and filler.tolist() == [False, True, True, False]
    assert count_entries([0, 5], 1) == 4


def test_empty():
    gaps, filler = to_relative(np.zeros(0, dtype=np.int64), 4)
    assert gaps.size == 0 and filler.size == 0
    assert count_entries([], 4) == 0
    assert from_relative([], []).size == 0


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("gap_bits", [1, 3, 5, 8])
def test_round_trip_random_masks(seed, gap_bits):
    rng = np.random.default_rng(seed)
    numel = int(rng.integers(1, 5000))
    density = [0.001, 0.05, 0.5, 1.0][seed % 4]
    positions = np.flatnonzero(rng.random(numel) < density)
    gaps, filler = to_relative(positions, gap_bits)
    m = 2**gap_bits
    assert gaps.min(initial=1) >= 1 and gaps.max(initial=1) <= m
    assert (gaps[filler] == m).all()
    assert (~filler).sum() == positions.size
    assert gaps.size == count_entries(positions, gap_bits)
    # hand formula: one filler per full M inside each raw gap
    raw = np.diff(positions, prepend=-1)
    assert filler.sum() == int(((raw - 1) // m).sum())
    np.testing.assert_array_equal(from_relative(gaps, filler, gap_bits), positions)


def test_invalid_positions_and_gaps():
    with pytest.raises(ValueError):
        to_relative([3, 3], 4)
    with pytest.raises(ValueError):
        to_relative([5, 2], 4)
    with pytest.raises(ValueError):
        to_relative([-1], 4)
    with pytest.raises(ValueError):
        to_relative([1], 0)
    with pytest.raises(ValueError):
        to_relative([1], 17)
    with pytest.raises(ValueError):
        from_relative([0, 1], [False, False])
    with pytest.raises(ValueError, match="filler"):
        from_relative([3, 1], [True, False], gap_bits=3)
    with pytest.raises(ValueError, match="exceeds"):
        from_relative([9], [False], gap_bits=3)
