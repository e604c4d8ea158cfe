"""AGP schedule points by hand, AGP during training, iterative pruning, splicing revival."""
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from nncompress.core.errors import UserError
from nncompress.pruning import (
    AGPPruner,
    SplicingPruner,
    agp_sparsity,
    apply_mask,
    dense_tensor,
    get_mask,
    iterative_prune,
)
from nncompress.training import Callback, TrainConfig, train

T, F = True, False


@pytest.mark.parametrize(
    "step, expected",
    [
        (-3, 0.0),  # before start: s_i
        (0, 0.0),
        (1, 0.9 * (1 - 0.9**3)),  # 0.2439
        (5, 0.9 * (1 - 0.5**3)),  # 0.7875
        (10, 0.9),
        (25, 0.9),  # after the end: s_f
    ],
)
def test_agp_points_hand_computed(step, expected):
    assert agp_sparsity(step, 0.0, 0.9, 0, 10, 1) == pytest.approx(expected)


def test_agp_with_offset_frequency_and_initial_sparsity():
    assert agp_sparsity(5, 0.0, 0.9, 0, 10, 1) == pytest.approx(0.7875)
    assert agp_sparsity(15, 0.0, 0.9, 10, 5, 2) == pytest.approx(0.7875)  # (15-10)/(5*2) = 0.5
    assert agp_sparsity(5, 0.5, 0.9, 0, 10, 1) == pytest.approx(0.9 - 0.4 * 0.125)  # 0.85
    with pytest.raises(UserError, match="initial_sparsity"):
        agp_sparsity(0, 0.9, 0.5, 0, 10, 1)
    with pytest.raises(UserError, match="n_steps"):
        agp_sparsity(0, 0.0, 0.5, 0, 0, 1)
    with pytest.raises(UserError, match="final_sparsity"):
        agp_sparsity(0, 0.0, 1.0, 0, 10, 1)


class _Record(Callback):
    def __init__(self, layer):
        self.layer, self.zeros = layer, []

    def on_step_end(self, step, model):
        self.zeros.append(int((self.layer.weight == 0).sum()))


def _data(n=80, d=10, classes=3, batch=8):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=False)


def test_agp_pruner_during_training_follows_the_schedule():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 3))
    agp = AGPPruner(0.8, start=1, n_steps=4, frequency=2, layers=["0"])
    rec = _Record(model[0])
    train(model, _data(), TrainConfig(epochs=2, lr=0.05, progress=False), callbacks=[agp, rec])  # 20 steps
    # pruning points t = 1, 3, 5, 7, 9 with (t - 1)/8 = 0, 1/4, 1/2, 3/4, 1
    expected = [0.0, 0.8 * (1 - 0.75**3), 0.8 * (1 - 0.5**3), 0.8 * (1 - 0.25**3), 0.8]
    assert [t for t, _ in agp.history_] == [1, 3, 5, 7, 9]
    assert [s for _, s in agp.history_] == pytest.approx(expected)
    counts = [math.floor(s * 200 + 0.5) for s in expected]  # 0, 93, 140, 158, 160
    assert rec.zeros[1] == counts[0] and rec.zeros[3] == counts[1] and rec.zeros[5] == counts[2]
    assert rec.zeros[7] == counts[3] and rec.zeros[9:] == [160] * 11
    assert all(a <= b for a, b in zip(rec.zeros, rec.zeros[1:]))  # monotone
    assert get_mask(model[2]) is None


def test_agp_by_epoch():
    model = nn.Sequential(nn.Linear(10, 3))
    agp = AGPPruner({"0": 0.5}, n_steps=2, unit="epoch")
    train(model, _data(n=16), TrainConfig(epochs=4, lr=0.01, progress=False), callbacks=[agp])
    assert [t for t, _ in agp.history_] == [0, 1, 2]
    assert [s["0"] for _, s in agp.history_] == pytest.approx([0.0, 0.5 * (1 - 0.125), 0.5])
    assert int((model[0].weight == 0).sum()) == 15


