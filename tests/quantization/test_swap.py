"""Eager module-swap quantization (no graph): kernels vs simulation, untraceable models, ties, embeddings, refusals."""
import copy
import warnings

import pytest
import torch
import torch.fx as fx
from torch import nn

from nncompress.core.errors import UserError
from nncompress.quantization.modules import (QuantizedConv, QuantizedEmbedding, QuantizedLinear, QuantizedWeight, pack_signed_int4,
                                             unpack_signed_int4)
from nncompress.quantization.swap import DynamicInt8Config, StaticInt8Config, WeightOnlyConfig, quantize_, weight_storage_bytes


def test_static_linear_hand_worked():
    """w = [1.27, −0.5] → s_w = 1.27/127 = 0.01, codes [127, −50]; x = [1.0, −0.5] with s_x = 0.1, z_x = 10 → codes [20, 5];
    y = 0.1·0.01·((20−10)·127 + (5−10)·(−50)) + 0.1 = 0.001·1520 + 0.1 = 1.62."""
    lin = nn.Linear(2, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.27, -0.5]]))
        lin.bias.fill_(0.1)
    q = QuantizedLinear.from_float(lin, "static", act_qrange=(0, 255))
    q.set_act_qparams(0.1, 10)
    assert q.weight_q.int_codes().tolist() == [[127, -50]]
    assert q.weight_q.scale.item() == pytest.approx(0.01)
    x = torch.tensor([[1.0, -0.5]])
    assert q(x).item() == pytest.approx(1.62, abs=1e-6)
    assert q.simulate(x).item() == pytest.approx(1.62, abs=1e-6)


def test_dynamic_linear_per_token_hand_worked():
    """Row [2.54, −1.27] → s = 2.54/127 = 0.02, codes [127, −64 (−63.5 rounds to even)];
    w = [[1, 1]] → codes [127, 127], s_w = 1/127."""
    lin = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    q = QuantizedLinear.from_float(lin, "dynamic")
    y = q(torch.tensor([[2.54, -1.27]]))
    assert y.item() == pytest.approx(0.02 * (1 / 127) * (127 * 127 + (-64) * 127), rel=1e-6)  # = 0.02·63 = 1.26


def _close_to_sim(q, x, steps=1.0):
    """Kernel output vs the fake-quant simulation: equal up to float summation rounding, far below one output step."""
    with torch.no_grad():
        real, sim = q(x), q.simulate(x)
    assert real.shape == sim.shape
    tol = 1e-5 * float(sim.abs().max()) * steps
    assert float((real - sim).abs().max()) <= tol


@pytest.mark.parametrize("act", ["dynamic", "static"])
@pytest.mark.parametrize("layer", [
    nn.Conv2d(3, 8, 3, padding=1, stride=2), nn.Conv2d(4, 6, (3, 2), padding=(2, 1), dilation=2, bias=False),
    nn.Conv2d(6, 6, 3, padding=1, groups=3), nn.Conv2d(6, 6, 3, padding=1, groups=6), nn.Conv1d(5, 7, 3, padding=2, stride=2)])
def test_conv_kernels_match_simulation(layer, act):
    torch.manual_seed(0)
    x = torch.randn(2, layer.in_channels, *((11, 9) if isinstance(layer, nn.Conv2d) else (13,))) + 0.3
    q = quantize_(nn.Sequential(layer), DynamicInt8Config() if act == "dynamic" else StaticInt8Config(), calib_data=[x])[0]
    assert isinstance(q, QuantizedConv)
    _close_to_sim(q, x)
    with torch.no_grad():  # and the quantized layer is close to the float one (8-bit: well under 5 % of the range)
        assert float((q(x) - layer(x)).abs().max()) < 0.05 * float(layer(x).abs().max())


@pytest.mark.parametrize("cfg", [DynamicInt8Config(), StaticInt8Config(), StaticInt8Config(reduce_range=True),
                                 StaticInt8Config("mse", granularity="tensor")])
def test_linear_kernels_match_simulation(cfg):
    torch.manual_seed(1)
    lin = nn.Linear(40, 24)
    x = torch.randn(3, 5, 40)
    q = quantize_(lin, cfg, calib_data=[x])
    assert isinstance(q, QuantizedLinear)  # a bare layer is swapped and returned
    _close_to_sim(q, x)


