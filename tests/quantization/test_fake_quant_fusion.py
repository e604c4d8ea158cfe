import math

import pytest
import torch
from torch import nn

from nncompress.quantization import LSQQuantizer, fake_quantize_ste, fold_bn, fuse_conv_bn


def test_ste_gradient_is_one_inside_zero_outside():
    x = torch.tensor([-2.0, 0.33, 0.9, 5.0], requires_grad=True)
    y = fake_quantize_ste(x, 0.1, 0, -10, 10)  # representable range [-1.0, 1.0]
    assert y.tolist() == pytest.approx([-1.0, 0.3, 0.9, 1.0])
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]


def test_lsq_forward_and_step_gradient_hand_worked():
    q = LSQQuantizer(bits=2, signed=True)  # Q_N = 2, Q_P = 1
    q.initialized.fill_(True)
    q.step.data = torch.tensor(1.0)
    x = torch.tensor([0.4, -3.0, 2.0], requires_grad=True)
    y = q(x)
    assert y.tolist() == [0.0, -2.0, 1.0]
    y.sum().backward()
    # ∂ŷ/∂s: inside −x/s + round(x/s) = −0.4; below −Q_N = −2; above Q_P = 1; times g = 1/√(N·Q_P) = 1/√3
    assert q.step.grad.item() == pytest.approx((-0.4 - 2 + 1) / math.sqrt(3))
    assert x.grad.tolist() == [1.0, 0.0, 0.0]  # STE inside, clipped outside


def test_lsq_init_is_paper_formula():
    q = LSQQuantizer(bits=4, signed=True)
    x = torch.tensor([1.0, -3.0, 2.0, 0.0])
    q(x)
    assert q.step.item() == pytest.approx(2 * 1.5 / math.sqrt(7))  # 2·mean|x| / √Q_P


def test_fold_bn_matches_conv_then_bn():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.5, 0.5)
    bn.eval()
    x = torch.randn(2, 3, 8, 8)
    w, b = fold_bn(conv.weight, conv.bias, bn)
    assert torch.allclose(nn.functional.conv2d(x, w, b), bn(conv(x)), atol=1e-5)


def test_fuse_conv_bn_model(trained_net, digits):
    fused = fuse_conv_bn(trained_net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    x = digits.x_test[:32]
    with torch.no_grad():
        assert torch.allclose(fused(x), trained_net(x), atol=1e-4)
