"""Per-layer bit sensitivity runs on any batch format the model seam understands (issue 13: calibration must
not refuse a tokenizer's dict)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from nncompress.quantization.mixed_precision import layer_sensitivity


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, left, right):
        return self.a(left) + self.b(right)


def test_dict_batches_give_a_sensitivity_per_layer_and_bits():
    torch.manual_seed(0)
    model = TwoInputs().eval()
    data = [{"left": torch.randn(8, 4), "right": torch.randn(8, 4), "labels": torch.zeros(8, dtype=torch.long)}]
    sens = layer_sensitivity(model, data, bits_options=(2, 8), num_batches=1)
    assert set(sens) == {"a", "b"}
    for per_bits in sens.values():
        assert per_bits[2] > per_bits[8] >= -1e-6  # 2-bit weights move the outputs more than 8-bit ones


def test_sequence_logits_are_one_distribution_per_token():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=8)).eval()
    from nncompress.core.conv1d import linearize_conv1d

    linearize_conv1d(gpt2)
    sens = layer_sensitivity(gpt2, [{"input_ids": torch.randint(0, 32, (2, 8))}], bits_options=(2, 8), num_batches=1)
    assert "lm_head" in sens and all(v[2] >= v[8] for v in sens.values())
