"""Attention-head, FFN-channel and layer removal on Hugging Face transformers built from small configs.

The reference for each removal is the unpruned model with the removed parts' contribution zeroed by hand
(the head's columns of the output projection, the channel's column of the down projection): a physical
removal must give the same outputs, and the saved model must reload to the same outputs.
"""
from __future__ import annotations

import copy

import pytest
import torch

from nncompress.core.errors import UserError
from nncompress.pruning.structured.heads import (
    apply_structure,
    attention_blocks,
    ffn_blocks,
    importance,
    load_pruned_pretrained,
    prune_ffn,
    prune_heads,
    prune_transformer,
    remove_layers,
    transformer_macs,
)

transformers = pytest.importorskip("transformers")

VOCAB, T = 100, 12


def _bert():
    return transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, num_labels=3))


def _distilbert():
    return transformers.DistilBertForSequenceClassification(transformers.DistilBertConfig(
        vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64, num_labels=3))


def _gpt2():
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32))


def _vit():
    return transformers.ViTForImageClassification(transformers.ViTConfig(
        image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, num_labels=3))


def _roberta():
    return transformers.RobertaForSequenceClassification(transformers.RobertaConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, num_labels=3,
        max_position_embeddings=40))


FAMILIES = {"bert": _bert, "distilbert": _distilbert, "gpt2": _gpt2, "vit": _vit, "roberta": _roberta}


