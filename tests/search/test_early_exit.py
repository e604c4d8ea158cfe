import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import nncompress.search.early_exit as ee
from nncompress.architectures import build_model
from nncompress.architectures.summary import count_macs
from nncompress.core.errors import UserError
from nncompress.search import (
    EarlyExitNet, ExitLoss, calibrate_thresholds, early_exit_report, simulate_exits, thresholds_for_budget, to_sequential,
)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    backbone = build_model("mobilenet_v1", (1, 8, 8), 10, width_mult=0.25)
    return EarlyExitNet(backbone, [2, 6], (1, 8, 8), 10).eval()


def test_to_sequential():
    m = build_model("mobilenet_v2", (1, 28, 28), 10, width_mult=0.25)
    seq = to_sequential(m)
    assert len(seq) == len(m.features) + 1
    x = torch.randn(2, 1, 28, 28)
    m.eval()
    torch.testing.assert_close(seq(x), m(x))
    with pytest.raises(UserError):
        to_sequential(build_model("lenet5"))


def test_bad_exit_points():
    m = build_model("mobilenet_v1", (1, 8, 8), 10, width_mult=0.25)
    with pytest.raises(UserError):
        EarlyExitNet(m, [len(m.features)], (1, 8, 8), 10)  # after the last feature layer: the classifier follows
    with pytest.raises(UserError):
        EarlyExitNet(m, [], (1, 8, 8), 10)


def test_threshold_one_equals_the_full_model(net):
    x = torch.randn(16, 1, 8, 8)
    full = net(x)
    logits, exits = net.predict(x, [1.0, 1.0])
    torch.testing.assert_close(logits, full)
    assert exits.tolist() == [2] * 16


def test_threshold_zero_exits_everything_at_the_first_exit(net):
    x = torch.randn(8, 1, 8, 8)
    logits, exits = net.predict(x, [0.0, 0.0])
    torch.testing.assert_close(logits, net.forward_all(x)[0])
    assert exits.tolist() == [0] * 8


def test_dynamic_inference_matches_the_rule_sample_by_sample(net):
    torch.manual_seed(1)
    x = torch.randn(64, 1, 8, 8) * 3
    with torch.no_grad():
        outs = net.forward_all(x)
    confs = [o.softmax(1).amax(1) for o in outs[:-1]]
    taus = [float(confs[0].median()), float(confs[1].median())]
    logits, exits = net.predict(x, taus)
    for i in range(64):
        k = next((j for j in range(2) if confs[j][i] > taus[j]), 2)  # first exit whose confidence beats τ
        assert exits[i] == k
        torch.testing.assert_close(logits[i], outs[k][i])
    assert 0 < (exits == 0).sum() < 64


def test_exit_loss_is_the_weighted_sum(net):
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    out = net(x)
    ce = nn.functional.cross_entropy
    base = ce(out, y)
    got = ExitLoss([0.3, 0.5], final_weight=2.0).loss(net, x, y, out, base)
    want = 2.0 * base + 0.3 * ce(net.exit_logits[0], y) + 0.5 * ce(net.exit_logits[1], y)
    torch.testing.assert_close(got, want)
    with pytest.raises(UserError):
        ExitLoss([1.0]).loss(net, x, y, out, base)


def _two_class_logits(confs, right):
    """Logits whose softmax confidence is exactly `conf`, predicting class 0 when right else class 1."""
    rows = []
    for c, r in zip(confs, right):
        p0 = c if r else 1 - c
        rows.append([math.log(p0), math.log(1 - p0)])
    return torch.tensor(rows)


