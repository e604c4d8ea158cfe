"""Dynamic int8 LSTM through ONNX Runtime: the graph really holds the integer LSTM op, outputs stay close to fp32."""
import numpy as np
import onnx
import pytest
import torch
from torch import nn

from nncompress.core.errors import UserError
from nncompress.export.onnx import run_onnx
from nncompress.pruning.rnn import RNNPruner
from nncompress.quantization.rnn_int8 import (float_recurrent_ops, int8_weight_bytes, integer_ops, lstm_to_onnx,
                                              quantize_lstm_dynamic)


class SeqClassifier(nn.Module):
    def __init__(self, cell=nn.LSTM, hidden=32, layers=2):
        super().__init__()
        self.rnn = cell(8, hidden, num_layers=layers, batch_first=True)
        self.fc = nn.Linear(hidden, 10)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.fc(y[:, -1])


def _model(cell=nn.LSTM):
    torch.manual_seed(0)
    return SeqClassifier(cell).eval()


def test_int8_graph_holds_the_integer_lstm_and_stays_close():
    model, x = _model(), torch.randn(16, 8, 8)
    fp32 = lstm_to_onnx(model, x)
    assert float_recurrent_ops(fp32) == {"LSTM": 2} and integer_ops(fp32) == {}
    int8 = quantize_lstm_dynamic(fp32)
    ops = integer_ops(int8)
    assert ops.get("DynamicQuantizeLSTM") == 2 and float_recurrent_ops(int8) == {}  # both layers on integer kernels
    assert any(n.domain == "com.microsoft" and n.op_type == "DynamicQuantizeLSTM" for n in onnx.load_from_string(int8).graph.node)
    # int8 W (4H×in) and R (4H×H) per layer: 128·8 + 128·32 + 128·32 + 128·32 = 13 312 bytes, plus the 32×10 head
    assert int8_weight_bytes(int8) == 128 * 8 + 3 * 128 * 32 + 32 * 10
    with torch.no_grad():
        ref = model(x).numpy()
    out_fp32, out_int8 = run_onnx(fp32, x), run_onnx(int8, x)
    assert np.abs(out_fp32 - ref).max() < 1e-5  # the export itself is exact
    err = np.abs(out_int8 - ref).max() / np.abs(ref).max()
    assert 0 < err < 0.05  # 8-bit weights and activations: close, but not bit-identical (so it did quantize)
    assert len(int8) < 0.5 * len(fp32)  # int8 weights: the file shrinks


def test_pruned_lstm_exports_its_zeros():
    model, x = _model(), torch.randn(4, 8, 8)
    RNNPruner(0.8).prune(model)
    fp32 = lstm_to_onnx(model, x)
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(run_onnx(fp32, x) - ref).max() < 1e-5  # masks baked in: the ONNX model is the pruned one
    w = [onnx.numpy_helper.to_array(t) for t in onnx.load_from_string(fp32).graph.initializer if t.name.startswith("onnx::LSTM")]
    big = [a for a in w if a.ndim == 3 and a.shape[1] == 128]  # W and R of both layers (num_directions, 4H, ·)
    assert big and all(abs((a == 0).mean() - 0.8) < 0.02 for a in big)


def test_refusals():
    x = torch.randn(2, 8, 8)
    with pytest.raises(UserError, match="no nn.LSTM"):
        lstm_to_onnx(_model(nn.GRU), x)
    with pytest.raises(UserError, match="op_types"):
        quantize_lstm_dynamic(b"", op_types=("Conv",))
