"""The model seam's call part: any batch format in, logits / loss / device moves out."""
import math
from collections import OrderedDict, namedtuple

import pytest
import torch
from torch import nn

from nncompress.core.errors import UserError
from nncompress.core.model_io import (
    as_args_kwargs,
    batch_size,
    call_model,
    compute_loss,
    example_inputs,
    forward_and_loss,
    forward_batch,
    split_batch,
    to_device,
)


class TwoInputs(nn.Module):
    def forward(self, a, b):
        return a - b


class Kw(nn.Module):
    """A tokenizer-style model: keyword inputs, HF-like dict output with logits."""

    def forward(self, input_ids, attention_mask=None):
        logits = (input_ids * attention_mask).float().unsqueeze(-1).repeat(1, 1, 2).sum(1)
        return {"logits": logits, "hidden": input_ids}


def test_split_batch_conventions():
    x, y = torch.zeros(3, 2), torch.tensor([0, 1, 1])
    assert split_batch(x) == (x, None)
    assert split_batch((x, y)) == (x, y)
    assert split_batch([x, y]) == (x, y)
    assert split_batch((x,)) == (x, None)
    a, b = torch.ones(3), torch.zeros(3)
    inputs, target = split_batch((a, b, y))
    assert inputs == (a, b) and target is y
    d = {"input_ids": x, "attention_mask": x, "labels": y}
    inputs, target = split_batch(d)
    assert list(inputs) == ["input_ids", "attention_mask"] and target is y
    inputs, target = split_batch({"input_ids": x, "label": y})
    assert list(inputs) == ["input_ids"] and target is y
    assert split_batch({"input_ids": x})[1] is None


def test_split_batch_refuses_labels_only_and_empty():
    with pytest.raises(UserError, match="no model inputs besides the labels"):
        split_batch({"labels": torch.zeros(2)})
    with pytest.raises(UserError, match="empty tuple"):
        split_batch(())


def test_call_model_spreads_tuples_and_dicts_and_unwraps_logits():
    a, b = torch.tensor([5.0, 7.0]), torch.tensor([2.0, 3.0])
    assert torch.equal(call_model(TwoInputs(), (a, b)), torch.tensor([3.0, 4.0]))  # model(a, b), not model((a, b))
    ids, mask = torch.tensor([[1, 2, 3], [4, 5, 6]]), torch.tensor([[1, 1, 0], [1, 0, 0]])
    out = call_model(Kw(), {"input_ids": ids, "attention_mask": mask})
    assert torch.equal(out, torch.tensor([[3.0, 3.0], [4.0, 4.0]]))  # 1+2, 4: the masked sums, from the logits key
    lin = nn.Linear(2, 1, bias=False)
    lin.weight.data = torch.tensor([[1.0, 10.0]])
    assert torch.equal(call_model(lin, torch.tensor([[2.0, 3.0]])), torch.tensor([[32.0]]))


def test_forward_fn_overrides_everything_and_sees_the_whole_batch():
    seen = []

    def fwd(model, batch):
        seen.append(batch)
        return model(batch["a"], batch["b"])

    batch = {"a": torch.tensor([4.0]), "b": torch.tensor([1.0]), "labels": torch.tensor([0])}
    out, target = forward_batch(TwoInputs(), batch, forward_fn=fwd)
    assert torch.equal(out, torch.tensor([3.0])) and torch.equal(target, torch.tensor([0]))
    assert seen[0] is batch  # labels included: the user decides


def test_default_loss_is_cross_entropy_hand_worked():
    class Const(nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], 2)  # uniform over 2 classes → CE = ln 2

    loss = compute_loss(Const(), (torch.zeros(4, 3), torch.tensor([0, 1, 0, 1])))
    assert math.isclose(float(loss), math.log(2), rel_tol=1e-6)