class Untraceable(nn.Module):
    """Data-dependent Python control flow: fx cannot trace it (a Proxy has no bool) and the number of steps depends on values."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(30, 16)
        self.conv = nn.Conv1d(16, 16, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 5)

    def forward(self, input_ids, attention_mask=None):
        steps = int(input_ids.float().mean().item()) % 3 + 1
        h = self.emb(input_ids)
        for _ in range(steps):
            h = h + torch.relu(self.conv(h.transpose(1, 2))).transpose(1, 2)
        if h.sum() > 0:
            h = h * 0.5
        if attention_mask is not None:
            h = h * attention_mask[..., None]
        return self.fc2(torch.relu(self.fc1(h.mean(1))))


@pytest.mark.parametrize("cfg", [DynamicInt8Config(), StaticInt8Config(), WeightOnlyConfig(8)])
def test_untraceable_model_quantized_by_swap(cfg):
    torch.manual_seed(0)
    model = Untraceable().eval()
    with pytest.raises(Exception):
        fx.symbolic_trace(model)
    ids = torch.randint(0, 30, (8, 12))
    if isinstance(cfg, StaticInt8Config):  # torch.export cannot take it either: the loop count is a tensor's value
        with pytest.raises(Exception):
            torch.export.export(model, (ids,), {"attention_mask": torch.ones(8, 12)}, strict=False)
    batches = [{"input_ids": ids[i:i + 4], "attention_mask": torch.ones(4, 12), "labels": torch.zeros(4, dtype=torch.long)}
               for i in (0, 4)]  # tokenizer-style dicts; labels are not passed to the model
    with torch.no_grad():
        ref = model(ids, torch.ones(8, 12))
    q = quantize_(copy.deepcopy(model), cfg, calib_data=batches)
    assert q.quant_layers == ["emb", "conv", "fc1", "fc2"]
    assert isinstance(q.fc1, QuantizedLinear) and isinstance(q.conv, QuantizedConv) and isinstance(q.emb, QuantizedEmbedding)
    with torch.no_grad():
        out = q(ids, torch.ones(8, 12))
    assert float((out - ref).abs().max()) < 0.05 * float(ref.abs().max())
    sd = q.state_dict()
    assert sd["fc1.weight_q.codes"].dtype == torch.int8 and "fc1.weight" not in sd
    if isinstance(cfg, StaticInt8Config):
        assert sd["fc1.act_scale"].item() > 0 and sd["fc1.act_zero_point"].dtype == torch.int32


def test_static_calibration_reads_hooks_not_a_graph():
    """The calibrated input range of a layer is the min/max of what reached it: fc sees relu(x) ∈ [0, 3] → s = 3/255, z = 0."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(torch.relu(x)) if x.sum() > -100 else x

    x = torch.tensor([[3.0, -1.0], [0.5, 2.0]])
    q = quantize_(M(), StaticInt8Config(), calib_data=[x])
    assert q.fc.act_scale.item() == pytest.approx(3 / 255) and q.fc.act_zero_point.item() == 0


def test_tied_embedding_and_head_share_one_quantized_weight():
    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(40, 16)
            self.lm_head = nn.Linear(16, 40, bias=False)
            self.lm_head.weight = self.wte.weight

        def forward(self, ids):
            return self.lm_head(self.wte(ids))

    ids = torch.randint(0, 40, (2, 7))
    q = quantize_(LM(), DynamicInt8Config(), calib_data=[ids])
    assert q.lm_head.weight_q is q.wte.weight_q
    q2 = copy.deepcopy(q)
    assert q2.lm_head.weight_q is q2.wte.weight_q
    assert weight_storage_bytes(q) == 40 * 16 + 40 * 4  # counted once
    with pytest.warns(UserWarning, match=r"layer 'lm_head' left in float: its weight is tied to 'wte'"):
        q3 = quantize_(LM(), StaticInt8Config(granularity="tensor"), calib_data=[ids])
    assert isinstance(q3.lm_head, nn.Linear) and isinstance(q3.wte, QuantizedEmbedding)


def test_embedding_int4_hand_worked_and_packed():
    """Row [0.7, −0.35, 0.1, 0]: s = 0.7/7 = 0.1, codes [7, −4 (−3.5 to even), 1, 0] → [0.7, −0.4, 0.1, 0],
    two codes per byte."""
    emb = nn.Embedding(2, 4)
    with torch.no_grad():
        emb.weight.copy_(torch.tensor([[0.7, -0.35, 0.1, 0.0], [1.0, 1.0, 1.0, 1.0]]))
    q = quantize_(emb, WeightOnlyConfig(4))
    assert isinstance(q, QuantizedEmbedding) and q.weight_q.codes.dtype == torch.uint8 and q.weight_q.codes.shape == (2, 2)
    out = q(torch.tensor([[0, 1]]))
    assert torch.allclose(out[0, 0], torch.tensor([0.7, -0.4, 0.1, 0.0]), atol=1e-6)
    assert torch.allclose(out[0, 1], torch.ones(4))
    assert torch.equal(q(torch.tensor([1, 0])), q.simulate(torch.tensor([1, 0])))


