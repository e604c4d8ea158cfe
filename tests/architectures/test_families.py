"""Families at ImageNet size against the published tables; small-input variants build and train."""
import pytest
import torch

from nncompress.architectures import MODELS, build_model
from nncompress.architectures.mobilenet import MobileNetV1
from nncompress.architectures.summary import count_macs, count_params
from nncompress.architectures.zoo import REFERENCES, compare_published
from nncompress.core.errors import UserError

FAMILIES = ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "shufflenet_v1",
            "shufflenet_v2", "squeezenet1_0", "squeezenet1_1", "inception_v3"]

# published figures written out here, independent of zoo.REFERENCES: (params, MACs)
PUBLISHED = {
    "mobilenet_v1_1.0": (4.24e6, 569e6),  # TF-slim table
    "mobilenet_v1_0.25": (0.47e6, 41e6),  # TF-slim table
    "mobilenet_v2_1.0": (3.504872e6, 300e6),  # torchvision exact count; Sandler et al. Table 4 MACs
    "mobilenet_v3_large": (5.483032e6, 217e6),  # torchvision exact count; TF-slim table MACs (paper: 219 M)
    "mobilenet_v3_small": (2.542856e6, 56e6),  # torchvision exact count; paper Table 3 MACs
    "shufflenet_v1_g3": (1.87e6, 137e6),  # MMPretrain params; paper Table 1 complexity for g = 3
    "shufflenet_v2_1.0": (2.278604e6, 146e6),  # torchvision count; paper Table 5
    "squeezenet1_0": (1.248424e6, 820e6),  # torchvision
    "squeezenet1_1": (1.235496e6, 350e6),  # torchvision
    "inception_v3": (27.161264e6, 5.71e9),  # torchvision, 299×299, aux head
}


def test_every_family_matches_published_counts_within_1_percent():
    rows = {r["name"]: r for r in compare_published(list(PUBLISHED))}  # later families: test_new_families.py
    for name, (params, macs) in PUBLISHED.items():
        assert rows[name]["params"] == pytest.approx(params, rel=0.01), name
        assert rows[name]["macs"] == pytest.approx(macs, rel=0.01), name
    # the design document's rounded figures, where they are within their own rounding
    assert rows["mobilenet_v1_1.0"]["params"] == pytest.approx(4.2e6, rel=0.01)
    assert rows["mobilenet_v2_1.0"]["macs"] == pytest.approx(300e6, rel=0.01)
    assert rows["squeezenet1_0"]["params"] == pytest.approx(1.25e6, rel=0.01)
    assert rows["shufflenet_v2_1.0"]["params"] == pytest.approx(2.3e6, rel=0.01)
    assert 5.4e6 <= rows["mobilenet_v3_large"]["params"] < 5.5e6  # the paper's "5.4 M" is truncated
    assert 2.5e6 <= rows["mobilenet_v3_small"]["params"] < 2.6e6
    # SqueezeNet 1.1: slightly fewer parameters, ~2.4x fewer MACs (README); exact ratio of the tables: 2.34
    assert rows["squeezenet1_1"]["params"] < rows["squeezenet1_0"]["params"]
    assert 2.3 < rows["squeezenet1_0"]["macs"] / rows["squeezenet1_1"]["macs"] < 2.45
    with pytest.raises(UserError):
        compare_published(["nope"])
    assert set(PUBLISHED) <= set(REFERENCES)


@pytest.mark.parametrize("rho_size,macs", [(192, 418e6), (160, 291e6), (128, 186e6)])
def test_mobilenet_v1_resolution_multiplier(rho_size, macs):
    # TF-slim table: MobileNet_v1_1.0_{192,160,128}; ρ applied inside the model to a 224 input
    m = MobileNetV1(resolution_mult=rho_size / 224)
    assert count_macs(m, (3, 224, 224)) == pytest.approx(macs, rel=0.01)


def test_mobilenet_v1_width_multiplier():
    m = MobileNetV1(width_mult=0.5)  # TF-slim: 150 M MACs, 1.34 M params
    assert count_macs(m, (3, 224, 224)) == pytest.approx(150e6, rel=0.01)
    assert count_params(m) == pytest.approx(1.34e6, rel=0.01)


def test_resolution_multiplier_keeps_predictions_shape():
    m = MobileNetV1((3, 64, 64), 5, width_mult=0.25, resolution_mult=0.5).eval()
    assert m(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    with pytest.raises(ValueError):
        MobileNetV1(resolution_mult=1.5)


@pytest.mark.parametrize("name", FAMILIES)
def test_small_input_variants(name):
    shape = (1, 28, 28) if FAMILIES.index(name) % 2 == 0 else (3, 32, 32)  # MNIST and CIFAR sizes, alternating
    kwargs = {"width_mult": 0.25} if name in ("mobilenet_v1", "inception_v3", "mobilenet_v2") else {}
    m = build_model(name, shape, 10, **kwargs).eval()
    with torch.no_grad():
        feats = m.features(torch.randn(2, *shape))
        assert min(feats.shape[2:]) >= 2, "the feature map must not vanish on small inputs"
        assert m(torch.randn(2, *shape)).shape == (2, 10)


def test_small_variant_trains_on_digits():
    from nncompress.data import load_dataset, make_loaders
    from nncompress.training import TrainConfig, evaluate, train

    ds = load_dataset("digits").subset(600, 200)
    train_loader, test_loader = make_loaders(ds, batch_size=32)
    torch.manual_seed(0)
    m = build_model("mobilenet_v1", ds.input_shape, ds.num_classes, width_mult=0.25)
    before = evaluate(m, test_loader)
    history = train(m, train_loader, TrainConfig(epochs=5, lr=0.01, optimizer="adam", progress=False))
    assert history[-1]["loss"] < 0.6 * history[0]["loss"]
    assert evaluate(m, test_loader) > max(30.0, before + 15)  # 10 classes: chance is 10%


def test_all_families_registered():
    assert set(FAMILIES) <= set(MODELS)
    with pytest.raises(UserError):
        build_model("mobilenet_v9")


def test_inception_aux_head_only_in_training():
    m = build_model("inception_v3", (1, 28, 28), 10, width_mult=0.25, aux_logits=True)
    x = torch.randn(2, 1, 28, 28)
    out, aux = m.train()(x)
    assert out.shape == aux.shape == (2, 10)
    assert m.eval()(x).shape == (2, 10)


def test_counts_on_hand_worked_lenets():
    # LeNet-300-100: 784·300 + 300·100 + 100·10 = 266,200 MACs; LeNet-5 (Caffe, 28×28): 2,293,000
    assert count_macs(build_model("lenet300"), (1, 28, 28)) == 266_200
    assert count_macs(build_model("lenet5"), (1, 28, 28)) == 2_293_000
    assert count_params(build_model("lenet5")) == 431_080
