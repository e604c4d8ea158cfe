"""NetAdapt: the latency table measures real layers, the loop shrinks the network until measured latency fits."""
import pytest
import torch
from torch import nn

from nncompress.data import load_dataset, make_loaders
from nncompress.pruning.structured.measure import latency_pair_ms
from nncompress.pruning.structured.netadapt import LatencyTable, layer_widths, netadapt
from nncompress.training import TrainConfig, evaluate, train


class Wide(nn.Module):
    """Two wide 3×3 convolutions dominate the latency, as in real CNNs."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 48, 3, padding=1)
        self.c2 = nn.Conv2d(48, 48, 3, padding=1)
        self.fc = nn.Linear(48, 10)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def test_latency_table_times_layers_at_the_asked_widths():
    model, x = Wide().eval(), torch.randn(32, 1, 8, 8)
    table = LatencyTable(model, x, threads=1, repeats=5)
    assert table.input_shapes["c2"] == (32, 48, 8, 8) and table.input_shapes["fc"] == (32, 48)
    wide, narrow = table.layer_ms("c2", 48, 48), table.layer_ms("c2", 4, 4)
    assert wide > 5 * narrow  # 144× the MACs: no scheduler noise hides that
    assert ("c2", 4, 4) in table.table and table.model_ms > 0
    full = {"c1": (1, 48), "c2": (48, 48), "fc": (48, 10)}
    assert table.estimate_ms(full) == pytest.approx(table.model_ms)  # the estimate is anchored on the measured model


def test_netadapt_meets_a_measured_latency_budget():
    torch.manual_seed(0)
    ds = load_dataset("digits").subset(800, 300)
    train_loader, test_loader = make_loaders(ds, batch_size=64)
    val = load_dataset("digits")
    _, val_loader = make_loaders(val.subset(1, 300))  # held-out digits for choosing proposals
    model = Wide()
    train(model, train_loader, TrainConfig(epochs=3, lr=0.05, progress=False))
    top1 = evaluate(model, test_loader)
    x = ds.x_test[:32]
    result = netadapt(model, train_loader, val_loader, x, latency_budget=0.5, step=0.25, decay=1.0, short_steps=5,
                      long_epochs=1, repeats=5)
    assert result.history, "no iteration ran"
    widths = layer_widths(result.model)
    assert widths["c2"][1] < 48 or widths["c1"][1] < 48
    before_ms, after_ms = latency_pair_ms(model, result.model, x, repeats=15)  # interleaved: shared-CPU noise hits both
    assert after_ms < 0.9 * before_ms  # the loop aims at 0.5×; other processes on this CPU blur the figure
    assert evaluate(result.model, test_loader) > top1 - 15
    assert model.c2.out_channels == 48  # the input model is untouched