def test_embedding_int8_rowwise_within_half_step():
    torch.manual_seed(0)
    emb = nn.Embedding(100, 24)
    q = quantize_(copy.deepcopy(emb), DynamicInt8Config())
    ids = torch.arange(100)
    step = emb.weight.detach().abs().amax(1, keepdim=True) / 127
    assert bool(((q(ids) - emb(ids)).abs() <= step / 2 + 1e-7).all())


def test_int4_pack_hand_worked():
    assert pack_signed_int4(torch.tensor([[-8, 7]])).tolist() == [[0xF0]]  # −8 + 8 = 0 low, 7 + 8 = 15 high
    assert pack_signed_int4(torch.tensor([-7, 0, 1])).tolist() == [1 | (8 << 4), 9]  # odd length: a pad nibble (dropped on unpacking)
    codes = torch.randint(-8, 8, (3, 7))
    assert torch.equal(unpack_signed_int4(pack_signed_int4(codes), 7), codes.to(torch.int8))
    with pytest.raises(UserError, match="int4 packing"):
        pack_signed_int4(torch.tensor([9]))


def test_weight_only_group_int4_error_within_half_step():
    torch.manual_seed(0)
    lin = nn.Linear(64, 8)
    qw = QuantizedWeight.from_float(lin.weight, 4, "group", 16)
    assert qw.codes.numel() == 8 * 32 and qw.scale.shape == (8, 4)
    step = lin.weight.detach().reshape(8, 4, 16).abs().amax(-1, keepdim=True) / 7
    err = (qw.dequantize() - lin.weight.detach()).reshape(8, 4, 16).abs()
    assert bool((err <= step / 2 + 1e-7).all())


def test_refusals_name_the_module():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.RNN(4, 4, batch_first=True)
            self.pad = nn.Conv1d(4, 4, 3, padding=1, padding_mode="circular")
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.pad(self.rnn(x)[0].transpose(1, 2)).mean(2))

    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        q = quantize_(M(), DynamicInt8Config())
    msgs = sorted(str(w.message) for w in rec)
    assert len(msgs) == 2 and all("\n" not in m for m in msgs)
    assert msgs[0].startswith("quantization: layer 'pad' left in float: padding_mode='circular'")
    assert msgs[1] == "quantization: layer 'rnn' left in float: no quantized module for RNN (vanilla; LSTM and GRU are quantized)"
    assert q.quant_layers == ["fc"] and set(q.quant_skipped) == {"rnn", "pad"}
    q(torch.randn(2, 5, 4))
    with pytest.raises(UserError, match="calibration data"):
        quantize_(nn.Linear(2, 2), StaticInt8Config())
    with pytest.raises(UserError, match="skip names"):
        quantize_(M(), DynamicInt8Config(), skip=("nope",))
    with pytest.raises(UserError, match="unknown calibration"):
        quantize_(nn.Linear(2, 2), StaticInt8Config("best"), calib_data=[torch.randn(2, 2)])
    with pytest.raises(UserError, match="embedding_bits"):
        quantize_(nn.Linear(2, 2), DynamicInt8Config(embedding_bits=3))


def test_fx_quantize_dynamic_on_a_bare_linear_quantizes_it():
    """Issue 13: quantize_dynamic(nn.Linear(...)) used to trace F.linear, find no layer and return the float layer."""
    from nncompress.quantization import compare_with_simulation, quantize_dynamic, to_int8_kernels

    torch.manual_seed(0)
    lin = nn.Linear(16, 4)
    x = torch.randn(8, 16)
    gm = quantize_dynamic(lin, x)
    assert gm.quant_layers == ["layer"]
    real = to_int8_kernels(gm)
    assert isinstance(real.get_submodule("layer"), QuantizedLinear)
    with torch.no_grad():
        assert float((gm(x) - lin(x)).abs().max()) < 0.02 * float(lin(x).abs().max())
    assert compare_with_simulation(gm, real, x)["max_abs_error"] < 1e-5
