"""Localization cascade (Sun et al. 2013): MACs per level, the refinement arithmetic, training targets, a small run."""
import pytest
import torch

from nncompress.core.errors import UserError
from nncompress.data.canvas import place_digits
from nncompress.search.cascade import (
    LevelSpec, LocalizationCascade, cascade_centers, cascade_experiment, jittered_centers, level_training_set,
    localization_error_px, train_cascade,
)


def _fix(level, offset):
    """Make a level output a constant normalized offset: zero last weights, bias = offset."""
    last = level.net.head[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor(offset))


def test_macs_per_level_hand_worked():
    c = LocalizationCascade(56, [LevelSpec(56, 4), LevelSpec(28, 2), LevelSpec(16, 1)])
    # 14×14 input: conv1 14²·8·9 = 14,112; conv2 7²·16·72 = 56,448; fc1 16·3·3·64 = 9,216; fc2 64·2 = 128
    # 16×16 input: 16²·72 = 18,432; 8²·1,152 = 73,728; 16·4·4·64 = 16,384; 128
    assert c.macs_per_level() == [79_904, 79_904, 108_672]


def test_estimates_refine_from_the_window_around_the_previous_level():
    c = LocalizationCascade(56, [LevelSpec(56, 4), LevelSpec(28, 2)]).eval()
    _fix(c.levels[0], [0.1, 0.2])
    _fix(c.levels[1], [-0.25, 0.5])
    est1, est2 = c.estimates(torch.zeros(1, 1, 56, 56))
    assert est1[0].tolist() == pytest.approx([33.6, 39.2])  # 28 + 56·(0.1, 0.2)
    # window 28 at (33.6, 39.2): origin floor(20.1) = 20, floor(25.7) = 25; center (34, 39) + 28·(−0.25, 0.5)
    assert est2[0].tolist() == pytest.approx([27.0, 53.0])


def test_level_training_targets_hand_worked():
    c = LocalizationCascade(56, [LevelSpec(56, 4), LevelSpec(16, 1, 0.0)])
    centers = torch.tensor([[50.0, 5.0]])
    x = torch.zeros(1, 1, 56, 56)
    _, t1 = level_training_set(c, 0, x, centers, torch.Generator())
    assert t1[0].tolist() == pytest.approx([22 / 56, -23 / 56])
    _, t2 = level_training_set(c, 1, x, centers, torch.Generator())
    # origin floor(42.5) = 42 → clamped to 40 (window center 48); floor(−2.5) = −3 → 0 (center 8)
    assert t2[0].tolist() == pytest.approx([2 / 16, -3 / 16])


def test_error_and_jitter():
    assert localization_error_px(torch.tensor([[3.0, 4.0]]), torch.zeros(1, 2)).tolist() == [5.0]
    j = jittered_centers(torch.zeros(1000, 2), 2.5, torch.Generator().manual_seed(0))
    assert j.abs().max() <= 2.5 and j.abs().max() > 2.3
    with pytest.raises(UserError):
        jittered_centers(torch.zeros(1, 2), -1.0, torch.Generator())


def test_first_level_must_see_the_canvas():
    with pytest.raises(UserError, match="whole canvas"):
        LocalizationCascade(56, [LevelSpec(28, 2)])
    with pytest.raises(UserError, match="divisible"):
        LocalizationCascade(56, [LevelSpec(56, 3)])


def _blobs(n, seed):
    g = torch.Generator().manual_seed(seed)
    blob = torch.zeros(n, 1, 8, 8)
    blob[:, :, 2:6, 2:6] = 1.0
    return place_digits(blob, 32, g)


def test_training_localizes_better_than_the_canvas_center_and_is_deterministic():
    torch.manual_seed(0)
    x, c = _blobs(300, 0)
    xt, ct = _blobs(100, 1)
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        casc = LocalizationCascade(32, [LevelSpec(32, 2), LevelSpec(16, 1, 3.0)])
        train_cascade(casc, x, c, epochs=4, lr=3e-3, seed=0)
        models.append(casc)
    assert all(torch.equal(a, b) for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values()))
    est = cascade_centers(models[0], xt)
    guess = localization_error_px(torch.full_like(ct, 16.0), ct).mean()  # always answering the canvas center
    err1, err2 = (localization_error_px(e, ct).mean() for e in est)
    assert err1 < guess / 2
    assert err2 < 2.0  # the refinement pins a 4-px square to within 2 px


def test_cascade_experiment_small_run(tmp_path, template_digits):
    r = cascade_experiment(epochs=1, canvas_px=40, data=template_digits(tmp_path / "t.npz", 50), classifier_epochs=2)
    assert [row["level"] for row in r["levels"]] == [1, 2, 3]
    assert [row["window_px"] for row in r["levels"]] == [40, 20, 20]
    # 10×10: 10²·72 + 5²·1,152 + 16·2·2·64 + 128 = 7,200 + 28,800 + 4,096 + 128
    assert r["levels"][0]["macs"] == 40_224
    assert r["levels"][-1]["cumulative_macs"] == sum(row["macs"] for row in r["levels"])
    assert r["classifier_macs"] == 2_293_000
    assert r["oracle_crop_top1"] > 28.0
