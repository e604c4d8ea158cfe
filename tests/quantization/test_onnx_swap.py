"""int8 ONNX export of swap-quantized models (`quantization.onnx_swap`, issues 13/14): integer operators really in
the graph, hand-worked outputs, ORT against our eager int8 modules and against fp32 on tiny Hugging Face
BERT / DistilBERT / RoBERTa / GPT-2 / ViT run at another batch and sequence length than exported."""
import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from nncompress.core.errors import UserError
from nncompress.export.onnx import ort_session, to_onnx
from nncompress.quantization import (DynamicInt8Config, QuantizedLinear, StaticInt8Config, WeightOnlyConfig,
                                     quantize_, to_onnx_int8)
from nncompress.quantization.onnx_swap import integer_op_counts

transformers = pytest.importorskip("transformers")

from nncompress.core.conv1d import linearize_conv1d  # noqa: E402


def _run(blob: bytes, feed: dict) -> np.ndarray:
    sess = ort_session(blob, threads=1)
    return sess.run(None, {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in feed.items()})[0]


def _cos(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _hand_layer() -> QuantizedLinear:
    """W = [[1, 0], [0, 2]] → per-channel scales (1/127, 2/127), codes [[127, 0], [0, 127]]; no bias."""
    layer = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    return quantize_(layer, DynamicInt8Config())


@pytest.mark.parametrize("acts, expected", [
    # per token: s_x = 1/127, codes round(63.5) = 64 (half to even), −127 → y = (64/127, −127·127·2/127²) = (0.50394, −2)
    ("per_token", [64 / 127, -2.0]),
    # DynamicQuantizeLinear: range [−1, 0.5] → s = 1.5/255, z = 170, codes (255, 0) → y = (85·1.5/255, −170·2·1.5/255) = (0.5, −2)
    ("per_tensor", [0.5, -2.0]),
])
def test_bare_linear_hand_worked(acts, expected):
    q = _hand_layer()
    assert isinstance(q, QuantizedLinear) and torch.equal(q.weight_q.codes, torch.tensor([[127, 0], [0, 127]], dtype=torch.int8))
    blob = to_onnx_int8(q, torch.zeros(1, 2), dynamic_activations=acts)
    counts = integer_op_counts(blob)
    assert counts["MatMulInteger"] == 1 and counts["DynamicQuantizeLinear"] == (acts == "per_tensor")
    y = _run(blob, {"input": np.array([[0.5, -1.0]], np.float32)})
    np.testing.assert_allclose(y[0], expected, rtol=1e-6, atol=1e-6)


def test_per_token_codes_equal_eager_over_six_decades():
    """Row scales from 1e-3 to 1e3 and all-zero rows (scale floored at ε): the graph's per-axis QuantizeLinear gives
    the eager clamp(round(x / s), ±127) codes, so ORT equals the eager kernel to float rounding on every row."""
    torch.manual_seed(0)
    q = quantize_(nn.Linear(96, 16), DynamicInt8Config())
    x = (torch.randn(6, 200, 96) * torch.logspace(-3, 3, 6)[:, None, None]).reshape(1200, 96)
    x[:3] = 0
    with torch.no_grad():
        ref = q(x).numpy()
    y = _run(to_onnx_int8(q, x[:2]), {"input": x})
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-7 * float(np.abs(ref).max()))


def test_weights_are_int8_codes_not_floats():
    q = _hand_layer()
    proto = onnx.load_from_string(to_onnx_int8(q, torch.zeros(1, 2)))
    ints = [onnx.numpy_helper.to_array(a.t) for n in proto.graph.node if n.op_type == "Constant" for a in n.attribute
            if a.name == "value" and a.t.data_type == onnx.TensorProto.INT8]
    assert any(t.shape == (2, 2) and t.tolist() == [[127, 0], [0, 127]] for t in ints)  # [K, N] = our codes transposed


def _mlp_and_convnet():
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 3, padding=1)
            self.c2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2)
            self.c3 = nn.Conv1d(8, 4, 3, padding=1)
            self.fc = nn.Linear(16, 5)

        def forward(self, x):
            y = self.c2(torch.relu(self.c1(x)))
            return self.fc(self.c3(y.flatten(2)))

    return Net().eval()


