"""AWQ: α = 0 is RTN, the search beats RTN on held-out inputs with outlier channels, folding into a LayerNorm
keeps the fp32 function, explicit input scales where nothing can absorb them, clip search."""
import copy

import pytest
import torch
from torch import nn

from nncompress.core.errors import UserError
from nncompress.quantization.awq import InputScaled, awq, awq_clip_search, awq_scale_search, fake_quantize_weight
from nncompress.quantization.weight_only import WeightOnlyLinear, quantize_weight_only

OUTLIERS = [3, 17, 40, 77]


def outlier_inputs(tokens=512, dim=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, dim, generator=g)
    x[:, OUTLIERS] *= 25.0                                    # a few salient channels, as in LLM activations
    return x


W = torch.randn(64, 128, generator=torch.Generator().manual_seed(1)) * 0.05


def out_error(w_hat, s, x):
    return float((x / s @ w_hat.t() - x @ W.t()).pow(2).mean())


def test_alpha_zero_is_rtn_and_search_beats_rtn_on_held_out_data():
    x = outlier_inputs()
    s, alpha, errors = awq_scale_search([W], x, x.abs().mean(0), bits=3, group_size=32, grid=10)
    assert errors[0.0] == pytest.approx(float((x @ fake_quantize_weight(W, 3, 32, False).t() - x @ W.t()).pow(2).mean()))
    assert alpha > 0 and errors[alpha] == min(errors.values())
    held = outlier_inputs(seed=3)
    rtn = out_error(fake_quantize_weight(W, 3, 32, False), torch.ones(128), held)
    awq_err = out_error(fake_quantize_weight(W * s, 3, 32, False), s, held)
    assert awq_err < 0.7 * rtn
    assert bool((s[OUTLIERS] > s.median()).all())                 # salient channels are scaled up


def test_clip_search_lowers_output_error():
    x = outlier_inputs()
    r = awq_clip_search(W, x, bits=3, group_size=32, grid=10)
    assert r.shape == (64, 4) and bool((r <= 1).all()) and bool((r < 1).any())
    plain = float((x @ (W - fake_quantize_weight(W, 3, 32, False)).t()).pow(2).mean())
    clipped = float((x @ (W - fake_quantize_weight(W, 3, 32, False, r)).t()).pow(2).mean())
    assert clipped < plain


class NormThenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln = nn.LayerNorm(128)
        self.q, self.k = nn.Linear(128, 64), nn.Linear(128, 64)
        self.out = nn.Linear(64, 32)
        with torch.no_grad():
            self.ln.weight[OUTLIERS] = 25.0                      # the norm's output carries the outlier channels

    def forward(self, x):
        h = self.ln(x)
        return self.out(torch.relu(self.q(h) * self.k(h)))


def test_awq_on_a_model_folds_into_the_norm_and_beats_rtn():
    torch.manual_seed(0)
    model = NormThenLinear().eval()
    calib, test = [torch.randn(256, 128) for _ in range(2)], torch.randn(256, 128)
    ref = model(test)
    q = copy.deepcopy(model)
    alphas = awq(q, calib, bits=3, group_size=32, grid=10)
    assert set(alphas) == {"q", "k", "out"} and alphas["q"] == alphas["k"]     # one shared scale for q and k
    assert isinstance(q.q, WeightOnlyLinear) and isinstance(q.out, InputScaled)  # out's input has no norm to fold into
    assert not torch.equal(q.ln.weight, model.ln.weight)
    rtn = quantize_weight_only(copy.deepcopy(model), 3, 32)
    with torch.no_grad():
        assert (q(test) - ref).norm() < 0.8 * (rtn(test) - ref).norm()


def test_bad_inputs():
    with pytest.raises(UserError, match="bits"):
        awq(NormThenLinear(), [torch.randn(4, 128)], bits=9)
    with pytest.raises(UserError, match="grid"):
        awq_scale_search([W], outlier_inputs(), torch.ones(128), grid=0)


def test_tiny_gpt2_awq_folds_into_layernorms(tiny_gpt2):
    model, calib, test, ref = tiny_gpt2
    q = copy.deepcopy(model)
    awq(q, calib, bits=4, group_size=32, grid=5)
    block = q.transformer.h[0]
    assert isinstance(block.attn.c_attn, WeightOnlyLinear) and isinstance(block.mlp.c_fc, WeightOnlyLinear)  # folded into ln_1/ln_2
    assert isinstance(block.attn.c_proj, InputScaled) and isinstance(block.mlp.c_proj, InputScaled)
    with torch.no_grad():
        assert float((q(input_ids=test).logits - ref).norm() / ref.norm()) < 0.1


def test_linear_pairs_fold_into_the_previous_linear():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.Linear(64, 16)).eval()
    with torch.no_grad():
        model[0].weight[[1, 5, 9]] *= 30                         # outlier output channels = outlier inputs of layer 1
        model[0].bias[[1, 5, 9]] += 5
    calib, test = [torch.randn(256, 32) for _ in range(2)], torch.randn(256, 32)
    ref = model(test)
    q = copy.deepcopy(model)
    awq(q, calib, bits=4, group_size=32, grid=10, linear_pairs={"1": "0"})
    assert isinstance(q[1], WeightOnlyLinear)                   # its scale went into layer 0's output rows
    assert isinstance(q[0], InputScaled)                        # layer 0's own input has no producer to fold into
    rtn = quantize_weight_only(copy.deepcopy(model), 4, 32)
    with torch.no_grad():
        assert (q(test) - ref).norm() < (rtn(test) - ref).norm()
