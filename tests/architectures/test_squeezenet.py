"""SqueezeNet: the paper's form at ImageNet size, the trainable form (BatchNorm, no ReLU on logits) on small inputs."""
import pytest
import torch
from torch import nn

from nncompress.architectures import build_model


def test_imagenet_size_keeps_the_paper_form():
    m = build_model("squeezenet1_1", (3, 224, 224), 1000)
    assert isinstance(m.classifier[2], nn.ReLU)  # conv10 → ReLU → pool
    assert not any(isinstance(layer, nn.BatchNorm2d) for layer in m.modules())
    small = build_model("squeezenet1_1", (1, 28, 28), 10)
    assert not any(isinstance(layer, nn.ReLU) for layer in small.classifier)
    assert any(isinstance(layer, nn.BatchNorm2d) for layer in small.modules())
    paper = build_model("squeezenet1_1", (1, 28, 28), 10, batch_norm=False, relu_logits=True)
    assert isinstance(paper.classifier[2], nn.ReLU)
    assert not any(isinstance(layer, nn.BatchNorm2d) for layer in paper.modules())


@pytest.mark.parametrize("name", ["squeezenet1_0", "squeezenet1_1"])
def test_small_squeezenet_learns_on_digits(name):
    # with the paper's conv10 → ReLU → pool and no BN, the small variants stayed at chance: the logits died
    from nncompress.data import load_dataset, make_loaders
    from nncompress.training import TrainConfig, evaluate, train

    ds = load_dataset("digits").subset(600, 300)
    train_loader, test_loader = make_loaders(ds, batch_size=32)
    torch.manual_seed(0)
    m = build_model(name, ds.input_shape, ds.num_classes)
    train(m, train_loader, TrainConfig(epochs=5, lr=0.003, optimizer="adam", progress=False))
    assert evaluate(m, test_loader) > 60.0  # 10 classes: chance is 10%
