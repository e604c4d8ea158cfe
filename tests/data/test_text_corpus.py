"""The offline text corpus: file-level split, byte-level BPE, token blocks and perplexity (issue 15)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nncompress.core.errors import UserError
from nncompress.data.text_corpus import TokenBlocks, corpus_files, encode_files, perplexity, read_texts, train_tokenizer


def test_splits_are_disjoint_cover_the_library_and_are_stable():
    splits = {s: corpus_files(s) for s in ("train", "validation", "test")}
    sets = {s: set(v) for s, v in splits.items()}
    assert not (sets["train"] & sets["test"]) and not (sets["train"] & sets["validation"]) and not (sets["validation"] & sets["test"])
    total = sum(len(v) for v in splits.values())
    assert total > 500  # CPython ships well over a thousand .py files
    assert 0.8 < len(splits["train"]) / total < 0.97
    assert corpus_files("test") == splits["test"]  # deterministic
    assert corpus_files("test", seed=1) != splits["test"]  # the seed moves files


def test_refusals():
    with pytest.raises(UserError, match="unknown split"):
        corpus_files("dev")
    with pytest.raises(UserError, match="fractions"):
        corpus_files("train", fractions=(0.5, 0.5, 0.5))
    with pytest.raises(UserError, match="vocab_size"):
        train_tokenizer(["x"], vocab_size=10)
    with pytest.raises(UserError, match="fewer than one block"):
        TokenBlocks(np.arange(3, dtype=np.int32), 8)


def test_byte_level_bpe_round_trips_any_text():
    pytest.importorskip("tokenizers")
    texts = read_texts(corpus_files("validation")[:20])
    tok = train_tokenizer(texts, vocab_size=400)
    sample = "def f(x):\n    return x ** 2  # ünïcode ✓\n"
    assert tok.decode(tok.encode(sample).ids) == sample
    stream = encode_files(tok, ["a b", "c"])
    eot = tok.token_to_id("<|endoftext|>")
    assert stream.dtype == np.int32 and int((stream == eot).sum()) == 2 and stream[-1] == eot


def test_blocks_are_causal_lm_batches():
    blocks = TokenBlocks(np.arange(10, dtype=np.int32), 4)
    assert len(blocks) == 2
    item = blocks[1]
    assert item["input_ids"].tolist() == [4, 5, 6, 7] and torch.equal(item["labels"], item["input_ids"])


class _Uniform(torch.nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids):
        return torch.zeros(*input_ids.shape, self.vocab) + self.w


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    blocks = TokenBlocks(np.arange(64, dtype=np.int32) % 50, 16)
    assert perplexity(_Uniform(50), blocks, batch_size=3) == pytest.approx(50.0, rel=1e-5)


class _Oracle(torch.nn.Module):
    """Puts logit 10 on the true next token of the sequence 0, 1, 2, ... (mod V)."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids):
        nxt = (input_ids + 1) % self.vocab
        return torch.nn.functional.one_hot(nxt, self.vocab).float() * 10 + self.w


def test_perplexity_matches_the_hand_computed_cross_entropy():
    v = 5
    blocks = TokenBlocks(np.arange(40, dtype=np.int32) % v, 8)
    p_true = math.exp(10) / (math.exp(10) + (v - 1))
    assert perplexity(_Oracle(v), blocks) == pytest.approx(1 / p_true, rel=1e-5)
