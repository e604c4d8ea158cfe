"""ONNX export of a model called with keyword inputs (a tokenizer's dict): a small Hugging Face BERT."""
import numpy as np
import onnx
import pytest
import torch

from nncompress.export.onnx import compare_with_torch, run_onnx, to_onnx

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, num_labels=3, max_position_embeddings=64)
    return transformers.BertForSequenceClassification(cfg).eval()


def _batch(b, t, seed, pad_from=None):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, t, dtype=torch.long)
    if pad_from is not None:
        mask[0, pad_from:] = 0
    return {"input_ids": torch.randint(0, 100, (b, t), generator=g), "attention_mask": mask,
            "token_type_ids": torch.zeros(b, t, dtype=torch.long)}


def test_bert_exports_with_named_int64_inputs_and_dynamic_batch_and_sequence(bert):
    blob = to_onnx(bert, _batch(2, 7, 0))
    graph = onnx.load_from_string(blob).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.INT64 for i in graph.input)
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input]
    assert dims == [["batch", "sequence"]] * 3
    assert [o.name for o in graph.output] == ["logits"]
    assert bert.training is False  # exporting a copy leaves the caller's model in eval mode
    for b, t, pad in ((2, 7, None), (3, 11, 5), (1, 20, 9)):  # other batch sizes and lengths, with padding
        x = _batch(b, t, b * 100 + t, pad)
        with torch.no_grad():
            ref = bert(**x).logits.numpy()
        out = run_onnx(blob, x)
        assert out.shape == (b, 3)
        assert np.abs(out - ref).max() < 1e-6  # random-init logits are ~1e-2: a tight bound; ORT is off by ~1e-8
    cmp = compare_with_torch(bert, blob, _batch(4, 9, 7, 3))
    assert cmp["max_rel_error"] < 1e-4 and cmp["top1_agreement"] == 100.0


def test_padding_changes_the_output_so_the_mask_is_really_an_input(bert):
    blob = to_onnx(bert, _batch(2, 7, 0))
    x = _batch(1, 12, 3)
    padded = dict(x, attention_mask=torch.cat([torch.ones(1, 6, dtype=torch.long), torch.zeros(1, 6, dtype=torch.long)], 1))
    with torch.no_grad():
        ref = bert(**padded).logits.numpy()
    assert np.abs(run_onnx(blob, padded) - ref).max() < 1e-6
    # masking half the tokens moves the logits 1000x more than ORT's rounding: the mask is a live input, not folded
    assert np.abs(run_onnx(blob, x) - run_onnx(blob, padded)).max() > 1e-5