@pytest.mark.parametrize("cfg", [DynamicInt8Config(), StaticInt8Config(), StaticInt8Config(act_bits=6)])
def test_convnet_integer_ops_match_eager(cfg):
    """Padding with the zero point, grouped and 1-d convolutions, static and per-sample dynamic activations: ORT
    computes the same integers as our eager kernels, so the outputs agree to float rounding."""
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    q = quantize_(_mlp_and_convnet(), cfg, calib_data=[x])
    blob = to_onnx_int8(q, x[:2])
    counts = integer_op_counts(blob)
    assert counts["ConvInteger"] == 3 and counts["MatMulInteger"] == 1
    assert counts["QuantizeLinear"] == 4  # calibrated (s_x, z_x), or the per-sample / per-token scales computed in the graph
    with torch.no_grad():
        ref = q(x).numpy()
    y = _run(blob, {"input": x})
    assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("cfg, contrib, op", [(WeightOnlyConfig(bits=4, group_size=16), True, "MatMulNBits"),
                                              (WeightOnlyConfig(bits=4, group_size=16), False, None),
                                              (WeightOnlyConfig(bits=8), True, None)])
def test_weight_only(cfg, contrib, op):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(40, 32), nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32)).eval()
    q = quantize_(model, cfg)
    blob = to_onnx_int8(q, torch.randint(0, 40, (2, 5)), ort_contrib_ops=contrib)
    assert any(o.domain == "com.microsoft" for o in onnx.load_from_string(blob).opset_import) == (op is not None)
    ids = torch.randint(0, 40, (3, 11), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = q(ids).numpy()
    y = _run(blob, {"input": ids})
    assert y.shape == (3, 11, 32) and np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()
    counts = integer_op_counts(blob)
    assert counts["Gather"] >= 2  # codes and row scales gathered, only the looked-up rows dequantized
    assert counts["MatMulNBits"] == (2 if op else 0)


def _hf(name: str):
    torch.manual_seed(0)
    kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    if name == "bert":
        return transformers.BertModel(transformers.BertConfig(vocab_size=100, max_position_embeddings=64, **kw))
    if name == "distilbert":
        return transformers.DistilBertForSequenceClassification(transformers.DistilBertConfig(
            vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64))
    if name == "roberta":
        return transformers.RobertaForSequenceClassification(transformers.RobertaConfig(
            vocab_size=100, max_position_embeddings=70, pad_token_id=1, **kw))
    if name == "gpt2":
        m = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=100, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                                                 bos_token_id=0, eos_token_id=0))
        linearize_conv1d(m)  # GPT-2's Conv1D projections as nn.Linear
        return m
    return transformers.ViTForImageClassification(transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3,
                                                                         num_labels=5, **kw))


def _first(out):
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


# MatMulInteger nodes: 6 projections per block × 2 (+ heads). BertModel's pooler is not on the exported output's path.
@pytest.mark.parametrize("name, n_mmi, n_conv", [("bert", 12, 0), ("distilbert", 14, 0), ("roberta", 14, 0), ("gpt2", 9, 0),
                                                 ("vit", 13, 1)])
def test_hf_models_in_ort_other_batch_and_sequence(name, n_mmi, n_conv):
    g = torch.Generator().manual_seed(1)
    if name == "vit":
        example, test = {"pixel_values": torch.randn(2, 3, 16, 16, generator=g)}, {"pixel_values": torch.randn(3, 3, 16, 16, generator=g)}
    else:
        example = {"input_ids": torch.randint(2, 100, (2, 8), generator=g), "attention_mask": torch.ones(2, 8, dtype=torch.long)}
        mask = torch.ones(3, 13, dtype=torch.long)
        mask[0, 9:] = 0  # a padded row
        test = {"input_ids": torch.randint(2, 100, (3, 13), generator=g), "attention_mask": mask}
    model = _hf(name).eval()
    with torch.no_grad():
        fp32 = _first(model(**test)).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantize_(model, DynamicInt8Config())
        blob = to_onnx_int8(q, example)
    with torch.no_grad():
        eager = _first(q(**test)).numpy()
    proto = onnx.load_from_string(blob)
    assert [i.name for i in proto.graph.input] == list(example)
    if name != "vit":
        assert all(i.type.tensor_type.elem_type == onnx.TensorProto.INT64 for i in proto.graph.input)  # token ids stay int64
    counts = integer_op_counts(blob)
    assert counts["MatMulInteger"] == n_mmi and counts["ConvInteger"] == n_conv
    y = _run(blob, test)
    assert y.shape == fp32.shape  # batch 3 × 13 tokens through a graph exported at 2 × 8
    assert _cos(y, eager) >= 0.99999  # the same integers as our eager modules
    assert _cos(y, fp32) >= 0.99


