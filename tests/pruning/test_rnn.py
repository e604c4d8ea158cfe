"""RNNPruner: per-gate magnitude masks on LSTM/GRU/RNN weight matrices (issue 17)."""
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from nncompress.core.errors import UserError
from nncompress.pruning import RNNPruner, finalize, get_mask, rnn_sparsity
from nncompress.pruning.rnn import rnn_weight_names

# Tiny LSTM (input 1, hidden 2): weight_ih is [8, 1], rows = gates i, f, g, o (2 rows each).
W_IH = torch.tensor([[0.1], [-0.2], [5.0], [6.0], [0.03], [-0.04], [1.0], [-2.0]])
W_HH = torch.tensor([[1.0, -3.0], [2.0, 0.5],      # i
                     [-0.1, 0.2], [0.3, -0.4],     # f
                     [9.0, 8.0], [-7.0, 6.0],      # g
                     [0.05, -0.5], [0.6, -0.01]])  # o


def tiny_lstm() -> nn.LSTM:
    m = nn.LSTM(1, 2)
    with torch.no_grad():
        m.weight_ih_l0.copy_(W_IH)
        m.weight_hh_l0.copy_(W_HH)
    return m


def test_per_gate_mask_equals_hand_selection():
    m = RNNPruner(0.5).prune(tiny_lstm())
    # each 2-entry gate block of weight_ih keeps its larger |w|
    assert get_mask(m, "weight_ih_l0").flatten().tolist() == [False, True, False, True, False, True, False, True]
    # each 4-entry gate block of weight_hh keeps its 2 largest |w|
    expected_hh = torch.tensor([[0, 1], [1, 0], [0, 0], [1, 1], [1, 1], [0, 0], [0, 1], [1, 0]], dtype=torch.bool)
    assert torch.equal(get_mask(m, "weight_hh_l0"), expected_hh)
    report = rnn_sparsity(m)
    for name in ("weight_ih_l0", "weight_hh_l0"):
        assert report[name] == {"all": 0.5, "i": 0.5, "f": 0.5, "g": 0.5, "o": 0.5}
    assert not parametrize.is_parametrized(m, "bias_ih_l0") and not parametrize.is_parametrized(m, "bias_hh_l0")


def test_per_matrix_threshold_can_empty_a_gate_which_per_gate_prevents():
    m = RNNPruner(0.5, scope="per-matrix").prune(tiny_lstm())
    # the 4 smallest |w| of weight_ih are the i and g gates' entries: the g gate loses all its input weights
    assert get_mask(m, "weight_ih_l0").flatten().tolist() == [False, False, True, True, False, False, True, True]
    assert rnn_sparsity(m)["weight_ih_l0"]["g"] == 1.0
    assert rnn_sparsity(RNNPruner(0.5).prune(tiny_lstm()))["weight_ih_l0"]["g"] == 0.5


def test_gate_granularity_removes_whole_rows_by_norm():
    m = RNNPruner(0.5, granularity="gate").prune(tiny_lstm())
    rows = get_mask(m, "weight_hh_l0").all(dim=1).tolist()
    # per gate, keep the row with the larger L2 norm: i (√10 vs √4.25), f (0.5 vs ~0.22), g (√145 vs √85), o (~0.6 vs ~0.5)
    assert rows == [True, False, False, True, True, False, False, True]
    assert torch.equal(get_mask(m, "weight_hh_l0"), get_mask(m, "weight_hh_l0").all(dim=1, keepdim=True).expand(8, 2))


def test_masks_enforced_in_forward_and_after_optimizer_steps():
    torch.manual_seed(0)
    m = nn.LSTM(4, 6, batch_first=True)
    RNNPruner(0.7).prune(m)
    opt = torch.optim.SGD(m.parameters(), lr=0.5, momentum=0.9, weight_decay=0.01)
    x = torch.randn(3, 5, 4)
    for _ in range(3):
        opt.zero_grad()
        m(x)[0].pow(2).sum().backward()
        for name in rnn_weight_names(m):
            grad = m.parametrizations[name].original.grad
            assert grad[~get_mask(m, name)].abs().max() == 0  # d(w·m)/dw = m
        opt.step()
    plain = nn.LSTM(4, 6, batch_first=True)
    with torch.no_grad():
        for name in rnn_weight_names(m):
            w = getattr(m, name)
            assert (w[~get_mask(m, name)] == 0).all()
            assert (m.parametrizations[name].original[~get_mask(m, name)] != 0).any()  # dense tensor kept, mask does the work
            getattr(plain, name).copy_(w)
        for name in ("bias_ih_l0", "bias_hh_l0"):
            getattr(plain, name).copy_(getattr(m, name))
        assert torch.equal(plain(x)[0], m(x)[0])  # forward uses the masked weights


def test_finalize_leaves_plain_lstm_with_zeros_and_same_outputs():
    torch.manual_seed(1)
    m = nn.LSTM(4, 5, num_layers=2, bidirectional=True)
    keys = set(m.state_dict())
    RNNPruner(0.6).prune(m)
    x = torch.randn(7, 2, 4)
    with torch.no_grad():
        before = m(x)[0]
    finalize(m)
    assert type(m) is nn.LSTM and not parametrize.is_parametrized(m)
    assert set(m.state_dict()) == keys
    with torch.no_grad():
        assert torch.equal(m(x)[0], before)
    for name in rnn_weight_names(m):
        assert isinstance(getattr(m, name), nn.Parameter)
        assert (getattr(m, name) == 0).float().mean().item() == pytest.approx(0.6, abs=0.01)


