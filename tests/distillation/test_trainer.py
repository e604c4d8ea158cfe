"""The distillation callback inside the real training loop, alone and next to a pruning mask."""
import copy

import pytest
import torch
from torch import nn

from nncompress.architectures import build_model
from nncompress.core import UserError
from nncompress.data import load_dataset, make_loaders
from nncompress.distillation import DistillationCallback, distill
from nncompress.training import Callback, TrainConfig, evaluate, train
from nncompress.training.masking import MaskCallback, magnitude_masks


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits").subset(640, 300)
    return make_loaders(ds, batch_size=64, seed=0)


@pytest.fixture(scope="module")
def teacher(digits):
    torch.set_num_threads(1)
    t = build_model("lenet5", (1, 8, 8), 10)
    train(t, digits[0], TrainConfig(epochs=8, lr=0.05, seed=0))
    assert evaluate(t, digits[1]) > 90.0
    return t


class _Losses(Callback):
    def __init__(self):
        self.seen = []

    def loss(self, model, x, y, output, loss):
        self.seen.append(float(loss.detach()))
        return loss


def test_student_identical_to_teacher_with_alpha_one_has_zero_loss(teacher, digits):
    student = copy.deepcopy(teacher)
    probe = _Losses()
    kd = DistillationCallback(teacher, temperature=3.0, alpha=1.0)
    # lr > 0 (TrainConfig refuses 0 since issue 12): at T²·KL(p_T ‖ p_S) = 0 the gradient is 0, so the student stays put
    train(student, digits[0], TrainConfig(epochs=1, lr=1e-3, lr_schedule="constant"), callbacks=[kd, probe])
    assert max(abs(v) for v in probe.seen) < 1e-5


def test_alpha_zero_leaves_cross_entropy(teacher, digits):
    student = build_model("lenet300", (1, 8, 8), 10)
    probe = _Losses()
    x, y = next(iter(digits[0]))
    ce = nn.functional.cross_entropy(student(x), y).item()
    kd = DistillationCallback(teacher, alpha=0.0)
    kd.on_train_begin(student, torch.optim.SGD(student.parameters(), lr=0.0))
    out = student(x)
    assert kd.loss(student, x, y, out, nn.functional.cross_entropy(out, y)).item() == pytest.approx(ce, rel=1e-6)
    assert probe.seen == []


def test_distilled_student_learns_teacher_is_frozen_and_hooks_are_removed(teacher, digits):
    before = copy.deepcopy(teacher.state_dict())
    student = build_model("lenet5", (1, 8, 8), 10)
    hist = distill(student, teacher, digits[0], TrainConfig(epochs=6, lr=0.02, seed=0), temperature=2.0, alpha=0.5,
                   attention=[("conv2", "conv2")], hints=[("conv1", "conv1")], rkd=[("fc1", "fc1")], val_loader=digits[1])
    assert hist[-1]["val_top1"] > 70.0
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(not m._forward_hooks for m in student.modules()) and all(not m._forward_hooks for m in teacher.modules())


def test_hint_regressor_is_trained(teacher, digits):
    student = build_model("lenet5", (1, 8, 8), 10)
    kd = DistillationCallback(teacher, hints=[("conv2", "conv2")], hint_weight=10.0)
    seen = {}

    class Grab(Callback):
        def on_step_end(self, step, model):
            if step == 0:
                seen["first"] = copy.deepcopy(kd.regressors.state_dict())

    train(student, digits[0], TrainConfig(epochs=1, lr=0.01), callbacks=[kd, Grab()])
    assert list(kd.regressors) == ["conv2->conv2"]
    after = kd.regressors.state_dict()
    assert any(not torch.equal(seen["first"][k], after[k]) for k in after)


def test_distills_into_a_student_that_is_being_pruned(teacher, digits):
    student = build_model("lenet300", (1, 8, 8), 10)
    train(student, digits[0], TrainConfig(epochs=2, lr=0.05))
    masks = magnitude_masks(student, 0.8)
    distill(student, [teacher, copy.deepcopy(teacher)], digits[0], TrainConfig(epochs=4, lr=0.05, weight_decay=1e-3),
            teacher_weights=[0.5, 0.5], temperature=2.0, alpha=0.5, callbacks=[MaskCallback(masks)])
    for name, keep in masks.items():
        w = getattr(student, name).weight
        assert torch.count_nonzero(w[~keep]) == 0
    assert evaluate(student, digits[1]) > 60.0


def test_bad_inputs_are_user_errors(teacher, digits):
    with pytest.raises(UserError, match="teacher weights"):
        DistillationCallback([teacher, teacher], teacher_weights=[1.0])
    with pytest.raises(UserError, match="alpha"):
        DistillationCallback(teacher, alpha=1.5)
    student = build_model("lenet300", (1, 8, 8), 10)
    with pytest.raises(UserError, match="no module 'conv9'"):
        distill(student, teacher, digits[0], TrainConfig(epochs=1), attention=[("fc1", "conv9")])


def test_hidden_state_hint_on_token_sequences_maps_channels_per_position():
    """TinyBERT-style hidden-state transfer: an 8-wide student layer imitates a 16-wide teacher layer at every
    position with one 8→16 map (136 weights), not a map of the flattened sequence ((5·8)·(5·16) + 80 = 3,280)."""
    torch.manual_seed(0)

    class Tok(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.emb, self.mix, self.out = nn.Embedding(11, width), nn.Linear(width, width), nn.Linear(width, 11)

        def forward(self, ids):
            return self.out(torch.tanh(self.mix(self.emb(ids)))).mean(1)

    teacher, student = Tok(16).eval(), Tok(8)
    ids = torch.randint(0, 11, (32, 5))
    data = [(ids[i:i + 8], ids[i:i + 8, 0]) for i in range(0, 32, 8)]
    kd = DistillationCallback(teacher, hints=[("mix", "mix")], hint_weight=1.0)
    train(student, data, TrainConfig(epochs=2, lr=0.01, seed=0), callbacks=[kd])
    reg = kd.regressors["mix->mix"]
    assert isinstance(reg, nn.Linear) and (reg.in_features, reg.out_features) == (8, 16)
    assert sum(p.numel() for p in reg.parameters()) == 8 * 16 + 16


def test_hint_regressor_of_equal_widths_starts_as_the_identity():
    from nncompress.distillation.trainer import _regressor

    s = torch.randn(2, 5, 6)
    reg = _regressor(s, torch.randn(2, 5, 6))
    assert torch.equal(reg(s), s)
    fm = torch.randn(2, 3, 4, 4)
    assert torch.allclose(_regressor(fm, torch.randn(2, 3, 4, 4))(fm), fm)
    assert not torch.allclose(_regressor(fm, torch.randn(2, 5, 4, 4)).weight[:3, :, 0, 0], torch.eye(3))