def _inputs(family: str, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    if family == "vit":
        return {"pixel_values": torch.randn(2, 3, 16, 16, generator=g)}
    return {"input_ids": torch.randint(3, VOCAB, (2, T), generator=g), "attention_mask": torch.ones(2, T, dtype=torch.long)}


def _build(family: str):
    torch.manual_seed(0)
    return FAMILIES[family]().eval()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_blocks_are_found_in_every_family(family):
    model = _build(family)
    blocks, ffns = attention_blocks(model), ffn_blocks(model)
    assert [b.num_heads for b in blocks] == [4, 4] and all(b.head_dim == 8 for b in blocks)
    assert [f.width for f in ffns] == [64 if family != "gpt2" else 128] * 2


@pytest.mark.parametrize("family", list(FAMILIES))
def test_removing_heads_equals_zeroing_their_output_columns(family):
    model = _build(family)
    x = _inputs(family)
    reference = copy.deepcopy(model)
    block = attention_blocks(reference)[0]
    with torch.no_grad():  # heads 1 and 3 of block 0 contribute nothing
        w = block.out.weight
        for h in (1, 3):
            cols = slice(h * 8, (h + 1) * 8)
            if type(block.out).__name__ == "Conv1D":
                w[cols, :] = 0
            else:
                w[:, cols] = 0
    name = attention_blocks(model)[0].name
    kept = prune_heads(model, {name: [1, 3]})
    assert kept[name] == [0, 2]
    assert attention_blocks(model)[0].num_heads == 2
    want, got = reference(**x).logits, model(**x).logits
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_removing_ffn_channels_equals_zeroing_them(family):
    model = _build(family)
    x = _inputs(family)
    reference = copy.deepcopy(model)
    f = ffn_blocks(reference)[1]
    with torch.no_grad():
        if type(f.down).__name__ == "Conv1D":
            f.down.weight[:5, :] = 0
        else:
            f.down.weight[:, :5] = 0
    widths = prune_ffn(model, {ffn_blocks(model)[1].name: range(5)})
    assert list(widths.values()) == [f.width - 5]
    assert torch.allclose(model(**x).logits, reference(**x).logits, atol=1e-5)


def test_macs_follow_the_hand_count():
    model = _build("bert")
    # per layer and token: q, k, v, out 4·32·32; FFN 2·32·64; attention matmuls 2·T·heads·d_h per token
    per_layer = T * (4 * 32 * 32 + 2 * 32 * 64) + 2 * T * T * 4 * 8
    pooler_and_head = T * (32 * 32 + 32 * 3)
    assert transformer_macs(model, T) == 2 * per_layer + pooler_and_head
    prune_heads(model, {attention_blocks(model)[0].name: [0]})
    assert transformer_macs(model, T) == 2 * per_layer + pooler_and_head - (T * 4 * 32 * 8 + 2 * T * T * 8)


@pytest.mark.parametrize("method", ["activation", "taylor", "magnitude"])
def test_importance_has_one_score_per_head_and_channel(method):
    model = _build("bert")
    batches = [{**_inputs("bert", s), "labels": torch.tensor([0, 2])} for s in range(2)]
    heads, chans = importance(model, batches if method != "magnitude" else None, method)
    assert [v.shape for v in heads.values()] == [(4,), (4,)]
    assert [v.shape for v in chans.values()] == [(64,), (64,)]
    assert all(torch.isfinite(v).all() and (v >= 0).all() for v in [*heads.values(), *chans.values()])


def test_activation_importance_ranks_a_silenced_head_last():
    model = _build("distilbert")
    block = attention_blocks(model)[1]
    with torch.no_grad():
        block.v.weight[16:24] = 0  # head 2 of layer 1 outputs zero context vectors
        block.v.bias[16:24] = 0
    heads, _ = importance(model, [_inputs("distilbert", s) for s in range(2)], "activation")
    scores = heads[block.name]
    assert float(scores[2]) == pytest.approx(0.0, abs=1e-6) and int(scores.argmin()) == 2


def test_prune_transformer_removes_the_budget_and_keeps_min_heads():
    model = _build("gpt2")
    batches = [_inputs("gpt2", s) for s in range(2)]
    report = prune_transformer(model, batches, head_ratio=0.5, ffn_ratio=0.25, min_heads=1, seq_len=T)
    assert sum(len(k) for k in report.heads_kept.values()) == 4  # 8 heads, half removed
    assert all(len(k) >= 1 for k in report.heads_kept.values())
    assert list(report.ffn_kept.values()) == [96, 96]
    assert 0 < report.macs_after < report.macs_before
    assert model(**batches[0]).logits.shape == (2, T, VOCAB)


def test_remove_layers_updates_the_config():
    model = _build("bert")
    x = _inputs("bert")
    kept = remove_layers(model, [0])
    assert kept == [1] and model.config.num_hidden_layers == 1 and len(model.bert.encoder.layer) == 1
    assert model(**x).logits.shape == (2, 3)
    with pytest.raises(UserError, match="leaves no network"):
        remove_layers(model, [0])


@pytest.mark.parametrize("family", ["bert", "gpt2", "vit"])
def test_save_pretrained_reloads_to_the_same_outputs(family, tmp_path):
    model = _build(family)
    x = _inputs(family)
    prune_transformer(model, [x], head_ratio=0.25, ffn_ratio=0.25, scope="layer", seq_len=T)
    remove_layers(model, [1])
    want = model(**x).logits
    model.save_pretrained(tmp_path)
    back = load_pruned_pretrained(type(model), tmp_path)
    assert torch.equal(back(**x).logits, want)
    if family == "gpt2":
        assert back.lm_head.weight is back.transformer.wte.weight


def test_a_head_pruned_bert_exports_to_onnx_and_runs_in_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = _build("bert")
    prune_heads(model, {attention_blocks(model)[0].name: [0, 1], attention_blocks(model)[1].name: [3]})
    x = _inputs("bert")
    path = tmp_path / "pruned.onnx"
    torch.onnx.export(model, (), str(path), kwargs=dict(x), input_names=["input_ids", "attention_mask"],
                      output_names=["logits"], dynamo=False, opset_version=17,
                      dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y = _inputs("bert", seed=3)
    got = sess.run(None, {k: v.numpy() for k, v in y.items()})[0]
    assert torch.allclose(torch.from_numpy(got), model(**y).logits, atol=1e-4)


def test_refusals_are_one_line_and_name_the_block():
    model = _build("bert")
    name = attention_blocks(model)[0].name
    with pytest.raises(UserError, match="keep ≥ 1"):
        prune_heads(model, {name: [0, 1, 2, 3]})
    with pytest.raises(UserError, match="out of range"):
        prune_heads(model, {name: [7]})
    with pytest.raises(UserError, match="no attention block named"):
        prune_heads(model, {"nope": [0]})
    with pytest.raises(UserError, match="head_ratio"):
        prune_transformer(model, None, head_ratio=1.5, importance_method="magnitude")
    with pytest.raises(UserError, match="does not fit"):
        apply_structure(_build("bert"), {"heads": {name: 9}})
    with pytest.raises(UserError, match="no attention block"):
        importance(torch.nn.Sequential(torch.nn.Linear(2, 2)), None, "magnitude")
