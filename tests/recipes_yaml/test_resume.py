"""Resume: checkpoints round-trip optimizer state without pickle, and a run killed with SIGKILL continues to the
same final numbers, bit for bit, as an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from nncompress.cli import app
from nncompress.core.errors import UserError
from nncompress.core.io import load_weights
from nncompress.recipes.runner import run_recipe
from nncompress.training.checkpoint import load_checkpoint, save_checkpoint

RECIPE = {
    "name": "resume-test", "model": "lenet300", "data": {"name": "digits", "train_samples": 256, "test_samples": 100},
    "pretrain": {"epochs": 1}, "training": {"epochs": 14, "lr": 0.02, "batch_size": 16},
    "policies": [{"method": "agp", "final_sparsity": 0.8, "start": 0, "end": 10, "frequency": 2},
                 {"method": "distill", "start": 2, "end": 12}],
}


@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, torch.optim.Adam])
def test_checkpoint_round_trip(tmp_path, opt_cls):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = opt_cls(net.parameters(), lr=0.1, **({"momentum": 0.9} if opt_cls is torch.optim.SGD else {}))
    for _ in range(2):
        opt.zero_grad()
        net(torch.randn(4, 3)).sum().backward()
        opt.step()
    for step in (1, 2):
        save_checkpoint(tmp_path, step, net.state_dict(), opt, {"epoch": step}, {"rng": torch.get_rng_state()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000002", "latest"]  # older checkpoints removed
    (tmp_path / ".ckpt-000003.tmp").mkdir()  # a write interrupted by kill -9 is ignored
    ck = load_checkpoint(tmp_path)
    assert ck.state == {"epoch": 2} and torch.equal(ck.tensors["rng"], torch.get_rng_state())
    fresh = opt_cls(torch.nn.Linear(3, 2).parameters(), lr=0.5)
    fresh.load_state_dict(ck.optimizer)
    for a, b in zip(opt.state_dict()["state"].values(), fresh.state_dict()["state"].values()):
        assert a.keys() == b.keys() and all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)
    assert fresh.param_groups[0]["lr"] == 0.1
    assert load_checkpoint(tmp_path / "none") is None


def test_kill_9_then_resume_matches_uninterrupted_run(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    out = tmp_path / "killed"
    exe = str(Path(sys.executable).parent / "nncompress")
    proc = subprocess.Popen([exe, "run-recipe", str(recipe), "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest, deadline = out / "checkpoints" / "latest", time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if latest.is_file() and int(latest.read_text().strip().split("-")[1]) >= 3:
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = load_checkpoint(out / "checkpoints").state["epoch"]
    assert proc.returncode == -signal.SIGKILL and not (out / "result.json").exists() and 3 <= done < 13

    res = CliRunner().invoke(app, ["run-recipe", str(recipe), "--out", str(out), "--resume", "--json"])
    assert res.exit_code == 0, res.output
    resumed = json.loads(res.output)
    full = run_recipe(RECIPE, tmp_path / "full", progress=False)
    assert resumed["history"] == full.history and resumed["top1_final"] == full.top1_final
    a, b = load_weights(out / "model.safetensors"), load_weights(tmp_path / "full/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_another_recipe(tmp_path):
    small = {**RECIPE, "training": {"epochs": 2, "lr": 0.02}, "policies": []}
    run_recipe(small, tmp_path, progress=False)
    with pytest.raises(UserError, match="written by a different recipe"):
        run_recipe({**small, "seed": 1}, tmp_path, progress=False, resume=True)


def test_resume_from_a_foreign_checkpoint_is_one_clear_error(tmp_path):
    """A checkpoint written by something else (no recipe fingerprint, no RNG state) is refused with one line."""
    net = torch.nn.Linear(3, 2)
    save_checkpoint(tmp_path / "out" / "checkpoints", 1, net.state_dict(), torch.optim.SGD(net.parameters(), lr=0.1), {"epoch": 1})
    small = {**RECIPE, "training": {**RECIPE["training"], "epochs": 2}, "pretrain": {"epochs": 0}, "policies": []}
    with pytest.raises(UserError) as e:
        run_recipe(small, out_dir=tmp_path / "out", resume=True)
    msg = str(e.value)
    assert "\n" not in msg and "checkpoint" in msg and "--resume" in msg and "lacks 'history'" in msg, msg
