import torch
from torch import nn

from nncompress.analysis import count_macs
from nncompress.architectures import build_model


def test_lenet300_macs():
    # 784·300 + 300·100 + 100·10 = 235,200 + 30,000 + 1,000
    r = count_macs(build_model("lenet300"), (1, 28, 28))
    assert {n: l.macs for n, l in r.layers.items()} == {"fc1": 235_200, "fc2": 30_000, "fc3": 1_000}
    assert r.total_macs == 266_200


def test_lenet5_caffe_macs():
    r = count_macs(build_model("lenet5"), (1, 28, 28))
    # conv1 20·24·24·25; conv2 50·8·8·(20·25); fc1 800·500; fc2 500·10
    assert {n: l.macs for n, l in r.layers.items()} == {"conv1": 288_000, "conv2": 1_600_000, "fc1": 400_000, "fc2": 5_000}
    assert r.total_macs == 2_293_000
    assert r.layers["conv1"].output_shape == (1, 20, 24, 24)


def test_depthwise_pointwise_bn_relu():
    m = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.Conv2d(8, 16, 1))
    r = count_macs(m, (8, 10, 10))
    # depthwise: 8·10·10 outputs × (8/8)·3·3 = 7,200; pointwise: 16·10·10 × 8 = 12,800
    assert r.layers["0"].macs == 7_200 and r.layers["3"].macs == 12_800
    assert r.layers["1"].macs == 0 and r.layers["2"].macs == 0  # listed with 0 MACs
    assert [l.type for l in r.layers.values()] == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d"]
    assert r.total_macs == 20_000


def test_conv1d_conv_transpose_and_leading_dims():
    # Conv1d(3→4, k=5) on length 20: 4·16 outputs × 3·5 = 960
    assert count_macs(nn.Conv1d(3, 4, 5), (3, 20)).total_macs == 960
    # ConvTranspose2d(2→3, k=3, stride 2) on 4×4: 2·4·4 inputs × 3·3·3 = 864
    assert count_macs(nn.ConvTranspose2d(2, 3, 3, stride=2), (2, 4, 4)).total_macs == 864
    # Linear(16→4) on [1, 7, 16]: 7 rows × 16·4 = 448
    assert count_macs(nn.Linear(16, 4), (7, 16)).total_macs == 448


def test_shared_module_called_twice_counts_twice():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 5)

        def forward(self, x):
            return self.fc(self.fc(x))

    r = count_macs(Twice(), (5,))
    assert r.layers["fc"].macs == 50 and r.layers["fc"].calls == 2


def test_count_sparse_counts_only_nonzero_weights():
    lin = nn.Linear(4, 3)
    conv = nn.Conv2d(1, 2, 3)
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[0, :2] = 1.0  # 2 of 12 non-zero
        conv.weight.zero_()
        conv.weight[1, 0, 1, 1] = 1.0  # 1 of 18 non-zero
    # Linear on [1, 5, 4]: 5 rows × 2 = 10 (dense: 5 × 12 = 60)
    assert count_macs(lin, (5, 4), count_sparse=True).total_macs == 10
    assert count_macs(lin, (5, 4)).total_macs == 60
    # conv on 6×6 → 4×4 positions × 1 non-zero = 16 (dense: 2·16 × 9 = 288)
    assert count_macs(conv, (1, 6, 6), count_sparse=True).total_macs == 16
    assert count_macs(conv, (1, 6, 6)).total_macs == 288


def test_training_mode_restored():
    m = build_model("lenet300")
    m.train()
    count_macs(m, (1, 28, 28))
    assert m.training
