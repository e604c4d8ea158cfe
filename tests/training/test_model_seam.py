"""Training, evaluation, distillation, latency and calibration on batches that are not (x, y) tensors:
tokenizer-style dicts with labels, tuples of several inputs, a user forward_fn, a Hugging Face model's own loss."""
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from nncompress.analysis.latency import measure_latency_ms
from nncompress.distillation.trainer import distill
from nncompress.quantization.ptq import iter_batches
from nncompress.training import TrainConfig, evaluate, train
from nncompress.training.loop import predict


class Tokens(Dataset):
    """Sequences of token ids; the label is whether token 1 occurs more often than token 2 (learnable by counting)."""

    def __init__(self, n=256, t=8, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 3, (n, t), generator=g)
        self.mask = torch.ones(n, t, dtype=torch.long)
        self.labels = ((self.ids == 1).sum(1) > (self.ids == 2).sum(1)).long()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


class BagOfTokens(nn.Module):
    """Keyword inputs, dict output with logits (the shape of a Hugging Face classifier)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(3, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, input_ids, attention_mask):
        h = (self.emb(input_ids) * attention_mask.unsqueeze(-1)).sum(1) / attention_mask.sum(1, keepdim=True)
        return {"logits": self.head(h)}


def _loader(seed=0, n=256):
    return DataLoader(Tokens(n=n, seed=seed), batch_size=32, shuffle=False)


def test_train_and_evaluate_on_tokenizer_dicts():
    torch.manual_seed(0)
    model = BagOfTokens()
    before = evaluate(model, _loader(1))
    history = train(model, _loader(0), TrainConfig(epochs=12, lr=0.1, optimizer="adam", seed=0, progress=False))
    assert history[-1]["loss"] < history[0]["loss"]
    after = evaluate(model, _loader(1))
    assert after > 85 and after > before + 10  # counting tokens is learnable: well above chance on held-out data
    assert predict(model, _loader(1)).shape == (256, 2)


def test_train_epoch_loss_is_the_per_example_mean_of_a_dict_batch_loss():
    # a model whose logits are constant zeros: cross-entropy is ln 2 per example, whatever the batch sizes (256 = 8·32)
    class Zero(nn.Module):
        def __init__(self):
            super().__init__()
            self.b = nn.Parameter(torch.zeros(2))

        def forward(self, input_ids, attention_mask):
            return self.b.expand(input_ids.shape[0], 2) * 0

    history = train(Zero(), _loader(0), TrainConfig(epochs=1, lr=0.01, progress=False))
    assert math.isclose(history[0]["loss"], math.log(2), rel_tol=1e-6)


def test_tuples_of_several_inputs_and_a_user_forward_fn():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 2)

        def forward(self, x1, x2):
            return self.a(x1) + self.b(x2)

    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(128, 3, generator=g), torch.randn(128, 3, generator=g)
    y = (x1[:, 0] + x2[:, 1] > 0).long()
    loader = DataLoader(torch.utils.data.TensorDataset(x1, x2, y), batch_size=32)  # (x1, x2, y): inputs (x1, x2)
    torch.manual_seed(0)
    model = TwoInputs()
    train(model, loader, TrainConfig(epochs=40, lr=0.1, seed=0, progress=False))
    assert evaluate(model, loader) > 90
    calls = []

    def fwd(m, batch):  # the user's own convention: swap the inputs' roles, see the whole batch
        calls.append(len(batch))
        return m(batch[1], batch[0])

    acc_swapped = evaluate(model, loader, forward_fn=fwd)
    assert calls == [3] * 4 and acc_swapped < 90  # the forward_fn really replaced the call


def test_hugging_face_model_trains_on_its_own_loss_and_distils():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)

    def bert(layers, hidden):
        cfg = transformers.BertConfig(vocab_size=3, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                                      intermediate_size=2 * hidden, num_labels=2, max_position_embeddings=16,
                                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        return transformers.BertForSequenceClassification(cfg)

    teacher = bert(1, 16)
    small = lambda: _loader(0, n=96)  # noqa: E731
    history = train(teacher, small(), TrainConfig(epochs=4, lr=3e-3, optimizer="adam", seed=0, progress=False))
    assert history[-1]["loss"] < history[0]["loss"]  # the model's own loss (labels passed in), decreasing
    student = bert(1, 8)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    history = distill(student, teacher, small(), TrainConfig(epochs=3, lr=3e-3, optimizer="adam", seed=0, progress=False),
                      temperature=2.0, alpha=0.5)
    assert all(math.isfinite(h["loss"]) for h in history) and history[-1]["loss"] < history[0]["loss"]
    assert not torch.equal(before["classifier.weight"], student.state_dict()["classifier.weight"])
    assert 0.0 <= evaluate(student, _loader(1, n=64)) <= 100.0  # dict batches evaluate through the HF logits


def test_latency_and_calibration_take_keyword_inputs():
    model = BagOfTokens()
    batch = next(iter(_loader(0)))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    r = measure_latency_ms(model, inputs, warmup=1, repeats=3)
    assert r.median_ms > 0 and r.repeats == 3
    got = list(iter_batches(_loader(0), num_batches=2))
    assert len(got) == 2 and set(got[0]) == {"input_ids", "attention_mask"}  # labels dropped, inputs kept as a dict
