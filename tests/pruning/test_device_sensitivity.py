"""Pruning sweeps and schedule callbacks on the model's device. The GPU tests run where CUDA is."""
import copy

import pytest
import torch

from nncompress.architectures import build_model
from nncompress.data import load_dataset, make_loaders
from nncompress.pruning import AGPPruner, SplicingPruner, get_mask, sensitivity_analysis
from nncompress.training import TrainConfig, evaluate, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    ds = load_dataset("digits").subset(512, 200)
    train_loader, test_loader = make_loaders(ds, batch_size=32)
    model = build_model("lenet300", ds.input_shape, ds.num_classes)
    train(model, train_loader, TrainConfig(epochs=3, lr=0.05, device="cpu", progress=False))
    return model, train_loader, test_loader


def test_sensitivity_sweep_on_cuda_matches_cpu(trained):
    model, _, test_loader = trained
    levels = (0.0, 0.5, 0.9)
    cpu = sensitivity_analysis(model, lambda m: evaluate(m, test_loader), levels, progress=False)
    gpu_model = copy.deepcopy(model).cuda()
    gpu = sensitivity_analysis(gpu_model, lambda m: evaluate(m, test_loader), levels, progress=False)
    one_sample = 100.0 / len(test_loader.dataset)
    assert gpu.baseline == pytest.approx(cpu.baseline, abs=2 * one_sample)
    for layer, values in cpu.metrics.items():
        assert gpu.metrics[layer] == pytest.approx(values, abs=2 * one_sample), layer
    assert all(p.device.type == "cuda" for p in gpu_model.parameters()) and all(get_mask(m) is None for m in gpu_model.modules())


@pytest.mark.parametrize("make", [lambda: AGPPruner(0.8, n_steps=4, frequency=2), lambda: SplicingPruner(c=0.5, frequency=2)])
def test_schedule_callbacks_train_on_cuda(trained, make):
    model, train_loader, _ = trained
    model = copy.deepcopy(model).cuda()
    train(model, train_loader, TrainConfig(epochs=1, lr=0.01, device="cuda", progress=False), callbacks=[make()])
    for name in ("fc1", "fc2", "fc3"):
        layer = model.get_submodule(name)
        mask = get_mask(layer)
        assert mask is not None and mask.device.type == "cuda" and 0.0 < float((layer.weight == 0).float().mean()) < 1.0, name