@pytest.mark.parametrize("cls,gates", [(nn.LSTM, "ifgo"), (nn.GRU, "rzn"), (nn.RNN, "h")])
def test_bidirectional_two_layer_all_weight_matrices(cls, gates):
    torch.manual_seed(2)
    m = nn.Sequential(cls(3, 10, num_layers=2, bidirectional=True))
    RNNPruner(0.8).prune(m)
    expected = {f"0.weight_{k}_l{layer}{sfx}" for k in ("ih", "hh") for layer in (0, 1) for sfx in ("", "_reverse")}
    report = rnn_sparsity(m)
    assert set(report) == expected
    for row in report.values():
        assert set(row) == {"all", *gates}
        for g in gates:
            assert row[g] == pytest.approx(0.8)  # 10·in entries per gate: exactly 80 % each (10 rows × 3, 10 or 20 columns)
    assert not any(parametrize.is_parametrized(m[0], b) for b in ("bias_ih_l0", "bias_hh_l1_reverse"))


def test_repruning_never_revives_and_lower_target_is_a_no_op():
    m = RNNPruner(0.5).prune(tiny_lstm())
    first = get_mask(m, "weight_hh_l0").clone()
    with torch.no_grad():
        m.parametrizations.weight_hh_l0.original[~first] *= 100  # big dense values under masked entries
    RNNPruner(0.25).prune(m)
    assert torch.equal(get_mask(m, "weight_hh_l0"), first)
    RNNPruner(0.75).prune(m)
    mask = get_mask(m, "weight_hh_l0")
    assert not (mask & ~first).any() and rnn_sparsity(m)["weight_hh_l0"]["all"] == 0.75


def test_refusals_are_one_line_user_errors():
    model = nn.Sequential(nn.Linear(3, 3))
    cases = [lambda: RNNPruner(1.5), lambda: RNNPruner(0.5, scope="global"), lambda: RNNPruner(0.5, granularity="row"),
             lambda: RNNPruner(0.5).prune(model), lambda: RNNPruner(0.5, layers=["0"]).prune(model),
             lambda: RNNPruner(0.5, layers=["nope"]).prune(model)]
    for case in cases:
        with pytest.raises(UserError) as e:
            case()
        assert "\n" not in str(e.value)


class DigitsLSTM(nn.Module):
    """Reads an 8×8 digit as a sequence of 8 rows of 8 pixels; classifies from the last hidden state."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        self.lstm = nn.LSTM(8, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, 10)

    def forward(self, x):
        out, _ = self.lstm(x.reshape(x.shape[0], 8, 8))  # [N,1,8,8] -> [N,8,8]
        return self.fc(out[:, -1])


def test_digits_lstm_pruned_to_80_percent_loses_at_most_1pp_after_fine_tuning():
    from nncompress.data import load_dataset
    from nncompress.data.datasets import make_loaders
    from nncompress.training import TrainConfig, evaluate, train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_loader, test_loader = make_loaders(load_dataset("digits"), batch_size=64)
        torch.manual_seed(0)
        model = DigitsLSTM(64)
        train(model, train_loader, TrainConfig(epochs=20, lr=0.01, optimizer="adam", progress=False, device="cpu"))
        dense = evaluate(model, test_loader)
        assert dense >= 95.0
        RNNPruner(0.8).prune(model)
        pruned = evaluate(model, test_loader)
        train(model, train_loader, TrainConfig(epochs=15, lr=0.003, optimizer="adam", progress=False, device="cpu"))
        finalize(model)
        tuned = evaluate(model, test_loader)
    finally:
        torch.set_num_threads(threads)
    lstm_weights = torch.cat([getattr(model.lstm, n).flatten() for n in rnn_weight_names(model.lstm)])
    assert (lstm_weights == 0).float().mean().item() == pytest.approx(0.8, abs=0.001)  # 80 % of the LSTM's matrices
    assert pruned < dense - 5  # pruning alone hurts: the fine-tuning is what recovers it
    assert tuned >= dense - 1.0, f"dense {dense:.2f} % -> pruned {pruned:.2f} % -> fine-tuned {tuned:.2f} %"


def test_masks_travel_by_mask_state_dict():
    from nncompress.pruning import load_masks, mask_state_dict

    m = nn.Sequential(tiny_lstm())
    RNNPruner(0.5).prune(m)
    saved = mask_state_dict(m)
    assert set(saved) == {"0.weight_ih_l0", "0.weight_hh_l0"}
    fresh = load_masks(nn.Sequential(tiny_lstm()), saved)
    for name in ("weight_ih_l0", "weight_hh_l0"):
        assert torch.equal(get_mask(fresh[0], name), get_mask(m[0], name))


def test_layer_pruners_warn_that_recurrent_layers_stay_dense():
    """Issue 17: LSTMs were silently skipped; the Linear/Conv pruners now say so and point to RNNPruner."""
    import warnings as _w

    from torch import nn

    from nncompress.pruning import MagnitudePruner

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.head = nn.LSTM(4, 8, batch_first=True), nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    with _w.catch_warnings(record=True) as caught:
        _w.simplefilter("always")
        MagnitudePruner(0.5).prune(Net())
    assert any("rnn" in str(w.message) and "RNNPruner" in str(w.message) for w in caught), [str(w.message) for w in caught]
