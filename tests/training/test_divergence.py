"""Issue 12 for training: `train --lr nan` wrote a chance-level model and exited 0. A NaN/inf learning rate must be
refused before any work, and a loss that turns NaN/inf mid-run must stop the run with an error naming the epoch
and step, before any epoch-end callback (checkpoints, recipes' saves) sees the broken model."""
import math
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from nncompress.core.errors import UserError
from nncompress.core.guards import DivergenceError, check_accuracy_kept, near_chance
from nncompress.training import Callback, TrainConfig, train


def _loader(batches=10, batch_size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batches * batch_size, 4, generator=g)
    y = (x[:, 0] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


class GoesBad(nn.Module):
    """A linear classifier whose output becomes NaN from its `after`-th training forward on."""

    def __init__(self, after: int):
        super().__init__()
        self.fc, self.after, self.calls = nn.Linear(4, 2), after, 0

    def forward(self, x):
        out = self.fc(x)
        if self.training:
            self.calls += 1
            if self.calls > self.after:
                return out * float("nan")
        return out


class EpochLog(Callback):
    def __init__(self):
        self.ended = []

    def on_epoch_end(self, epoch, model, metrics):
        self.ended.append(epoch)


@pytest.mark.parametrize("lr", [float("nan"), float("inf"), float("-inf"), 0.0, -0.1])
def test_train_config_refuses_a_bad_learning_rate(lr):
    """Validated at the API level, so every caller (CLI, recipes, benchmarks) gets it."""
    with pytest.raises(UserError, match="learning rate lr"):
        TrainConfig(lr=lr)


@pytest.mark.parametrize("field,value", [("momentum", float("nan")), ("weight_decay", float("inf")), ("weight_decay", -1.0),
                                         ("epochs", -1)])
def test_train_config_refuses_other_impossible_settings(field, value):
    with pytest.raises(UserError):
        TrainConfig(**{field: value})


def test_nan_loss_mid_training_names_epoch_and_step_and_stops_before_epoch_end():
    """10 steps per epoch; the 13th forward returns NaN → epoch 2, step 3. Epoch 2 never reaches on_epoch_end."""
    torch.manual_seed(0)
    net, log = GoesBad(after=12), EpochLog()
    with pytest.raises(DivergenceError, match=r"training diverged at epoch 2 step 3: loss is nan; lower the learning rate \(lr=0.1\)"):
        train(net, _loader(), TrainConfig(epochs=3, lr=0.1, progress=False, device="cpu"), callbacks=[log])
    assert log.ended == [0]


def test_inf_loss_is_named_inf():
    """A loss that overflows to +inf at the 5th step (a user loss_fn; the model stays finite until the update)."""
    torch.manual_seed(0)
    calls = []

    def loss_fn(out, y):
        calls.append(1)
        loss = nn.functional.cross_entropy(out, y)
        return loss * float("inf") if len(calls) == 5 else loss

    with pytest.raises(DivergenceError, match="epoch 1 step 5: loss is inf"):
        train(nn.Linear(4, 2), _loader(), TrainConfig(epochs=1, lr=0.1, progress=False, device="cpu"), loss_fn=loss_fn)


def test_non_finite_weights_with_a_finite_loss_are_an_error():
    """A weight the loss never sees can still be inf (a broken checkpoint): the run must not hand it back as a result."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 2))
    net.register_parameter("unused", nn.Parameter(torch.tensor(float("inf"))))
    with pytest.raises(DivergenceError, match="non-finite weights in unused"):
        train(net, _loader(), TrainConfig(epochs=1, lr=0.1, progress=False, device="cpu"))


def test_a_healthy_run_is_untouched():
    torch.manual_seed(0)
    hist = train(nn.Linear(4, 2), _loader(), TrainConfig(epochs=2, lr=0.1, progress=False, device="cpu"))
    assert len(hist) == 2 and all(math.isfinite(h["loss"]) for h in hist)


def test_accuracy_guard_hand_worked():
    """Ten classes: chance 10 %, margin max(5, 90/5) = 18 pp → ≤ 28 % is collapsed. A model at chance before is not judged."""
    assert near_chance(28.0, 10) and not near_chance(28.1, 10)
    assert check_accuracy_kept(95.0, 94.0, 10, "fine-tuning", "lower --lr") is None
    with pytest.raises(DivergenceError, match=r"fine-tuning: top-1 fell from 95.00% to 10.03%.*lower --lr.*--allow-drop"):
        check_accuracy_kept(95.0, 10.03, 10, "fine-tuning", "lower --lr")
    with pytest.warns(RuntimeWarning, match="fell from 95.00% to 10.03%"):
        assert check_accuracy_kept(95.0, 10.03, 10, "fine-tuning", "lower --lr", allow_drop=True)
    assert check_accuracy_kept(10.0, 10.0, 10, "training", "x") is None  # nothing to keep
    with pytest.raises(DivergenceError, match="more than 5 pp"):
        check_accuracy_kept(95.0, 80.0, 10, "quantization", "x", max_drop_pp=5.0)


def test_cli_train_lr_nan_exits_2_and_writes_nothing(tmp_path, monkeypatch, capsys):
    """The reported command: `nncompress train --lr nan` → one error line, exit 2, no weights file."""
    from nncompress.cli import main

    out = tmp_path / "m.safetensors"
    monkeypatch.setattr(sys, "argv", ["nncompress", "train", "--data", "digits", "--epochs", "1", "--lr", "nan", "--out", str(out)])
    with pytest.raises(SystemExit) as info:
        main()
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error:") and "lr" in err and "nan" in err
    assert not out.exists()


@pytest.mark.parametrize("kwargs", [{"temperature": float("nan")}, {"temperature": float("inf")}, {"hint_weight": float("nan")},
                                    {"teacher_weights": [float("inf")]}])
def test_distillation_refuses_non_finite_settings(kwargs):
    """A NaN temperature passed the old `T <= 0` check and made every KD loss NaN; now refused before training."""
    from nncompress.distillation import DistillationCallback

    with pytest.raises(UserError):
        DistillationCallback(nn.Linear(4, 2), **kwargs)


def test_distillation_nan_loss_mid_run_stops_with_epoch_and_step():
    """Distillation trains through the same loop: a student going NaN stops it with the place named."""
    from nncompress.distillation import distill

    torch.manual_seed(0)
    with pytest.raises(DivergenceError, match="training diverged at epoch 1 step 4: loss is nan"):
        distill(GoesBad(after=3), nn.Linear(4, 2), _loader(), TrainConfig(epochs=1, lr=0.1, progress=False, device="cpu"))


def test_device_side_tracking_names_the_step_too(monkeypatch):
    """The GPU path (no host read after the first 3 steps) exercised on the CPU: the first bad step is kept on the
    device and read with the epoch's loss, still before on_epoch_end, and still named."""
    from nncompress.training import loop

    monkeypatch.setattr(loop, "_reads_loss_every_step", lambda device: False)
    torch.manual_seed(0)
    net, log = GoesBad(after=12), EpochLog()
    with pytest.raises(DivergenceError, match=r"training diverged at epoch 2 step 3: loss is nan or inf"):
        train(net, _loader(), TrainConfig(epochs=3, lr=0.1, progress=False, device="cpu"), callbacks=[log])
    assert log.ended == [0] and net.calls == 20  # epoch 2 ran to its end (no sync per step), epoch 3 never started
