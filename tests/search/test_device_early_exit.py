"""Early exit on a GPU: heads are built beside the backbone and dynamic inference keeps its bookkeeping on the
input's device. Skipped without CUDA."""
import pytest
import torch
from torch import nn

from nncompress.search import EarlyExitNet, early_exit_report, simulate_exits

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _backbone() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def test_early_exit_net_on_cuda_matches_its_simulation():
    net = EarlyExitNet(_backbone().cuda(), [1, 3], (1, 8, 8), 10).eval()
    assert all(t.device.type == "cuda" for t in [*net.parameters(), *net.buffers()])
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    taus = [0.15, 0.2]
    logits, exits = net.predict(x.cuda(), taus)
    assert logits.device.type == exits.device.type == "cuda"
    with torch.no_grad():
        outs = [o.cpu() for o in net.forward_all(x.cuda())]
    seg, heads = net.costs_macs()
    sim = simulate_exits(outs, y, taus, seg, heads)
    assert [float((exits.cpu() == k).float().mean()) for k in range(3)] == pytest.approx(sim["exit_fraction"])
    net.thresholds.copy_(torch.tensor(taus))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    report = early_exit_report(net, loader, latency_samples=8, repeats=1)
    assert report["exit_fraction"] == pytest.approx(sim["exit_fraction"]) and report["avg_macs"] == pytest.approx(sim["avg_macs"])
