"""Module-swap quantization on a Hugging Face GPT-2 (random tiny config): tokenizer-style dict batches, the tied
lm_head/wte kept tied through quantization, saving and loading, and bit-identical reloads (issue 13)."""
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

from nncompress.core.conv1d import linearize_conv1d  # noqa: E402
from nncompress.quantization import (DynamicInt8Config, StaticInt8Config, load_quantized, quantize_,  # noqa: E402
                                     save_quantized_model)


def _gpt2():
    cfg = transformers.GPT2Config(vocab_size=100, n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    linearize_conv1d(model)  # GPT-2's Conv1D projections as nn.Linear
    return model


@pytest.mark.parametrize("cfg", [DynamicInt8Config(), StaticInt8Config()])
def test_gpt2_quantized_tied_and_reloaded_bit_identical(tmp_path, cfg):
    ids = torch.randint(0, 100, (2, 10), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "attention_mask": torch.ones(2, 10, dtype=torch.long), "labels": ids}
    model = _gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every layer has a quantized form: nothing is left in float, nothing warned
        q = quantize_(model, cfg, calib_data=[batch])
    assert len(q.quant_layers) == 11 and q.quant_skipped == {}  # wte, wpe, 4 projections × 2 blocks, lm_head
    assert q.lm_head.weight_q is q.transformer.wte.weight_q
    with torch.no_grad():
        out = q(input_ids=ids).logits
    assert float((out - ref).abs().max()) < 0.03 * float(ref.abs().max())
    save_quantized_model(q, tmp_path / "gpt2.safetensors")
    back = load_quantized(_gpt2, tmp_path / "gpt2.safetensors")
    assert back.lm_head.weight_q is back.transformer.wte.weight_q
    with torch.no_grad():
        assert torch.equal(back(input_ids=ids).logits, out)
