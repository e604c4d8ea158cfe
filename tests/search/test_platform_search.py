"""run_search chooses on a validation split carved from the training data and touches the test split only
after the choice, once for the winner and once for the baseline (issue 12: it used to pick by test accuracy)."""
import numpy as np
import pytest
import torch

from nncompress.core.errors import UserError
from nncompress.data import Dataset, load_dataset
from nncompress.search import MobileNetSpace, pareto_front, run_search, validation_split
from nncompress.search import evaluator as evaluator_mod
from nncompress.search import platform_search

SENTINEL = 1000.0  # added to every test image: standardized digits stay within a few units of 0


def test_validation_split_is_stratified_seeded_and_disjoint():
    ds = load_dataset("digits").subset(600, 10)
    s = validation_split(ds, 0.25, seed=3)
    assert len(s.y_train) + len(s.y_test) == 600
    # every training sample lands in exactly one part, and none of the test split does
    rows = {tuple(r) for r in ds.x_train.flatten(1).numpy().round(5).tolist()}
    fit = [tuple(r) for r in s.x_train.flatten(1).numpy().round(5).tolist()]
    val = [tuple(r) for r in s.x_test.flatten(1).numpy().round(5).tolist()]
    assert set(fit) | set(val) <= rows
    counts = np.bincount(ds.y_train.numpy(), minlength=10)
    val_counts = np.bincount(s.y_test.numpy(), minlength=10)
    assert np.all(np.abs(val_counts - counts * 0.25) <= 1)  # stratified: each class in proportion
    again = validation_split(ds, 0.25, seed=3)
    assert torch.equal(again.x_test, s.x_test) and torch.equal(again.y_train, s.y_train)
    assert not torch.equal(validation_split(ds, 0.25, seed=4).y_test, s.y_test)
    with pytest.raises(UserError, match="val_fraction"):
        validation_split(ds, 1.0)
    with pytest.raises(UserError, match="too few"):
        validation_split(Dataset("t", ds.x_train[:1], ds.y_train[:1], ds.x_test, ds.y_test, 10), 0.5)


def test_search_chooses_on_validation_and_tests_only_the_winner(monkeypatch, tmp_path):
    digits = load_dataset("digits")
    marked = Dataset(digits.name, digits.x_train, digits.y_train, digits.x_test + SENTINEL, digits.y_test, digits.num_classes)
    monkeypatch.setattr(platform_search, "load_dataset", lambda name, seed=0: marked)
    events = []
    real_evaluate, real_train = evaluator_mod.evaluate, evaluator_mod.train

    def spy_evaluate(model, loader):
        x = loader.dataset.tensors[0]
        events.append(("evaluate", bool((x > SENTINEL / 2).any()), len(x)))
        return real_evaluate(model, loader)

    def spy_train(model, loader, *args, **kwargs):
        events.append(("train", bool((loader.dataset.tensors[0] > SENTINEL / 2).any()), len(loader.dataset)))
        return real_train(model, loader, *args, **kwargs)

    monkeypatch.setattr(evaluator_mod, "evaluate", spy_evaluate)
    monkeypatch.setattr(evaluator_mod, "train", spy_train)
    monkeypatch.setattr(platform_search, "evaluate", spy_evaluate)
    space = MobileNetSpace(widths=(0.25,), depths=(1,), kernels=(3, 5))
    r = run_search("digits", "random", trials=3, epochs=1, n_train=200, n_test=100, latency_repeats=3, space=space,
                   out_dir=tmp_path, progress=False)

    saw_test = [i for i, e in enumerate(events) if e[1]]
    assert saw_test == [len(events) - 2, len(events) - 1]  # the test split: only the last two calls, after the choice
    assert all(e[0] == "evaluate" and e[2] == r["n_test"] == 100 for e in events[-2:])
    search_evals = [e for e in events[:-2] if e[0] == "evaluate"]
    assert len(search_evals) == 4 and all(e[2] == r["n_val"] for e in search_evals)  # baseline + 3 candidates, on validation
    assert all(e[2] == r["n_fit"] for e in events if e[0] == "train")
    assert r["n_fit"] + r["n_val"] == 200 and r["selection"] == "validation"

    cands = r["candidates"]
    assert r["best"]["name"] == max(cands, key=lambda c: c["reward"])["name"]
    assert r["pareto"] == [cands[i]["name"] for i in pareto_front([c["latency_ms"] for c in cands], [c["top1"] for c in cands])]
    assert r["best"]["test_top1"] == r["best_test_top1"] is not None and r["baseline"]["test_top1"] is not None
    assert [c["name"] for c in cands if c["test_top1"] is not None] == [r["best"]["name"]]  # no other candidate is tested
    assert r["baseline"]["reward"] == pytest.approx(r["baseline"]["top1"])  # T = the baseline's latency, on validation
    assert (tmp_path / "pareto.png").exists()
