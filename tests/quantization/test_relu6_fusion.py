"""ReLU6 after a conv is fused into the quantized layer as a clamp, so the output quantizer calibrates on [0, 6]
and not on the pre-ReLU6 range (MobileNetV2 and EfficientNet-Lite use ReLU6 everywhere; issue 14)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from nncompress.quantization import quantize_static
from nncompress.quantization.graph import QuantLayer, quantizers


class Net(nn.Module):
    def __init__(self, act: nn.Module):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.act = act
        self.head = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[[[20.0]]], [[[-1.0]]]]))  # channel 0 reaches 20 before the clamp
            self.head.weight.copy_(torch.eye(2))

    def forward(self, x):
        return self.head(self.act(self.conv(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize("act", [nn.ReLU6(), nn.Hardtanh(0.0, 6.0)])
def test_relu6_is_fused_and_the_output_range_is_the_clamped_one(act):
    x = torch.linspace(0, 1, 16).reshape(1, 1, 4, 4)
    gm = quantize_static(Net(act).eval(), [x])
    layer = gm.get_submodule("conv")
    assert isinstance(layer, QuantLayer) and layer.relu_max == 6.0
    ranges = [q.observer.max_val for name, q in quantizers(gm).items() if "conv" in name and hasattr(q, "observer")]
    assert ranges and max(float(r.max()) for r in ranges) <= 6.0 + 1e-6  # 20·x would have given 20
    with torch.no_grad():
        out = gm(x)
        ref = Net(act).eval()(x)
    # channel 0 = mean(clamp(20x, 0, 6)), channel 1 = mean(relu(-x)) = 0; int8 steps of 6/255 at most
    assert torch.allclose(out, ref, atol=6 / 255)


def test_dynamic_mode_leaves_relu6_unfused():
    from nncompress.quantization import quantize_dynamic

    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)
            self.act = nn.ReLU6()

        def forward(self, x):
            return self.act(self.fc(x))

    gm = quantize_dynamic(Mlp().eval(), torch.randn(4, 2))
    assert getattr(gm.get_submodule("fc"), "relu_max", None) is None  # no output quantizer would clamp the top
