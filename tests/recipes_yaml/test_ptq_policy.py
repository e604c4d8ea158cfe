"""The 'ptq' policy: a recipe asks for the PTQ ladder (CLE, bias correction, AdaRound) with W8A8/W4A8/W4A4 and
per-channel or per-tensor scales; bad values name field and line; the runner quantizes the trained model with it."""
from pathlib import Path

import pytest
import torch
import yaml

from nncompress.core.errors import UserError
from nncompress.core.io import load_weights
from nncompress.recipes.runner import run_recipe
from nncompress.recipes.schema import load_recipe

RECIPES = Path(__file__).parents[2] / "recipes"
BASE = """model: resnet20
data: digits
training:
  epochs: 1
policies:
  - method: ptq
"""


def error(text: str) -> str:
    with pytest.raises(UserError) as e:
        load_recipe(text)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("bits,act_bits,granularity", [(8, 8, "channel"), (4, 8, "tensor"), (4, 4, "channel"), (4, 4, "tensor")])
def test_w8a8_w4a8_w4a4_per_channel_and_per_tensor_are_valid(bits, act_bits, granularity):
    text = BASE + f"    weight_bits: {bits}\n    act_bits: {act_bits}\n    granularity: {granularity}\n    cle: true\n"
    p = load_recipe(text).policies[0]
    assert (p.method, p.weight_bits, p.act_bits, p.granularity, p.cle, p.bias_correction, p.adaround) == \
        ("ptq", bits, act_bits, granularity, True, "none", False)


def test_bad_ptq_values_name_field_and_line():
    assert error(BASE + "    bias_correction: mean\n").startswith("recipe:7: policies[0].bias_correction: Input should be 'none', 'empirical' or 'analytic'")
    assert error(BASE + "    weight_bits: 1\n").startswith("recipe:7: policies[0].weight_bits: Input should be greater than or equal to 2")
    assert error(BASE + "    cle: sometimes\n").startswith("recipe:7: policies[0].cle: Input should be a valid boolean")
    assert error(BASE + "    adaround: true\n    adaround_steps: 0\n").startswith("recipe:8: policies[0].adaround_steps: Input should be greater")
    assert error(BASE + "    start: 0\n") == "recipe:7: policies[0].start: ptq runs once after training ends: leave 'start' out (got 0)"
    assert "adaround_steps is set but adaround is false" in error(BASE + "    adaround_steps: 50\n")


def test_ptq_conflicts_with_other_weight_quantizers():
    assert error(BASE + "  - method: qat\n    start: 0\n") == \
        "recipe:6: policies[0].method: 'ptq' and 'qat' both quantize the weights: use one of them"
    assert "only one 'ptq' policy per recipe" in error(BASE + "  - method: ptq\n")


def test_ptq_ladder_recipe_quantizes_the_trained_model(tmp_path):
    """The example recipe on a slice of digits, AdaRound shortened to 20 steps per layer (about 5 s on one core)."""
    d = yaml.safe_load((RECIPES / "ptq_ladder.yaml").read_text())
    d["data"] = {"name": "digits", "train_samples": 320, "test_samples": 160}
    d["pretrain"] = {"epochs": 2, "lr": 0.05}
    d["policies"][0]["adaround_steps"] = 20
    r = run_recipe(d, tmp_path, progress=False)
    lad = r.ptq_ladder
    assert lad["steps"] == ["fold_bn", "cross_layer_equalization", "calibrate", "adaround", "bias_correction_empirical"]
    assert lad["equalized_pairs"] and lad["not_applied"] == {}
    quantized = r.model.quant_layers
    assert r.model.quant_config.weight_bits == 4 and r.model.quant_config.act_bits == 8
    assert list(lad["adaround_error"]) == list(quantized) and lad["bias_corrected"] == sorted(quantized)
    assert lad["ladder_top1"] == r.top1_final and r.top1_pretrained > 50 and r.top1_final > r.top1_pretrained - 10
    codes = [v for k, v in load_weights(tmp_path / "quantized.safetensors").items() if k.endswith("weight_codes")]
    assert len(codes) == len(quantized) and all(int(v.min()) >= -8 and int(v.max()) <= 7 for v in codes)  # 4-bit codes
    saved = yaml.safe_load((tmp_path / "result.json").read_text())  # JSON is YAML
    assert saved["ptq_ladder"]["steps"] == lad["steps"]
    assert torch.isfinite(torch.tensor(lad["static_top1"]))