def test_calibration_hand_worked(monkeypatch, net):
    y = torch.zeros(4, dtype=torch.long)
    exit0 = _two_class_logits([0.9, 0.8, 0.7, 0.6], [True, False, True, True])
    final = _two_class_logits([0.99] * 4, [True] * 4)
    monkeypatch.setattr(ee, "collect_outputs", lambda n, loader: ([exit0, final], y))
    one = EarlyExitNet(build_model("mobilenet_v1", (1, 8, 8), 2, width_mult=0.25), [2], (1, 8, 8), 2)
    # budget 0: τ = 0, 0.6, 0.7 all let the wrong sample (0.8) out; τ = 0.8 lets only the 0.9 one exit
    assert calibrate_thresholds(one, None, max_drop_pp=0.0) == [pytest.approx(0.8)]
    # budget 25 pp = one of four samples: everything may exit
    assert calibrate_thresholds(one, None, max_drop_pp=25.0) == [0.0]
    assert one.thresholds.tolist() == [0.0]
    with pytest.raises(UserError):
        calibrate_thresholds(one, None, max_drop_pp=-1)


def test_simulated_policy_hand_worked():
    y = torch.zeros(4, dtype=torch.long)
    exit0 = _two_class_logits([0.9, 0.8, 0.7, 0.6], [True, False, True, True])
    final = _two_class_logits([0.99] * 4, [True] * 4)
    outs = [exit0, final]
    assert thresholds_for_budget(outs, y, 0.0) == [pytest.approx(0.8)]
    # segments cost 100 and 300 MACs, the head 10: exiting costs 110, going through 410 (head included)
    r = simulate_exits(outs, y, [0.8], [100, 300], [10])
    assert r["avg_macs"] == pytest.approx((110 + 3 * 410) / 4) and r["top1"] == 100.0
    assert r["exit_fraction"] == [0.25, 0.75]
    r = simulate_exits(outs, y, [0.0], [100, 300], [10])
    assert r["avg_macs"] == 110 and r["top1"] == 75.0 and r["macs_saving"] == pytest.approx(1 - 110 / 400)
    r = simulate_exits(outs, y, [1.0], [100, 300], [10])  # τ = 1: head skipped, the backbone's cost exactly
    assert r["avg_macs"] == 400 and r["top1"] == 100.0


def test_calibration_keeps_the_drop_within_budget_and_report_counts_macs():
    from nncompress.data import load_dataset
    from nncompress.training import TrainConfig, train

    ds = load_dataset("digits").subset(500, 200)
    torch.manual_seed(0)
    net = EarlyExitNet(build_model("mobilenet_v1", ds.input_shape, ds.num_classes, width_mult=0.25), [2, 6],
                       ds.input_shape, ds.num_classes)
    loader = DataLoader(TensorDataset(ds.x_train, ds.y_train), batch_size=32, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    train(net, loader, TrainConfig(epochs=2, lr=0.05, progress=False), callbacks=[ExitLoss()])
    held = DataLoader(TensorDataset(ds.x_test, ds.y_test), batch_size=256)
    seg, heads = net.costs_macs()
    assert sum(seg) == count_macs(build_model("mobilenet_v1", ds.input_shape, ds.num_classes, width_mult=0.25), ds.input_shape)

    net.thresholds.fill_(1.0)
    r = early_exit_report(net, held, latency_samples=20, repeats=1)
    assert r["avg_macs"] == r["full_macs"] == sum(seg) and r["early_exit_top1"] == r["full_top1"]
    assert r["exit_fraction"][-1] == 1.0

    for budget in (0.0, 2.0):
        calibrate_thresholds(net, held, max_drop_pp=budget)  # calibrated and measured on the same data: guaranteed
        r = early_exit_report(net, held, latency_samples=20, repeats=1)
        assert r["top1_drop_pp"] <= budget + 1e-6
        fr = r["exit_fraction"]
        used = [h if t < 1.0 else 0 for h, t in zip(heads, r["thresholds"])]
        want = fr[0] * (seg[0] + used[0]) + fr[1] * (seg[0] + seg[1] + used[0] + used[1]) + fr[2] * (sum(seg) + sum(used))
        assert r["avg_macs"] == pytest.approx(want, rel=1e-9)
        outs, y = ee.collect_outputs(net, held)  # the simulated policy agrees with the real dynamic inference
        sim = simulate_exits(outs, y, r["thresholds"], seg, heads)
        assert sim["top1"] == pytest.approx(r["early_exit_top1"]) and sim["avg_macs"] == pytest.approx(r["avg_macs"])