def test_iterative_prune_levels_and_sensitivity():
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 3))
    loader = _data()
    calls = []

    def fine_tune(m):
        train(m, loader, TrainConfig(epochs=1, lr=0.05, progress=False))
        calls.append(int((m[0].weight == 0).sum()))
        return float(len(calls))

    history = iterative_prune(model, fine_tune, [0.5, 0.75, 0.9])
    assert history == [(0.5, 1.0), (0.75, 2.0), (0.9, 3.0)]
    assert calls == [100, 150, 180]  # masks held through fine-tuning

    model = nn.Sequential(nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[-1.0, 2.0, -3.0, 4.0]]))
    zeros = lambda m: float((m[0].weight == 0).sum())  # noqa: E731
    # s·σ with σ = sqrt(7.25) = 2.693 of the dense weights: s = 0.5 -> 1.346 (drops -1); s = 1 -> 2.693 (drops 2)
    assert iterative_prune(model, zeros, [0.5, 1.0], criterion="sensitivity") == [(0.5, 1.0), (1.0, 2.0)]
    with pytest.raises(UserError, match="criterion"):
        iterative_prune(model, zeros, [0.5], criterion="random")


def test_splicing_thresholds_from_mean_and_std():
    model = nn.Sequential(nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.2, -0.4, 0.6, -0.8]]))
    sp = SplicingPruner(c=1.0)
    sp.on_train_begin(model, None)
    # |w|: mean 0.5, population std sqrt(0.05) = 0.2236 -> mu + sigma = 0.7236; a = 0.9x, b = 1.1x
    a, b = sp.thresholds_["0"]
    assert a == pytest.approx(0.9 * 0.72360680) and b == pytest.approx(1.1 * 0.72360680)
    sp.on_step_begin(0, model)
    assert get_mask(model[0]).tolist() == [[F, F, F, T]]


def _push_last_weight(steps=12):
    """Gradient descent on loss = -w3 (inputs are e_3), lr 0.1: w3 grows by 0.1 per step if it gets a gradient."""
    x = torch.zeros(steps, 4)
    x[:, 3] = 1.0
    loader = DataLoader(TensorDataset(x, torch.zeros(steps, dtype=torch.long)), batch_size=1)
    model = nn.Sequential(nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 0.05]]))
    cfg = TrainConfig(epochs=1, lr=0.1, momentum=0.0, lr_schedule="constant", progress=False)
    return model, cfg, loader


def test_splicing_revives_a_weight_whose_dense_value_grows_past_b():
    sp = SplicingPruner(thresholds={"0": (0.5, 0.8)})
    model, cfg, loader = _push_last_weight()
    seen = _Record(model[0])
    train(model, loader, cfg, callbacks=[sp, seen], loss_fn=lambda out, y: -out.sum())
    # step 0 prunes w3 = 0.05 < a; straight-through gradients lift the dense value 0.05 + 0.1·n,
    # which passes b = 0.8 after 8 steps (0.85): the splice at step 8 brings it back.
    assert seen.zeros[:8] == [1] * 8 and seen.zeros[8:] == [0] * 4
    assert get_mask(model[0]).tolist() == [[T, T, T, T]]
    assert model[0].weight[0, 3].item() == pytest.approx(0.05 + 1.2)
    assert model[0].weight[0, :3].tolist() == [1.0, 1.0, 1.0]
    assert get_mask(model[0]) is not None and not model[0].parametrizations.weight[0].straight_through


def test_plain_mask_never_revives_the_same_weight():
    model, cfg, loader = _push_last_weight()
    apply_mask(model[0], torch.tensor([[T, T, T, F]]))
    train(model, loader, cfg, loss_fn=lambda out, y: -out.sum())
    assert model[0].weight[0, 3].item() == 0.0
    assert dense_tensor(model[0])[0, 3].item() == pytest.approx(0.05)  # zero gradient: never moved