def test_sequence_logits_flatten_and_ignore_padding():
    class Seq(nn.Module):
        def forward(self, input_ids):  # (B, T) → (B, T, 4): a confident right answer only for token id 0
            logits = torch.zeros(*input_ids.shape, 4)
            logits[..., 0] = torch.where(input_ids == 0, 100.0, 0.0)
            return logits

    ids = torch.tensor([[0, 1]])
    labels = torch.tensor([[0, -100]])  # second position is padding: only the ~0 loss of position one counts
    assert float(compute_loss(Seq(), {"input_ids": ids, "labels": labels})) < 1e-6
    labels = torch.tensor([[0, 2]])  # the second position adds CE of a uniform 4-way guess: ln 4 / 2 positions
    assert math.isclose(float(compute_loss(Seq(), {"input_ids": ids, "labels": labels})), math.log(4) / 2, rel_tol=1e-5)


def test_models_own_loss_is_used_when_it_takes_labels():
    class OwnLoss(nn.Module):
        def forward(self, x, labels=None):
            return {"logits": x, "loss": torch.tensor(7.0) if labels is not None else None}

    step = forward_and_loss(OwnLoss(), {"x": torch.zeros(2, 3), "labels": torch.tensor([0, 1])})
    assert float(step.loss) == 7.0 and step.outputs.shape == (2, 3)
    # a loss_fn overrides the model's own loss
    step = forward_and_loss(OwnLoss(), {"x": torch.zeros(2, 3), "labels": torch.tensor([0, 1])},
                            loss_fn=lambda out, y: out.sum() + 1)
    assert float(step.loss) == 1.0


def test_labels_are_not_passed_to_a_model_that_does_not_take_them():
    step = forward_and_loss(Kw(), {"input_ids": torch.tensor([[1, 0]]), "attention_mask": torch.tensor([[1, 1]]),
                                   "labels": torch.tensor([1])})
    assert math.isclose(float(step.loss), math.log(2), rel_tol=1e-6)  # logits [1, 1]: uniform


def test_no_target_and_no_loss_is_a_user_error():
    with pytest.raises(UserError, match="no target"):
        compute_loss(nn.Linear(2, 2), torch.zeros(1, 2))


def test_to_device_moves_nested_pytrees_and_keeps_structure():
    Pair = namedtuple("Pair", "x y")
    batch = {"a": [torch.zeros(1), (torch.ones(2), 3)], "b": Pair(torch.zeros(2), "tag"), "c": OrderedDict(k=torch.ones(1))}
    moved = to_device(batch, "meta")
    assert moved["a"][0].device.type == "meta" and moved["a"][1][0].device.type == "meta" and moved["a"][1][1] == 3
    assert isinstance(moved["b"], Pair) and moved["b"].x.device.type == "meta" and moved["b"].y == "tag"
    assert isinstance(moved["c"], OrderedDict) and moved["c"]["k"].device.type == "meta"


def test_to_device_turns_user_dicts_into_dicts():
    from collections import UserDict

    moved = to_device(UserDict(input_ids=torch.zeros(2, dtype=torch.long)), "meta")
    assert type(moved) is dict and moved["input_ids"].device.type == "meta"


def test_example_inputs_and_batch_size():
    x, y = torch.zeros(5, 3), torch.arange(5)
    assert example_inputs((x, y)) == ((x,), {})
    args, kwargs = example_inputs({"input_ids": x, "labels": y})
    assert args == () and list(kwargs) == ["input_ids"]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=2)
    args, _ = example_inputs(loader)
    assert args[0].shape == (2, 3)
    assert batch_size((x, y)) == 5 and batch_size(x) == 5 and batch_size({"input_ids": torch.zeros(7, 2)}) == 7
    assert as_args_kwargs((x, x)) == ((x, x), {})
    with pytest.raises(UserError, match="no batches"):
        example_inputs(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:0], y[:0])))


def test_hf_bert_classifier_through_the_seam():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, num_labels=3, max_position_embeddings=16)
    model = transformers.BertForSequenceClassification(cfg).eval()
    batch = {"input_ids": torch.randint(0, 50, (4, 6)), "attention_mask": torch.ones(4, 6, dtype=torch.long),
             "labels": torch.tensor([0, 1, 2, 0])}
    logits = call_model(model, split_batch(batch)[0])
    assert logits.shape == (4, 3)
    step = forward_and_loss(model, batch)
    expected = nn.functional.cross_entropy(logits, batch["labels"])  # HF's own loss is the same cross-entropy
    assert torch.allclose(step.loss, expected, atol=1e-6)
