"""GPT-2's Conv1D layers become nn.Linear with identical outputs, so Linear methods reach them (issue 13)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from nncompress.core.conv1d import conv1d_layers, is_hf_conv1d, linearize_conv1d


class Conv1D(nn.Module):
    """The transformers layout written out by hand: y = x @ W + b, W of shape (in, out)."""

    def __init__(self, nf: int, nx: int):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.arange(nx * nf, dtype=torch.float32).reshape(nx, nf) / 10)
        self.bias = nn.Parameter(torch.tensor([1.0, -1.0, 0.5][:nf]))

    def forward(self, x):
        return x @ self.weight + self.bias


def test_hand_worked_conv1d_becomes_the_transposed_linear():
    layer = nn.Sequential(Conv1D(nf=3, nx=2))
    x = torch.tensor([[1.0, 2.0]])
    # W = [[0, .1, .2], [.3, .4, .5]]: x @ W = [0.6, 0.9, 1.2], plus b = [1.6, -0.1, 1.7]
    assert torch.allclose(layer(x), torch.tensor([[1.6, -0.1, 1.7]]))
    assert linearize_conv1d(layer) == ["0"]
    assert isinstance(layer[0], nn.Linear) and layer[0].weight.shape == (3, 2)
    assert torch.allclose(layer(x), torch.tensor([[1.6, -0.1, 1.7]]))


def test_gpt2_every_projection_is_linear_and_logits_are_unchanged():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16)).eval()
    ids = torch.randint(0, 64, (2, 10))
    before = model(ids).logits
    names = conv1d_layers(model)
    assert len(names) == 2 * 4 and all(is_hf_conv1d(model.get_submodule(n)) for n in names)
    assert linearize_conv1d(model) == names
    assert conv1d_layers(model) == []
    assert torch.allclose(model(ids).logits, before, atol=1e-5)
    assert model.lm_head.weight is model.transformer.wte.weight  # the tie is untouched
