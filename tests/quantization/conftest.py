import pytest
import torch
from torch import nn

from nncompress.data import load_dataset, make_loaders
from nncompress.training import TrainConfig, train


class TinyConvBN(nn.Module):
    """conv-bn-relu ×2 → pool → linear: small enough to train on digits in about a second."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
        return self.fc(torch.flatten(x, 1))


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits").subset(1000, 400)


@pytest.fixture(scope="session")
def loaders(digits):
    return make_loaders(digits, batch_size=64)


@pytest.fixture(scope="session")
def trained_net(loaders):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = TinyConvBN()
    train(net, loaders[0], TrainConfig(epochs=4, lr=0.05, seed=0, progress=False))
    return net.eval()
