"""Quantized models save to safetensors + a JSON layout (no pickle) and reload to bit-identical outputs."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from nncompress.core.errors import UserError
from nncompress.quantization.modules import QuantizedEmbedding, QuantizedLinear
from nncompress.quantization.persist import META_KEY, load_quantized, save_quantized_model
from nncompress.quantization.swap import DynamicInt8Config, StaticInt8Config, WeightOnlyConfig, quantize_

from .test_swap import Untraceable


def _batch():
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 30, (6, 12), generator=g)


def _factory():
    torch.manual_seed(7)  # a different float init than the saved model: only the file decides the outputs
    return Untraceable()


@pytest.mark.parametrize("cfg", [DynamicInt8Config(), StaticInt8Config("mse"), StaticInt8Config(granularity="tensor", reduce_range=True),
                                 WeightOnlyConfig(8), WeightOnlyConfig(4, group_size=8)])
def test_reload_is_bit_identical(tmp_path, cfg):
    torch.manual_seed(0)
    q = quantize_(Untraceable().eval(), cfg, calib_data=[_batch()])
    path = tmp_path / "q.safetensors"
    save_quantized_model(q, path)
    back = load_quantized(_factory, path)
    ids = _batch()
    with torch.no_grad():
        assert torch.equal(back(ids), q(ids))
    assert type(back.fc1) is QuantizedLinear and back.fc1.act_mode == q.fc1.act_mode
    sd, sd2 = q.state_dict(), back.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    layout = json.loads(__import__("safetensors").safe_open(str(path), "pt").metadata()[META_KEY])
    assert layout["modules"]["fc1"]["weight"]["bits"] == (cfg.bits if isinstance(cfg, WeightOnlyConfig) else 8)


def test_tied_head_reloads_tied_and_is_stored_once(tmp_path):
    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(40, 16)
            self.lm_head = nn.Linear(16, 40, bias=False)
            self.lm_head.weight = self.wte.weight

        def forward(self, ids):
            return self.lm_head(self.wte(ids))

    q = quantize_(LM(), DynamicInt8Config())
    path = tmp_path / "lm.safetensors"
    save_quantized_model(q, path)
    stored = load_file(str(path))
    assert "wte.weight_q.codes" in stored and "lm_head.weight_q.codes" not in stored  # written once
    back = load_quantized(LM, path)
    assert back.lm_head.weight_q is back.wte.weight_q and isinstance(back.wte, QuantizedEmbedding)
    ids = torch.randint(0, 40, (2, 5))
    assert torch.equal(back(ids), q(ids))


def test_bare_layer_roundtrip(tmp_path):
    q = quantize_(nn.Linear(8, 3), DynamicInt8Config())
    save_quantized_model(q, tmp_path / "l.safetensors")
    back = load_quantized(nn.Linear(8, 3), tmp_path / "l.safetensors")
    x = torch.randn(4, 8)
    assert isinstance(back, QuantizedLinear) and torch.equal(back(x), q(x))


def _rewrite(path, out, edit):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    layout = json.loads(meta[META_KEY])
    edit(layout)
    meta[META_KEY] = layout if isinstance(layout, str) else json.dumps(layout)
    save_file(load_file(str(path)), str(out), metadata=meta)


@pytest.mark.parametrize("edit,match", [
    (lambda d: d.update(format="other/9"), "format is 'other/9'"),
    (lambda d: d["modules"]["fc1"].update(act_mode="fast"), r"module 'fc1'.act_mode is 'fast'"),
    (lambda d: d["modules"]["fc1"]["weight"].update(bits=12), "bits=12"),
    (lambda d: d["modules"]["fc1"]["weight"].pop("shape"), r"module 'fc1'.weight lacks the field 'shape'"),
    (lambda d: d["modules"]["conv"].update(kernel_size=[5]), "does not match a 1-d conv"),
    (lambda d: d["modules"]["fc1"].update(relu="yes"), r"relu is 'yes'"),
    (lambda d: d["modules"].update(nothere=d["modules"]["fc1"]), "module 'nothere' is a quantized linear, the model has nothing"),
])
def test_bad_layout_is_one_line_user_error(tmp_path, edit, match):
    torch.manual_seed(0)
    q = quantize_(Untraceable().eval(), DynamicInt8Config())
    save_quantized_model(q, tmp_path / "q.safetensors")
    _rewrite(tmp_path / "q.safetensors", tmp_path / "bad.safetensors", edit)
    with pytest.raises(UserError, match=match) as e:
        load_quantized(_factory, tmp_path / "bad.safetensors")
    assert "\n" not in str(e.value)


def test_not_a_quantized_file(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(UserError, match="not a quantized model file"):
        load_quantized(_factory, tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(UserError, match="not a valid safetensors"):
        load_quantized(_factory, tmp_path / "junk.safetensors")
    with pytest.raises(UserError, match="no quantized modules"):
        save_quantized_model(nn.Linear(2, 2), tmp_path / "x.safetensors")
    q = quantize_(Untraceable().eval(), DynamicInt8Config())
    save_quantized_model(q, tmp_path / "q.safetensors")
    other = Untraceable()
    other.fc1 = nn.Linear(16, 33)
    with pytest.raises(UserError, match=r"module 'fc1' has a \[32, 16\] weight, the model's is \[33, 16\]"):
        load_quantized(other, tmp_path / "q.safetensors")
