"""Structured pruning on a GPU: scores, thinning, dead-unit removal, the group-lasso callback and the sensitivity
scan follow the model's device while example inputs and data may stay on the CPU. Skipped without CUDA."""
import copy

import pytest
import torch
from torch import nn

from nncompress.pruning.structured import (
    LatencyTable,
    StructuredRegularizer,
    build_dependency_graph,
    group_lasso,
    prune_channels,
    remove_dead_channels,
    structured_sensitivity,
)
from nncompress.training import TrainConfig, train

from .models import MobileNetV2Tiny, Residual, randomize_bn

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)


def _on_cuda(model: nn.Module) -> bool:
    return all(t.device.type == "cuda" for t in [*model.parameters(), *model.buffers()])


@pytest.mark.parametrize(("make", "criterion"), [(Residual, "l1"), (Residual, "taylor"), (MobileNetV2Tiny, "bn_scale"),
                                                   (MobileNetV2Tiny, "taylor")])
def test_prune_channels_on_cuda_matches_cpu(make, criterion):
    torch.manual_seed(0)
    model = randomize_bn(make())
    if isinstance(model, MobileNetV2Tiny):
        model.classifier = nn.Linear(16, 4)  # four classes, like the data
    x, y = _data()
    batches = [(x[:32], y[:32]), (x[32:], y[32:])]
    cpu = prune_channels(model, x[:2], criterion, 0.5, data=batches)
    gpu = prune_channels(copy.deepcopy(model).cuda(), x[:2], criterion, 0.5, data=batches)  # inputs stay on the CPU
    assert _on_cuda(gpu)
    assert [p.shape for p in cpu.parameters()] == [p.shape for p in gpu.parameters()]
    with torch.no_grad():
        assert torch.allclose(cpu.eval()(x), gpu.eval()(x.cuda()).cpu(), atol=1e-4)


def test_dead_units_removed_on_cuda_match_cpu():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        model[1].weight[2:4] = 0  # no inputs: constant units, folded into the next bias
        model[3].weight[:, 5] = 0  # no outputs
    x = torch.randn(16, 12)
    cpu, removed_cpu = remove_dead_channels(model, x)
    gpu, removed_gpu = remove_dead_channels(copy.deepcopy(model).cuda(), x)
    assert removed_gpu == removed_cpu and sum(removed_cpu.values()) > 0 and _on_cuda(gpu)
    with torch.no_grad():
        assert torch.allclose(cpu(x), gpu(x.cuda()).cpu(), atol=1e-5)


def test_group_lasso_fine_tune_on_cuda():
    torch.manual_seed(0)
    model = Residual()
    x, y = _data()
    graph = build_dependency_graph(model, x[:2])
    expected = group_lasso(model, graph).detach()
    assert torch.allclose(group_lasso(copy.deepcopy(model).cuda(), graph).cpu(), expected, rtol=1e-5)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    reg = StructuredRegularizer(model, x[:2], group_lasso=1e-2, bn_l1=1e-3)
    hist = train(model, loader, TrainConfig(epochs=2, lr=0.01, device="cuda", progress=False), callbacks=[reg])
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in hist)
    assert next(model.parameters()).device.type == "cpu" and float(group_lasso(model, reg.graph).detach()) < float(expected)


def test_structured_sensitivity_on_cuda_matches_cpu():
    torch.manual_seed(0)
    model = randomize_bn(Residual())
    x, y = _data(200)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=50)
    cpu = structured_sensitivity(model, x[:2], loader, ratios=(0.25, 0.5), progress=False)
    gpu = structured_sensitivity(copy.deepcopy(model).cuda(), x[:2], loader, ratios=(0.25, 0.5), progress=False)
    assert gpu.keys() == cpu.keys()
    for name, curve in cpu.items():
        assert gpu[name] == pytest.approx(curve, abs=2 * 100.0 / len(x)), name


def test_latency_table_times_layers_on_the_models_device():
    model = Residual().cuda()
    x = _data(4)[0]  # stays on the CPU
    table = LatencyTable(model, x, repeats=3)
    assert table.model_ms > 0 and table.layer_ms("a", 8, 3) > 0
    assert next(table.layers["a"].parameters()).device.type == "cuda"
