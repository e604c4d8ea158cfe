"""Tied parameters are found, kept tied by pruning and sharing, and skipped (with a warning naming both) by
factorization — never untied silently (issue 13, item 3). Embeddings can be pruned and shared (item 4)."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from nncompress.core.ties import tie_partners, tied_groups
from nncompress.lowrank import factorize
from nncompress.pruning import LevelPruner
from nncompress.sharing import finalize_sharing, share_weights


class TiedLM(nn.Module):
    """Input embedding and output layer share one matrix, as in GPT-2 and BERT's MLM head."""

    def __init__(self, vocab: int = 50, dim: int = 16):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(8, dim)
        self.mid = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        return self.head(torch.relu(self.mid(self.emb(ids) + self.pos.weight[: ids.shape[1]])))


def _recorded(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn()
    return out, [str(w.message) for w in caught]


def test_tied_groups_name_both_places_and_ignore_untied():
    m = TiedLM()
    assert tied_groups(m) == [["emb.weight", "head.weight"]]
    assert tie_partners(m, "head.weight") == ["emb.weight"]
    assert tie_partners(m, "mid.weight") == []
    twice = nn.Sequential(nn.Linear(2, 2))
    twice.add_module("again", twice[0])  # one module under two names
    assert tied_groups(twice) == [["0.weight", "again.weight"], ["0.bias", "again.bias"]]


def test_hf_models_ties_are_found():
    transformers = pytest.importorskip("transformers")
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=16))
    assert ["transformer.wte.weight", "lm_head.weight"] in tied_groups(gpt2)
    bert = transformers.BertForMaskedLM(transformers.BertConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                                                                intermediate_size=64, vocab_size=64))
    assert ["bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight"] in tied_groups(bert)


def test_pruning_a_tied_head_warns_and_keeps_one_mask():
    m = TiedLM()
    _, messages = _recorded(lambda: LevelPruner(0.5, layers=["head"]).prune(m))
    assert any("head.weight is tied to emb.weight" in s for s in messages)
    assert torch.equal(m.head.weight, m.emb.weight)
    assert float((m.emb.weight == 0).float().mean()) == pytest.approx(0.5)


def test_pruning_an_untied_embedding_when_named():
    m = TiedLM()
    LevelPruner(0.25, layers=["pos"]).prune(m)
    assert int((m.pos.weight == 0).sum()) == round(0.25 * 8 * 16)
    assert m(torch.randint(0, 50, (2, 8))).shape == (2, 8, 50)


def test_sharing_keeps_the_tie_through_a_training_step_and_finalize():
    m = TiedLM()
    _, messages = _recorded(lambda: share_weights(m, bits={"linear": 4}))
    assert any("head.weight is tied to emb.weight" in s for s in messages)
    assert m.emb.weight.unique().numel() <= 16  # the embedding got the head's 4-bit codebook
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    m(torch.randint(0, 50, (4, 8))).square().mean().backward()
    opt.step()
    assert torch.equal(m.head.weight, m.emb.weight)
    finalize_sharing(m)
    assert torch.equal(m.head.weight, m.emb.weight)


def test_sharing_an_embedding_by_name_or_kind():
    m = TiedLM()
    info = share_weights(m, bits={"pos": 3})
    assert list(info) == ["pos"] and m.pos.weight.unique().numel() <= 8
    m2 = TiedLM()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info2 = share_weights(m2, bits={"embedding": 2})
    assert set(info2) == {"emb", "pos"} and m2.pos.weight.unique().numel() <= 4


def test_factorizing_a_tied_layer_is_skipped_with_both_names():
    m = TiedLM()
    report, messages = _recorded(lambda: factorize(m, "svd", ranks={"head": 4, "mid": 4}))
    skipped = {l.name: l.skipped for l in report.layers}
    assert "emb.weight" in skipped["head"] and skipped["mid"] is None
    assert any("head.weight is tied to emb.weight" in s for s in messages)
    assert m.head.weight is m.emb.weight


def test_size_reports_count_a_tied_tensor_once_and_count_bare_parameters():
    from nncompress.analysis.counts import count_parameters

    m = TiedLM()  # emb 50×16 (= head), pos 8×16, mid 16×16 + 16
    assert count_parameters(m).params == 50 * 16 + 8 * 16 + 16 * 16 + 16

    class WithToken(nn.Module):
        def __init__(self):
            super().__init__()
            self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))  # held outside any layer, like ViT's
            self.proj = nn.Linear(4, 3)

    counts = count_parameters(WithToken())
    assert counts.params == 4 + 4 * 3 + 3
    assert counts.layers["cls_token"].type == "Parameter"
