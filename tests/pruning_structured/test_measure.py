"""MAC and parameter counts against hand-worked values and the published ResNet sizes."""
import pytest
import torch
from torch import nn

from nncompress.architectures import LeNet5, LeNet300100, resnet20, resnet56
from nncompress.architectures.resnet_cifar import ResNetCifar
from nncompress.pruning.structured import count_macs, count_params, latency_ms
from nncompress.pruning.structured.measure import num_threads


def test_lenet_macs_hand_worked():
    # conv1 20·25·24·24 + conv2 50·20·25·8·8 + fc1 800·500 + fc2 500·10
    assert count_macs(LeNet5(), torch.randn(3, 1, 28, 28)) == 288_000 + 1_600_000 + 400_000 + 5_000
    assert count_macs(LeNet300100(), torch.randn(1, 1, 28, 28)) == 784 * 300 + 300 * 100 + 100 * 10


def test_depthwise_and_strided_conv_macs():
    m = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), nn.Conv2d(8, 4, 1))
    # depthwise: 8 channels · 9 taps · 4·4 outputs; pointwise: 4·8 · 4·4
    assert count_macs(m, torch.randn(1, 8, 8, 8)) == 8 * 9 * 16 + 4 * 8 * 16


def test_resnet_cifar_sizes_match_he_et_al():
    # He et al. 2016, Table 6: ResNet-20 0.27 M, ResNet-56 0.85 M parameters (option-B shortcuts add ~3 k)
    assert count_params(resnet20()) == pytest.approx(0.27e6, abs=0.006e6)
    assert count_params(resnet56()) == pytest.approx(0.85e6, abs=0.006e6)
    assert count_macs(resnet20(), torch.randn(1, 3, 32, 32)) == pytest.approx(41e6, rel=0.02)  # ≈41 M MACs at 32×32
    with pytest.raises(ValueError, match=r"6n\+2"):
        ResNetCifar(depth=21)


def test_latency_is_positive_and_threads_restored():
    before = torch.get_num_threads()
    with num_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    assert latency_ms(nn.Linear(8, 8), torch.randn(4, 8), repeats=3) > 0
