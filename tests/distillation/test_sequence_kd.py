"""KD on sequence logits (B, T, V): one distribution per token, and a causal LM's own (shifted) loss as the hard
term (issue 15: distillation on the language-model testbed)."""
from __future__ import annotations

import math

import pytest
import torch

from nncompress.distillation import distill, soft_target_loss, soft_targets
from nncompress.training import TrainConfig


def test_per_token_kl_by_hand():
    # one sequence of two tokens over two classes; T = 1
    student = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]])  # softmax: (.5, .5) and (.75, .25)
    teacher = torch.tensor([[[math.log(3.0), 0.0], [0.0, 0.0]]])  # softmax: (.75, .25) and (.5, .5)
    p = soft_targets(teacher, temperature=1.0)
    assert torch.allclose(p, torch.tensor([[[0.75, 0.25], [0.5, 0.5]]]))
    kl1 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    kl2 = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert float(soft_target_loss(student, p, temperature=1.0)) == pytest.approx((kl1 + kl2) / 2, rel=1e-6)


def test_shape_mismatch_is_one_clear_error():
    from nncompress.core.errors import UserError

    with pytest.raises(UserError, match="same classes at the same positions"):
        soft_target_loss(torch.zeros(1, 3, 5), torch.zeros(1, 3, 4))


def test_distilling_a_causal_lm_with_dict_batches_moves_the_student_towards_the_teacher():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = dict(vocab_size=50, n_positions=16, n_head=2)
    teacher = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=32, **cfg)).eval()
    student = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=16, **cfg))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (32, 12), generator=g)
    loader = torch.utils.data.DataLoader([{"input_ids": x, "labels": x} for x in ids], batch_size=8)

    def kl_to_teacher():
        with torch.no_grad():
            p = soft_targets(teacher(input_ids=ids).logits, 1.0)
            return float(soft_target_loss(student(input_ids=ids).logits, p, 1.0))

    before = kl_to_teacher()
    history = distill(student, teacher, loader, TrainConfig(epochs=3, lr=3e-3, optimizer="adam", device="cpu", progress=False),
                      temperature=1.0, alpha=1.0)
    assert all(math.isfinite(h["loss"]) for h in history)
    assert kl_to_teacher() < 0.9 * before


def test_the_teacher_is_handed_back_trainable_and_in_its_mode():
    from torch import nn

    torch.manual_seed(0)
    teacher, student = nn.Linear(4, 3), nn.Linear(4, 3)
    teacher.train()
    teacher.bias.requires_grad_(False)  # the caller's own choice survives too
    loader = torch.utils.data.DataLoader(list(zip(torch.randn(16, 4), torch.randint(0, 3, (16,)))), batch_size=8)
    distill(student, teacher, loader, TrainConfig(epochs=1, lr=0.1, device="cpu", progress=False))
    assert teacher.training and teacher.weight.requires_grad and not teacher.bias.requires_grad
