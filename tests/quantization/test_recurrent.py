"""Quantized LSTM / GRU by module swap: int8 gate GEMMs vs the simulation and vs the float layer, state, persistence."""
import pytest
import torch
from torch import nn

from nncompress.core.errors import UserError
from nncompress.quantization.persist import load_quantized, save_quantized_model
from nncompress.quantization.recurrent import QuantizedRNN
from nncompress.quantization.swap import DynamicInt8Config, StaticInt8Config, WeightOnlyConfig, quantize_


def _rnns():
    return [nn.LSTM(12, 16), nn.LSTM(12, 16, num_layers=2, batch_first=True, bidirectional=True), nn.GRU(12, 16),
            nn.GRU(12, 16, num_layers=2, bidirectional=True, bias=False)]


@pytest.mark.parametrize("idx", range(4))
def test_int8_rnn_matches_simulation_and_float(idx):
    torch.manual_seed(idx)
    rnn = _rnns()[idx].eval()
    x = torch.randn(5, 7, 12)  # (L, N, in) or (N, L, in) with batch_first
    q = quantize_(rnn, DynamicInt8Config())
    assert isinstance(q, QuantizedRNN) and q.act_mode == "dynamic"
    with torch.no_grad():
        (ref, ref_h), (out, h), (sim, sim_h) = rnn(x), q(x), q.simulate(x)
    assert out.shape == ref.shape
    if isinstance(ref_h, tuple):
        assert all(a.shape == b.shape for a, b in zip(h, ref_h))
        h, sim_h = h[0], sim_h[0]
    assert float((out - sim).abs().max()) < 1e-4  # same codes: kernel vs simulation differ by float rounding only
    assert float((out - ref).abs().max()) < 0.03  # gates in (−1, 1): 8-bit weights and activations stay within a few %
    assert float((h - sim_h).abs().max()) < 1e-4


def test_rnn_hidden_state_and_unbatched_input_follow_torch():
    torch.manual_seed(0)
    rnn = nn.LSTM(6, 8, num_layers=2).eval()
    q = quantize_(nn.Sequential(rnn), WeightOnlyConfig(8))[0]
    x, h0, c0 = torch.randn(4, 6), torch.randn(2, 8), torch.randn(2, 8)  # unbatched (L, in), state (layers, H)
    with torch.no_grad():
        (ref, (rh, rc)), (out, (h, c)) = rnn(x, (h0, c0)), q(x, (h0, c0))
    assert out.shape == ref.shape == (4, 8) and h.shape == rh.shape and c.shape == rc.shape
    assert float((out - ref).abs().max()) < 0.02


def test_rnn_in_a_model_static_config_persists(tmp_path):
    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.rnn, self.head = nn.Embedding(20, 12), nn.GRU(12, 16, batch_first=True), nn.Linear(16, 5)

        def forward(self, ids):
            return self.head(self.rnn(self.emb(ids))[0])

    torch.manual_seed(0)
    ids = torch.randint(0, 20, (3, 9))
    q = quantize_(Tagger().eval(), StaticInt8Config(), calib_data=[ids])
    assert q.quant_layers == ["emb", "rnn", "head"] and q.rnn.act_mode == "dynamic"  # recurrent: dynamic even in static mode
    assert q.state_dict()["rnn.weights.weight_hh_l0.codes"].dtype == torch.int8
    save_quantized_model(q, tmp_path / "t.safetensors")
    back = load_quantized(Tagger, tmp_path / "t.safetensors")
    assert torch.equal(back(ids), q(ids))


def test_rnn_refusals():
    with pytest.warns(UserWarning, match=r"layer 'rnn' left in float: LSTM with proj_size=4"):
        quantize_(_holder(nn.LSTM(6, 8, proj_size=4)), DynamicInt8Config())
    q = quantize_(nn.GRU(4, 4), DynamicInt8Config())
    packed = nn.utils.rnn.pack_padded_sequence(torch.randn(3, 2, 4), [3, 2])
    with pytest.raises(UserError, match="PackedSequence"):
        q(packed)


def _holder(rnn):
    m = nn.Module()
    m.rnn = rnn
    return m