def test_static_hf_and_export_routes_swapped_models():
    """`export.to_onnx` hands a swap-quantized model to the int8 exporter (integer ops, not a float graph)."""
    model = _hf("distilbert").eval()
    batch = {"input_ids": torch.randint(2, 100, (4, 10), generator=torch.Generator().manual_seed(3)),
             "attention_mask": torch.ones(4, 10, dtype=torch.long)}
    with torch.no_grad():
        fp32 = model(**batch).logits.numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantize_(model, StaticInt8Config(), calib_data=[batch])
        blob = to_onnx(q, batch)
    counts = integer_op_counts(blob)
    assert counts["MatMulInteger"] == 14 and counts["QuantizeLinear"] == 14
    with torch.no_grad():
        eager = q(**batch).logits.numpy()
    y = _run(blob, batch)
    assert _cos(y, eager) >= 0.99999 and _cos(y, fp32) >= 0.99


def test_eager_forward_restored_after_export():
    q = quantize_(nn.Sequential(nn.Linear(8, 8)), DynamicInt8Config())
    x = torch.randn(3, 8)
    before = q(x)
    to_onnx_int8(q, x)
    assert "forward" not in q[0].__dict__ and torch.equal(q(x), before)


def test_unknown_quantized_module_is_one_line_error():
    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(8, 8, batch_first=True)
            self.out = nn.Linear(8, 3)

        def forward(self, x):
            return self.out(self.rnn(x)[0])

    q = quantize_(Tagger(), DynamicInt8Config())
    with pytest.raises(UserError, match=r"'rnn' \(QuantizedRNN\).*skip=\['rnn'\]") as e:
        to_onnx_int8(q, torch.randn(2, 5, 8))
    assert "\n" not in str(e.value)


def test_custom_int8_layer_named():
    class MyInt8(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("codes", torch.zeros(4, 4, dtype=torch.int8))

        def forward(self, x):
            return x @ self.codes.float()

    model = nn.Sequential(nn.Linear(4, 4), MyInt8())
    q = quantize_(model, DynamicInt8Config())
    with pytest.raises(UserError, match=r"'1' \(MyInt8\)"):
        to_onnx_int8(q, torch.randn(2, 4))


@pytest.mark.parametrize("kwargs, match", [({"dynamic_activations": "per_row"}, "dynamic_activations"), ({"opset": 13}, "opset")])
def test_bad_options(kwargs, match):
    with pytest.raises(UserError, match=match):
        to_onnx_int8(_hand_layer(), torch.zeros(1, 2), **kwargs)


def test_float_model_and_bad_inputs_refused():
    with pytest.raises(UserError, match="no quantized layer"):
        to_onnx_int8(nn.Linear(2, 2), torch.zeros(1, 2))
    with pytest.raises(UserError, match="example_inputs"):
        to_onnx_int8(_hand_layer(), [1.0, 2.0])


@pytest.mark.parametrize("opset", [17, 18])
def test_opsets_reduce_axes(opset):
    """Opset 18 moved ReduceMax/ReduceMin's axes from an attribute to an input: both forms run and agree with eager."""
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    q = quantize_(_mlp_and_convnet(), DynamicInt8Config())
    blob = to_onnx_int8(q, x[:2], opset=opset)
    assert onnx.load_from_string(blob).opset_import[0].version == opset
    with torch.no_grad():
        ref = q(x).numpy()
    assert np.abs(_run(blob, {"input": x}) - ref).max() <= 1e-5 * np.abs(ref).max()


def test_tied_embedding_and_lm_head_stored_once():
    """GPT-2's wte / lm_head share one QuantizedWeight: the file holds its codes once (the embedding gathers columns
    of the output layer's [D, V] constant). Hand count: wte 1000·64 + wpe 64·64 + 2 blocks × (64·192 + 64·64 +
    64·256 + 256·64) codes + one zero-point byte per MatMulInteger (9) = 166,409 int8 bytes."""
    from nncompress.quantization.onnx_swap import int8_weight_bytes

    torch.manual_seed(0)
    m = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=1000, n_positions=64, n_embd=64, n_layer=2, n_head=2,
                                                             bos_token_id=0, eos_token_id=0)).eval()
    linearize_conv1d(m)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantize_(m, DynamicInt8Config())
        blob = to_onnx_int8(q, {"input_ids": torch.randint(0, 1000, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long)})
    assert q.lm_head.weight_q is q.transformer.wte.weight_q
    assert int8_weight_bytes(blob) == 1000 * 64 + 64 * 64 + 2 * (64 * 192 + 64 * 64 + 64 * 256 + 256 * 64) + 9
    test = {"input_ids": torch.randint(0, 1000, (3, 11), generator=torch.Generator().manual_seed(5)),
            "attention_mask": torch.ones(3, 11, dtype=torch.long)}
    with torch.no_grad():
        ref = q(**test).logits.numpy()
    assert np.abs(_run(blob, test) - ref).max() <= 1e-5 * np.abs(ref).max()
