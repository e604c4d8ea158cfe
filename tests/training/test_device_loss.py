"""The epoch loss is accumulated on the training device and read once per epoch; the sum is the float64 one
that reading each step's loss as a Python float gave, bit for bit."""
import pytest
import torch
from torch import nn

from nncompress.training import Callback, TrainConfig, train


class RecordLoss(Callback):
    """Keeps Σ float(loss)·len(y) the way the loop used to, one host read per step."""

    def __init__(self):
        self.sums: list[float] = []
        self.n = 0

    def on_epoch_begin(self, epoch, model):
        self.sums.append(0.0)
        self.n = 0

    def loss(self, model, x, y, output, loss):
        self.sums[-1] += float(loss.detach()) * len(y)
        self.n += len(y)
        return loss


def _run(device: str) -> tuple[list[dict], RecordLoss, int]:
    torch.manual_seed(0)
    x, y = torch.randn(100, 6), torch.randint(0, 3, (100,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)  # last batch: 4 samples
    rec = RecordLoss()
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    hist = train(model, loader, TrainConfig(epochs=3, lr=0.1, device=device, progress=False), callbacks=[rec])
    return hist, rec, len(x)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                                          reason="needs a CUDA GPU"))])
def test_epoch_loss_is_the_sample_weighted_mean_bit_for_bit(device):
    hist, rec, n = _run(device)
    assert rec.n == n
    assert [h["loss"] for h in hist] == [s / n for s in rec.sums]  # exact equality, not approx
    assert hist[-1]["loss"] < hist[0]["loss"]
