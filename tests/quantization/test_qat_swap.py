"""QAT by module swap (`prepare_qat_swap`): no graph, any batch format, ties and shared modules kept."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nncompress.core.errors import UserError
from nncompress.quantization.graph import QuantLayer
from nncompress.quantization.qat import convert_qat, train_qat
from nncompress.quantization.qat_swap import SwappedQuantLayer, prepare_qat_swap


class Untraceable(nn.Module):
    """Keyword inputs, Python control flow on a tensor value, a tied head and one module called twice."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        self.block = nn.Linear(32, 32)
        self.head = nn.Linear(32, 50, bias=False)
        self.head.weight = self.emb.weight  # tied, as GPT-2's lm_head and wte

    def forward(self, input_ids, attention_mask):
        h = self.emb(input_ids) * attention_mask.unsqueeze(-1)
        if h.abs().sum() > 0:  # data-dependent branch: fx cannot trace this forward
            h = F.gelu(self.block(h))
        h = self.block(h)  # the same module twice
        return self.head(h)


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, 50, (4, 12), generator=g), "attention_mask": torch.ones(4, 12, dtype=torch.long)}


@pytest.fixture
def model():
    torch.manual_seed(0)
    return Untraceable().eval()


def test_swapped_copy_runs_on_dict_batches_close_to_float(model):
    x = _batch()
    qat = prepare_qat_swap(model, x, weight_bits=8, act_bits=8)
    assert not any(isinstance(m, QuantLayer) for m in model.modules())  # the user's model is untouched
    assert qat.training and sorted(qat.quant_layers) == ["block", "head"]
    qat.eval()
    with torch.no_grad():
        ref, out = model(**x), qat(**x)
    cos = F.cosine_similarity(ref.flatten(), out.flatten(), dim=0)
    assert 0.995 < cos < 1.0  # 8-bit fake quantization: close, but not the float model itself


def test_weights_sit_on_the_4bit_grid(model):
    qat = convert_qat(prepare_qat_swap(model, _batch(), weight_bits=4, act_bits=8))
    w = qat.block.quantized_weight().detach()
    levels = max(len(torch.unique(row)) for row in w)
    assert levels <= 15  # symmetric narrow 4-bit: codes -7..7 per output channel; a float row has 32 distinct values
    assert len(torch.unique(model.block.weight[0])) == 32


def test_tie_and_shared_module_survive(model):
    qat = prepare_qat_swap(model, _batch())
    assert isinstance(qat.head, SwappedQuantLayer)
    assert qat.head.layer.weight is qat.emb.weight  # one Parameter: training moves both places together
    assert qat.head.weight is qat.emb.weight  # the model's own code can still read `layer.weight`


def test_one_step_trains_the_master_weights_through_the_quantizers(model):
    x = dict(_batch(), labels=model(**_batch()).argmax(-1).detach())
    qat = prepare_qat_swap(model, x)
    before = qat.block.layer.weight.detach().clone()
    train_qat(qat, [x], epochs=1, lr=0.1, progress=False)
    assert not torch.equal(before, qat.block.layer.weight)  # the straight-through gradient reached the float weight
    assert torch.isfinite(qat.block.layer.weight).all()


def test_skip_and_refusals(model):
    qat = prepare_qat_swap(model, _batch(), skip=["block"])
    assert isinstance(qat.block, nn.Linear) and qat.quant_skipped == {"block": "kept in float (asked)"}
    with pytest.raises(UserError, match="not Linear/Conv layers"):
        prepare_qat_swap(model, _batch(), skip=["nope"])
    with pytest.raises(UserError, match="no nn.Linear"):
        prepare_qat_swap(nn.Sequential(nn.ReLU()), torch.zeros(1, 3))
