"""Sensitivity analysis on a tiny trained model, and SensitivityResult against a hand-built one."""
import json

import pytest
import torch

from nncompress.architectures import build_model
from nncompress.core.errors import UserError
from nncompress.data import load_dataset, make_loaders
from nncompress.pruning import SensitivityResult, masked_layers, sensitivity_analysis
from nncompress.training import TrainConfig, evaluate, train


def _hand_built():
    return SensitivityResult(
        levels=[0.0, 0.5, 0.8, 0.9],
        metrics={
            "fc1": [98.0, 97.9, 97.2, 90.0],  # drops 0, 0.1, 0.8, 8.0
            "fc2": [98.0, 96.0, 95.0, 94.0],  # drops 0, 2, 3, 4
            "fc3": [98.0, 97.5, 96.5, 97.2],  # drops 0, 0.5, 1.5, 0.8 (noisy)
        },
        baseline=98.0,
    )


def test_targets_pick_the_largest_level_within_max_drop():
    r = _hand_built()
    assert r.targets(1.0) == {"fc1": 0.8, "fc2": 0.0, "fc3": 0.9}
    assert r.targets(0.2) == {"fc1": 0.5, "fc2": 0.0, "fc3": 0.0}
    assert r.targets(5.0) == {"fc1": 0.8, "fc2": 0.9, "fc3": 0.9}
    with pytest.raises(UserError, match="max_drop"):
        r.targets(-1.0)


def test_round_trip_table_and_validation():
    r = _hand_built()
    again = SensitivityResult.from_dict(json.loads(json.dumps(r.to_dict())))
    assert again == r
    rows = r.table()
    assert len(rows) == 12
    assert rows[3] == {"layer": "fc1", "sparsity": 0.9, "top1": 90.0, "drop": 8.0}
    with pytest.raises(UserError, match="levels"):
        SensitivityResult.from_dict({"metrics": {}})
    with pytest.raises(UserError, match="3 metrics for 4 levels"):
        SensitivityResult(levels=[0.0, 0.5, 0.8, 0.9], metrics={"fc1": [1.0, 2.0, 3.0]}, baseline=1.0)


def test_plot_writes_a_png_atomically(tmp_path):
    path = _hand_built().plot(tmp_path / "out" / "s.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["s.png"]  # no temp files left


def test_sensitivity_analysis_on_a_tiny_trained_lenet():
    torch.set_num_threads(1)
    ds = load_dataset("digits").subset(600, 300)
    train_loader, test_loader = make_loaders(ds)
    model = build_model("lenet300", ds.input_shape, ds.num_classes)
    train(model, train_loader, TrainConfig(epochs=8, lr=0.05, progress=False))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def evaluate_fn(m):
        calls.append(1)
        return evaluate(m, test_loader)

    levels = (0.0, 0.5, 0.9, 0.99)
    r = sensitivity_analysis(model, evaluate_fn, levels=levels, progress=False)
    assert r.baseline > 85.0  # trained
    assert len(calls) == 1 + 3 * 3  # baseline once, level 0 reused
    assert list(r.metrics) == ["fc1", "fc2", "fc3"]
    for layer, curve in r.metrics.items():
        assert curve[0] == r.baseline
        assert curve[1] >= r.baseline - 5.0, layer  # half the weights of one layer: little loss
        assert curve[3] <= curve[1] + 1.0, layer  # monotone-ish
    assert r.metrics["fc3"][3] < r.baseline - 20.0  # 99 % of the 10-way output layer: 10 weights left
    # the model itself is untouched
    assert masked_layers(model) == {}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    targets = r.targets(2.0)
    assert set(targets) == {"fc1", "fc2", "fc3"} and targets["fc3"] < 0.99
