"""Factorizing whole models: rank rules, in-place replacement, costs by hand, save/load."""
import pytest
import torch
from torch import nn

from nncompress.architectures import build_model
from nncompress.core import UserError
from nncompress.lowrank import LowRank, factorize, load_factorized, save_factorized


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                                      nn.ReLU(), nn.Conv2d(16, 16, 1))
        self.fc = nn.Linear(16 * 5 * 5, 4)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


def test_full_rank_svd_model_gives_the_same_outputs():
    torch.manual_seed(0)
    net = build_model("lenet300", (1, 8, 8), 10)
    x = torch.randn(4, 1, 8, 8)
    before = net(x)
    report = factorize(net, "svd", ranks={"fc1": 64, "fc2": 100, "fc3": 10})
    assert all(isinstance(getattr(net, n), LowRank) for n in ("fc1", "fc2", "fc3"))
    assert torch.allclose(net(x), before, atol=1e-5)
    assert max(lf.rel_error for lf in report.layers) < 1e-5


def test_full_rank_tucker_and_cp_models_give_the_same_outputs():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 10, 10)
    net = ConvNet()
    before = net(x)
    factorize(net, "tucker", ranks={"features.0": (8, 3), "features.2": (16, 8)})
    assert isinstance(net.features[0], LowRank) and isinstance(net.features[2], LowRank)
    assert isinstance(net.features[4], nn.Conv2d)  # 1×1 convolutions are not candidates
    assert torch.allclose(net(x), before, atol=1e-4)


def test_svd_ratio_rank_by_hand():
    # fc1 784→300: dense 235,200 + 300 bias; budget /5 = 47,100 ≥ r·(784+300) + 300 → r = 43
    net = build_model("lenet300", (1, 28, 28), 10)
    report = factorize(net, "svd", ratio=5, layers=["fc1", "fc2"])
    fc1, fc2 = report.layers
    assert fc1.ranks == (43,) and fc1.params_after == 43 * 1084 + 300
    # fc2 300→100: (30,000 + 100)/5 = 6,020 ≥ 400·r + 100 → r = 14
    assert fc2.ranks == (14,) and fc2.params_after == 14 * 400 + 100
    assert report.param_ratio == pytest.approx((235_500 + 30_100) / (43 * 1084 + 300 + 14 * 400 + 100))
    assert isinstance(net.fc3, nn.Linear)


def test_tucker_costs_by_hand():
    net = ConvNet()
    report = factorize(net, "tucker", ranks={"features.2": (4, 2)}, example_input=torch.randn(1, 3, 10, 10))
    (lf,) = report.layers
    # conv 8→16, 3×3, stride 2: input 10×10, output 5×5
    assert lf.params_before == 16 * 8 * 9 + 16 and lf.macs_before == 16 * 8 * 9 * 25
    assert lf.params_after == 8 * 2 + 2 * 4 * 9 + 4 * 16 + 16
    assert lf.macs_after == 8 * 2 * 100 + 2 * 4 * 9 * 25 + 4 * 16 * 25


def test_cp_costs_by_hand():
    net = ConvNet()
    report = factorize(net, "cp", ranks={"features.2": 3}, example_input=torch.randn(1, 3, 10, 10))
    (lf,) = report.layers
    assert lf.params_after == 3 * (8 + 3 + 3 + 16) + 16
    # 1×1 at 10×10, 3×1 (stride 2 vertical) at 5×10, 1×3 (stride 2 horizontal) at 5×5, 1×1 at 5×5
    assert lf.macs_after == 8 * 3 * 100 + 3 * 3 * 50 + 3 * 3 * 25 + 3 * 16 * 25


def test_mac_ratio_target_is_met():
    net = build_model("lenet5", (1, 28, 28), 10)
    report = factorize(net, "tucker", ratio=3, ratio_of="macs", example_input=torch.randn(1, 1, 28, 28), layers=["conv2"])
    (lf,) = report.layers
    assert lf.macs_before / lf.macs_after >= 3
    assert report.mac_ratio >= 3


def test_energy_rule_and_skipping_layers_without_saving():
    torch.manual_seed(0)
    net = build_model("lenet300", (1, 8, 8), 10)
    with torch.no_grad():  # make fc2 exactly rank 5: energy 0.99 must find 5
        net.fc2.weight.copy_(torch.randn(100, 5) @ torch.randn(5, 300))
    report = factorize(net, "svd", energy=0.99)
    by_name = {lf.name: lf for lf in report.layers}
    assert by_name["fc2"].ranks == (5,) and by_name["fc2"].rel_error < 1e-5
    assert by_name["fc3"].skipped is not None and isinstance(net.fc3, nn.Linear)  # 100×10 at high rank: no saving
    assert by_name["fc3"].params_after == by_name["fc3"].params_before


def test_vbmf_rule_runs_per_method():
    torch.manual_seed(0)
    net = build_model("lenet300", (1, 8, 8), 10)
    with torch.no_grad():
        net.fc1.weight.copy_(torch.randn(300, 4) @ torch.randn(4, 64) + 0.01 * torch.randn(300, 64))
    report = factorize(net, "svd", vbmf=True, layers=["fc1"])
    assert report.layers[0].ranks == (4,)


def test_rule_errors_are_user_errors():
    net = build_model("lenet300", (1, 8, 8), 10)
    with pytest.raises(UserError, match="exactly one"):
        factorize(net, "svd", energy=0.9, ratio=2)
    with pytest.raises(UserError, match="exactly one"):
        factorize(net, "svd")
    with pytest.raises(UserError, match="unknown factorization"):
        factorize(net, "qr", energy=0.9)
    with pytest.raises(UserError, match="candidates"):
        factorize(net, "tucker", energy=0.9, layers=["fc1"])
    with pytest.raises(UserError, match="no k×k Conv2d"):
        factorize(net, "cp", energy=0.9)
    with pytest.raises(UserError, match="example_input"):
        factorize(net, "svd", ratio=2, ratio_of="macs")


def test_save_and_load_factorized(tmp_path):
    torch.manual_seed(0)
    net = build_model("lenet5", (1, 8, 8), 10)
    factorize(net, "tucker", ranks={"conv2": (10, 5)})
    factorize(net, "svd", ranks={"fc1": 20})
    path = save_factorized(net, tmp_path / "f.safetensors")
    fresh = load_factorized(build_model("lenet5", (1, 8, 8), 10), path)
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(fresh(x), net(x))
    assert fresh.conv2.ranks == (10, 5) and fresh.fc1.ranks == (20,)


def test_cp_energy_rule_finds_the_cp_rank():
    g = torch.Generator().manual_seed(0)
    a, b, c, d = (torch.randn(n, 3, generator=g) for n in (16, 8, 3, 3))
    net = ConvNet()
    with torch.no_grad():
        net.features[2].weight.copy_(torch.einsum("or,ir,hr,wr->oihw", a, b, c, d))
    report = factorize(net, "cp", energy=0.999, layers=["features.2"])
    assert report.layers[0].ranks == (3,) and report.layers[0].rel_error < 1e-3
