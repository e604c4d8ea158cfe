"""A swapped layer still answers `layer.weight` (dequantized), so model code that reads it keeps working."""
import torch
from torch import nn

from nncompress.quantization.swap import DynamicInt8Config, quantize_


def test_weight_is_the_dequantized_codes_hand_worked():
    lin = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -0.5], [0.25, 0.0]]))
    q = quantize_(lin, DynamicInt8Config())
    # per-channel symmetric int8: row 0 s = 1/127, -0.5/s = -63.5 rounds (half to even) to -64; row 1 s = 0.25/127
    expected = torch.tensor([[1.0, -64 / 127], [0.25, 0.0]])
    assert q.weight.dtype == torch.float32 and q.weight.shape == (2, 2)
    assert torch.allclose(q.weight, expected, atol=1e-7)
    assert "weight" not in q.state_dict()  # computed on access; what is stored are the codes and scales


def test_conv_weight_dtype_readable():
    conv = quantize_(nn.Sequential(nn.Conv2d(3, 4, 2)), DynamicInt8Config())[0]
    assert conv.weight.dtype == torch.float32 and conv.weight.shape == (4, 3, 2, 2)
