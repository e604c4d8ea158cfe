"""KD losses against values worked out by hand."""
import math

import pytest
import torch

from nncompress.core import UserError
from nncompress.distillation import (
    attention_map,
    attention_transfer_loss,
    hint_loss,
    kd_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    soft_target_loss,
    soft_targets,
)


def test_hinton_loss_matches_hand_computation():
    # T = 2; teacher logits (2·ln3, 0) → soft targets (3/4, 1/4); student logits (0, 0) → (1/2, 1/2)
    T, alpha = 2.0, 0.75
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[2 * math.log(3), 0.0]])
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # 0.130812
    ce = math.log(2)
    expected = alpha * T**2 * kl + (1 - alpha) * ce  # 0.565723
    got = kd_loss(student, teacher, torch.tensor([0]), temperature=T, alpha=alpha)
    assert got.item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.565723, abs=1e-6)


def test_soft_loss_is_scaled_by_t_squared():
    student = torch.tensor([[0.0, 0.0]])
    for T in (1.0, 2.0, 5.0):
        teacher = torch.tensor([[T * math.log(3), 0.0]])  # always (3/4, 1/4) at temperature T
        kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
        p = soft_targets(teacher, T)
        assert soft_target_loss(student, p, T).item() == pytest.approx(T**2 * kl, rel=1e-5)


def test_alpha_extremes_give_pure_terms():
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
    assert kd_loss(s, t, y, alpha=0.0).item() == pytest.approx(torch.nn.functional.cross_entropy(s, y).item(), rel=1e-6)
    assert kd_loss(s, s, y, alpha=1.0).item() == pytest.approx(0.0, abs=1e-6)  # identical logits: KL = 0


def test_several_teachers_are_averaged_with_weights():
    T = 1.0
    t1 = torch.tensor([[math.log(3), 0.0]])  # (3/4, 1/4)
    t2 = torch.tensor([[0.0, 0.0]])          # (1/2, 1/2)
    p = soft_targets([t1, t2], T, weights=[1.0, 3.0])  # 1/4·(3/4, 1/4) + 3/4·(1/2, 1/2)
    assert p.tolist()[0] == pytest.approx([0.5625, 0.4375], abs=1e-6)
    p_eq = soft_targets([t1, t2], T)
    assert p_eq.tolist()[0] == pytest.approx([0.625, 0.375], abs=1e-6)
    with pytest.raises(ValueError):
        soft_targets([t1, t2], T, weights=[1.0])


def test_attention_transfer_zero_for_identical_and_scaled_features():
    torch.manual_seed(0)
    f = torch.randn(4, 8, 6, 6)
    assert attention_transfer_loss(f, f).item() == pytest.approx(0.0, abs=1e-7)
    # attention is normalized and channel-count free: 3× larger features over 16 channels give the same map
    g = torch.cat([3 * f, torch.zeros(4, 8, 6, 6)], dim=1)
    assert attention_transfer_loss(g, f).item() == pytest.approx(0.0, abs=1e-6)


def test_attention_transfer_hand_value():
    # all energy at position 0 vs all at position 1: Q_s = e0, Q_t = e1 → ‖e0 − e1‖ = √2
    s = torch.zeros(1, 2, 2, 2)
    t = torch.zeros(1, 2, 2, 2)
    s[0, :, 0, 0] = 1.0
    t[0, 1, 0, 1] = 5.0
    assert attention_map(s).tolist()[0] == pytest.approx([1, 0, 0, 0])
    assert attention_transfer_loss(s, t).item() == pytest.approx(math.sqrt(2), rel=1e-6)


def test_attention_transfer_refuses_flat_features():
    with pytest.raises(UserError, match="4-D"):
        attention_transfer_loss(torch.randn(2, 5), torch.randn(2, 5))


def test_rkd_distance_hand_value():
    # 1-D embeddings student {0, 1, 2}, teacher {0, 1, 3}; distances normalized by their off-diagonal mean:
    # student (1, 2, 1)/(4/3) = (.75, 1.5, .75); teacher (1, 3, 2)/2 = (.5, 1.5, 1)
    # Huber(β=1) of differences (.25, 0, −.25) = (.03125, 0, .03125), each pair twice, mean over 6 entries
    s = torch.tensor([[0.0], [1.0], [2.0]])
    t = torch.tensor([[0.0], [1.0], [3.0]])
    assert rkd_distance_loss(s, t).item() == pytest.approx(0.125 / 6, rel=1e-5)


def test_rkd_zero_for_identical_and_similar_embeddings():
    torch.manual_seed(0)
    e = torch.randn(6, 4)
    moved = 2.5 * e + torch.tensor([1.0, -2.0, 0.5, 3.0])  # scale + translation keep relative distances and angles
    assert rkd_distance_loss(e, e).item() == pytest.approx(0.0, abs=1e-7)
    assert rkd_angle_loss(e, e).item() == pytest.approx(0.0, abs=1e-7)
    assert rkd_distance_loss(moved, e).item() == pytest.approx(0.0, abs=1e-6)
    assert rkd_angle_loss(moved, e).item() == pytest.approx(0.0, abs=1e-6)
    other = torch.randn(6, 4)
    assert rkd_distance_loss(other, e).item() > 1e-3
    assert rkd_angle_loss(other, e).item() > 1e-3


def test_rkd_gradients_are_finite_with_duplicate_samples():
    e = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0], [3.0, 0.0]], requires_grad=True)
    loss = rkd_distance_loss(e, torch.randn(4, 3)) + rkd_angle_loss(e, torch.randn(4, 3))
    loss.backward()
    assert torch.isfinite(e.grad).all()


def test_hint_loss_hand_value():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    b = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    assert hint_loss(a, b).item() == pytest.approx(0.5 * (4 + 16) / 4)
