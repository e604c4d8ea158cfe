"""A Conv2d subclass with its own forward (TF-"SAME" padding, as EfficientNet-Lite's pretrained weights need) keeps
that forward inside the fx quantization graph: the quantized layer must pad as the float one does."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from nncompress.quantization.graph import QuantLayer
from nncompress.quantization.ptq import quantize_static
from nncompress.quantization.qat import convert_qat, prepare_qat


class SameConv(nn.Conv2d):
    """Pads (total // 2, total - total // 2) from the input size, then convolves with padding 0."""

    def forward(self, x):
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        (t, b), (l, r) = pads
        return F.conv2d(F.pad(x, (l, r, t, b)), self.weight, self.bias, self.stride, 0)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(SameConv(3, 8, 3, stride=2, padding=0), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5)).eval()


def test_static_graph_keeps_the_same_padding():
    net, x = _net(), torch.randn(4, 3, 8, 8)
    # 8x8, k3, s2: total padding (4-1)*2 + 3 - 8 = 1 -> (0 top, 1 bottom); with padding lost the map would be 3x3
    # and the Linear(128) would refuse the 72 features
    gm = quantize_static(net, [x])
    assert any(isinstance(m, QuantLayer) and isinstance(m.layer, SameConv) for m in gm.modules())
    with torch.no_grad():
        ref, out = net(x), gm(x)
    assert out.shape == ref.shape == (4, 5)
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()  # 8-bit: close, and computed on the same alignment


def test_qat_graph_keeps_the_same_padding():
    net, x = _net(), torch.randn(4, 3, 8, 8)
    gm = convert_qat(prepare_qat(net, x, weight_bits=8, act_bits=8))
    with torch.no_grad():
        ref, out = net(x), gm(x)
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
