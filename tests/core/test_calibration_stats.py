"""Calibration statistics: XᵀX, ‖X_j‖, max|X_j|, mean|X_j| by hand; Conv1D duck typing; norm sources;
the sequential mode feeds each layer the already-compressed layers' outputs; batch formats."""
import pytest
import torch
from torch import nn

from nncompress.core.calibration_stats import (
    calibration_layers,
    collect_stats,
    execution_order,
    sequential_apply,
    set_weight_matrix,
    weight_matrix,
)
from nncompress.core.errors import UserError


class Conv1D(nn.Module):
    """Hugging Face GPT-2's Conv1D layout (weight (in, out), y = x @ W + b), without importing transformers."""

    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return x @ self.weight + self.bias


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 3)
        self.ln = nn.LayerNorm(3)
        self.a = nn.Linear(3, 4)
        self.b = Conv1D(4, 3)
        self.c = nn.Linear(4, 2)
        self.head = nn.Linear(3, 10, bias=False)
        self.head.weight = self.emb.weight                     # tied output head: left out by default

    def forward(self, x):
        h = self.ln(x)
        return self.c(torch.relu(self.a(h)) + self.b(h))


def test_statistics_by_hand():
    model = nn.Sequential(nn.Linear(2, 1))
    x1 = torch.tensor([[1.0, -2.0], [3.0, 0.0]])
    x2 = torch.tensor([[0.0, 4.0]])
    stats = collect_stats(model, [x1, x2], keep_tokens=2)["0"]
    assert stats.tokens == 3
    # XᵀX = [[1+9+0, -2+0+0], [-2, 4+0+16]]
    assert stats.xtx.tolist() == [[10.0, -2.0], [-2.0, 20.0]] and stats.xtx.dtype == torch.float64
    assert torch.allclose(stats.hessian, torch.tensor([[10.0, -2.0], [-2.0, 20.0]], dtype=torch.float64) * 2 / 3)
    assert torch.allclose(stats.norm, torch.tensor([10.0, 20.0]).sqrt())
    assert stats.abs_max.tolist() == [3.0, 4.0]
    assert torch.allclose(stats.mean_abs, torch.tensor([4 / 3, 2.0]))
    assert torch.equal(stats.inputs, x1)                      # keep_tokens=2: the first two rows


def test_layers_conv1d_sources_and_tied_head():
    torch.manual_seed(0)
    model = Net().eval()
    assert list(calibration_layers(model)) == ["a", "b", "c"]
    assert weight_matrix(model.b).shape == (4, 3)             # (out, in) view of the (in, out) weight
    stats = collect_stats(model, [torch.randn(5, 3)])
    assert stats["a"].source == "ln" and stats["b"].source == "ln" and stats["c"].source is None
    w = torch.arange(12.0).reshape(4, 3)
    set_weight_matrix(model.b, w)
    assert torch.equal(model.b.weight, w.t())
    with pytest.raises(UserError, match="no linear layer named"):
        calibration_layers(model, ["ln"])


def test_dict_and_pair_batches():
    class Keyword(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, input_ids, scale=1.0):
            return self.fc(input_ids * scale)

    model = Keyword()
    x = torch.ones(3, 2)
    s = collect_stats(model, [{"input_ids": x, "scale": 2.0, "labels": torch.zeros(3)}])["fc"]
    assert s.abs_max.tolist() == [2.0, 2.0]
    s = collect_stats(nn.Sequential(nn.Linear(2, 2)), [(x, torch.zeros(3))])["0"]   # (x, y): y is not an input
    assert s.tokens == 3
    with pytest.raises(UserError, match="no calibration batches"):
        collect_stats(model, [])


def test_sequential_mode_sees_compressed_inputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    x = torch.randn(8, 4)
    assert execution_order(model, x) == ["0", "1"]
    seen = {}

    def zero_layer(name, layer, stats):
        seen[name] = stats.abs_max.clone()
        with torch.no_grad():
            layer.weight.zero_()
            layer.bias.fill_(1.0)

    sequential_apply(model, [x], zero_layer, sequential=True)
    assert seen["1"].tolist() == [1.0, 1.0, 1.0, 1.0]         # layer 1 saw layer 0's compressed output
    model2 = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    dense_out = model2[0](x).detach().abs().amax(0)
    seen.clear()
    sequential_apply(model2, [x], zero_layer, sequential=False)
    assert torch.allclose(seen["1"], dense_out)               # dense mode: the dense model's activations


def test_untied_lm_head_is_left_out_by_default():
    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4)
            self.lm_head = nn.Linear(4, 10)

        def forward(self, x):
            return self.lm_head(self.proj(x))

    assert list(calibration_layers(LM())) == ["proj"]
    assert list(calibration_layers(LM(), ["lm_head"])) == ["lm_head"]


def test_non_finite_inputs_are_refused():
    with pytest.raises(UserError, match="NaN/inf"):
        collect_stats(nn.Sequential(nn.Linear(2, 2)), [torch.tensor([[float("nan"), 1.0]])])
