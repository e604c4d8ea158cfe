"""Scale-out: a recipe under torchrun with 2 CPU processes (gloo) ends where the 1-process run ends."""
import sys
from pathlib import Path

import pytest
import torch

from nncompress.core.io import load_weights
from nncompress.recipes.runner import run_recipe

RECIPE = {
    "name": "ddp-test", "model": "lenet300", "data": {"name": "digits", "train_samples": 256, "test_samples": 128},
    "pretrain": {"epochs": 1}, "training": {"epochs": 3, "lr": 0.02, "batch_size": 32},
    "policies": [{"method": "agp", "final_sparsity": 0.7, "start": 0, "end": 3}, {"method": "distill", "start": 0}],
}
BIN = Path(sys.executable).parent


SCRIPT = """
import json, sys
import torch
from nncompress.recipes.runner import run_recipe
from nncompress.report.run import report_run
from nncompress.training.distributed import is_main_process

recipe, out = json.loads(sys.argv[1]), sys.argv[2]
result = run_recipe(recipe, out, progress=False)
report = report_run(out, sensitivity=True)  # the sweep's layers are shared between the processes
if is_main_process():
    print(json.dumps({"history": result.history, "sensitivity": report.sensitivity}))
"""


@pytest.mark.skipif(not (BIN / "torchrun").exists(), reason="torchrun not installed")
def test_two_gloo_processes_match_one(tmp_path, torchrun_job):
    two = torchrun_job(SCRIPT, RECIPE)
    one = run_recipe(RECIPE, tmp_path / "one", progress=False)
    # each rank saw half of every batch; the averaged gradient is the whole batch's, up to float summation order
    assert [h["top1"] for h in two["history"]] == [h["top1"] for h in one.history]
    assert [h["sparsity"] for h in two["history"]] == [h["sparsity"] for h in one.history]
    assert [h["loss"] for h in two["history"]] == pytest.approx([h["loss"] for h in one.history], rel=1e-4)
    a, b = load_weights(tmp_path / "two/model.safetensors"), load_weights(tmp_path / "one/model.safetensors")
    for k in a:
        assert torch.equal(a[k] == 0, b[k] == 0) and torch.allclose(a[k], b[k], atol=1e-6), k
    # the sweep: fc1 and fc3 on rank 0, fc2 on rank 1, gathered into the same curves as one process computes
    from nncompress.report.run import report_run

    sens_one = report_run(tmp_path / "one", sensitivity=True).sensitivity
    assert two["sensitivity"] == sens_one and list(sens_one["metrics"]) == ["fc1", "fc2", "fc3"]
    assert all(len(v) == len(sens_one["levels"]) for v in sens_one["metrics"].values())


def test_batch_must_split_evenly(monkeypatch):
    from nncompress.core.errors import UserError
    from nncompress.recipes import runner

    monkeypatch.setattr(runner, "world", lambda: (0, 3))
    with pytest.raises(UserError, match=r"batch_size \(32\) .* divisible by the number of processes \(3\)"):
        run_recipe(RECIPE, progress=False)
