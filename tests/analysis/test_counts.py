import torch
from torch import nn
from torch.nn.utils import parametrize

from nncompress.analysis import count_parameters, sparsity
from nncompress.architectures import build_model


class _Mask(nn.Module):
    def __init__(self, mask):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w):
        return w * self.mask


def _layer():
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 3.0]]))  # 3 of 6 non-zero
        lin.bias.copy_(torch.tensor([0.0, 5.0]))  # 1 of 2 non-zero
    return lin


def test_counts_weights_and_biases_separately():
    c = count_parameters(nn.Sequential(_layer())).layers["0"]
    assert (c.weight_params, c.weight_nnz, c.bias_params, c.bias_nnz) == (6, 3, 2, 1)
    assert c.weight_sparsity == 0.5 and c.bias_sparsity == 0.5
    assert c.params == 8 and c.nnz == 4 and c.sparsity == 0.5
    assert c.weight_shape == (2, 3) and c.type == "Linear"


def test_sparsity_is_l0():
    assert sparsity(torch.tensor([0.0, 1.0, 0.0, -2.0, 0.0])) == 1 - 2 / 5
    assert sparsity(torch.zeros(0)) == 0.0


def test_parametrized_weight_counts_effective_zeros():
    lin = _layer()
    with torch.no_grad():
        lin.weight.fill_(1.0)  # dense underlying tensor ...
    mask = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    parametrize.register_parametrization(lin, "weight", _Mask(mask))  # ... 2 of 6 survive the mask
    counts = count_parameters(nn.Sequential(lin))
    assert list(counts.layers) == ["0"]  # parametrize internals are not layers
    assert counts.layers["0"].weight_nnz == 2 and counts.layers["0"].weight_params == 6


def test_lenet_totals_match_the_papers():
    # LeNet-300-100: 784·300+300 + 300·100+100 + 100·10+10 = 266,610; LeNet-5 (Caffe): 431,080
    assert count_parameters(build_model("lenet300")).params == 266_610
    lenet5 = count_parameters(build_model("lenet5"))
    assert lenet5.params == 431_080
    assert lenet5.weight_params == 500 + 25_000 + 400_000 + 5_000 and lenet5.bias_params == 20 + 50 + 500 + 10
    assert lenet5.sparsity == 0.0
