"""SmoothQuant: scales by hand, folding keeps the fp32 output, W8A8 error drops on outlier channels, the α
search picks the caller's best, per-token codes by hand, int8 KV cache per head, a tiny GPT-2."""
import copy

import pytest
import torch
from torch import nn

from nncompress.core.errors import UserError
from nncompress.quantization.smoothquant import (
    KVCacheInt8,
    W8A8Linear,
    kv_cache_int8,
    quantize_per_token,
    quantize_w8a8,
    search_alpha,
    smooth,
    smoothing_scales,
    smoothquant,
)

OUTLIERS = [2, 9, 30]


class Block(nn.Module):
    """LayerNorm feeding two linears (like q/k/v), then a linear fed by an activation (nothing to fold into)."""

    def __init__(self):
        super().__init__()
        self.ln = nn.LayerNorm(64)
        self.a, self.b = nn.Linear(64, 64), nn.Linear(64, 64)
        self.c = nn.Linear(64, 16)
        with torch.no_grad():
            self.ln.weight[OUTLIERS] = 40.0
            self.ln.bias.normal_()

    def forward(self, x):
        h = self.ln(x)
        return self.c(torch.relu(self.a(h)) + self.b(h))


def test_smoothing_scales_by_hand():
    s = smoothing_scales(torch.tensor([4.0, 1.0]), torch.tensor([1.0, 4.0]), 0.5)
    assert torch.allclose(s, torch.tensor([2.0, 0.5]))               # √4/√1, √1/√4
    assert torch.allclose(smoothing_scales(torch.tensor([4.0]), torch.tensor([2.0]), 1.0), torch.tensor([4.0]))
    with pytest.raises(UserError, match="alpha"):
        smoothing_scales(torch.ones(2), torch.ones(2), 1.5)


def test_folding_keeps_fp32_output():
    torch.manual_seed(0)
    model = Block().eval()
    x = torch.randn(32, 64)
    ref = model(x)
    ln_before = model.ln.weight.clone()
    scales = smooth(model, [x], alpha=0.5)
    assert set(scales) == {"a", "b"} and torch.equal(scales["a"], scales["b"])     # c's input has no norm
    assert torch.allclose(model.ln.weight, ln_before / scales["a"])
    assert torch.allclose(model(x), ref, atol=1e-5, rtol=1e-5)


def test_smoothing_reduces_w8a8_error_on_outlier_channels():
    torch.manual_seed(0)
    model = Block().eval()
    calib, test = [torch.randn(64, 64) for _ in range(2)], torch.randn(64, 64)
    ref = model(test)
    plain = quantize_w8a8(copy.deepcopy(model))
    sq = smoothquant(copy.deepcopy(model), calib, alpha=0.5)
    assert isinstance(sq.a, W8A8Linear) and isinstance(sq.c, W8A8Linear)
    with torch.no_grad():
        assert (sq(test) - ref).norm() < 0.7 * (plain(test) - ref).norm()


def test_search_alpha_returns_the_best_validation_score():
    torch.manual_seed(0)
    model = Block().eval()
    calib, val = [torch.randn(64, 64)], torch.randn(64, 64)
    ref = model(val)

    def val_error(m):
        with torch.no_grad():
            return float((m(val) - ref).pow(2).mean())

    best, scores = search_alpha(model, calib, val_error, alphas=(0.0, 0.5, 0.9))
    assert best == min(scores, key=scores.get) and len(set(scores.values())) == 3
    assert scores[0.0] > scores[best]                             # α = 0 is (almost) no smoothing: worse here
    assert isinstance(model.a, nn.Linear)                         # the caller's model is untouched


def test_per_token_codes_by_hand():
    q, s = quantize_per_token(torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]]))
    assert torch.allclose(s[0], torch.tensor([2 / 127]))
    assert q[0].tolist() == [64.0, -127.0, 32.0]                  # 63.5 → 64 (half to even), 31.75 → 32
    assert q[1].tolist() == [0.0, 0.0, 0.0]


def test_w8a8_linear_int_mm_matches_simulation():
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    x = torch.randn(40, 64)
    sim, real = W8A8Linear(lin.weight, lin.bias), W8A8Linear(lin.weight, lin.bias, int_mm=True)
    assert torch.allclose(sim(x), real(x), atol=1e-5)
    assert (sim(x) - lin(x)).abs().max() < 0.05
    assert sim.nbytes == 64 * 32 + 32 * 4 + 32 * 4


def test_kv_cache_int8_per_token_per_head():
    torch.manual_seed(0)
    proj = nn.Linear(8, 12)                                      # fused [q | k | v], 4 features each, 2 heads of 2
    wrapped = KVCacheInt8(proj, n_heads=2, slices=[(4, 8), (8, 12)])
    x = torch.randn(3, 8)
    y, yq = proj(x), wrapped(x)
    assert torch.equal(yq[:, :4], y[:, :4])                       # queries untouched
    head = y[:, 4:6]                                              # first key head: its own per-token scale
    s = head.abs().amax(-1, keepdim=True) / 127
    assert torch.allclose(yq[:, 4:6], torch.round(head / s) * s, atol=1e-6)
    with pytest.raises(UserError, match="heads"):
        KVCacheInt8(proj, n_heads=3, slices=[(4, 8)])


def test_tiny_gpt2_smoothquant_and_kv_int8():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=128, n_positions=64)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    calib = [{"input_ids": torch.randint(0, 128, (4, 32))}]
    test = torch.randint(0, 128, (4, 32))
    with torch.no_grad():
        ref = model(input_ids=test).logits
    q = smoothquant(copy.deepcopy(model), calib, alpha=0.5)      # ln_1 → c_attn and ln_2 → c_fc are found and folded
    for block, dense in zip(q.transformer.h, model.transformer.h):
        assert not torch.equal(block.ln_1.weight, dense.ln_1.weight) and not torch.equal(block.ln_2.weight, dense.ln_2.weight)
    assert torch.equal(q.transformer.ln_f.weight, model.transformer.ln_f.weight)   # feeds the tied head: left alone
    kv_cache_int8(q, n_heads=2)
    assert isinstance(q.transformer.h[0].attn.c_attn, KVCacheInt8)
    with torch.no_grad():
        out = q(input_ids=test).logits
    assert float((out - ref).norm() / ref.norm()) < 0.05


def test_linear_pairs_fold_into_the_previous_linear_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Linear(32, 8)).eval()
    x = torch.randn(20, 16)
    ref = model(x)
    scales = smooth(model, [x], alpha=0.5, linear_pairs={"1": "0"})
    assert set(scales) == {"1"}
    assert torch.allclose(model(x), ref, atol=1e-5, rtol=1e-5)
