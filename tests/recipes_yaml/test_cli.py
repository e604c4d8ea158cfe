"""`nncompress run-recipe`: --check, --json, and exit code 2 with one line for a bad recipe."""
import json
import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from nncompress.cli import app

ROOT = Path(__file__).parents[2]


def test_check_validates_without_running():
    res = CliRunner().invoke(app, ["run-recipe", str(ROOT / "recipes/agp_qat_kd.yaml"), "--check", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == {"recipe": str(ROOT / "recipes/agp_qat_kd.yaml"), "valid": True, "policies": ["agp", "qat", "distill"]}


def test_run_writes_weights_and_result(tmp_path):
    d = yaml.safe_load((ROOT / "recipes/level.yaml").read_text())
    d.update(data={"name": "digits", "train_samples": 200, "test_samples": 100}, pretrain={"epochs": 1}, training={"epochs": 1, "lr": 0.01})
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(d))
    res = CliRunner().invoke(app, ["run-recipe", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["sparsity"] > 0.9 and (tmp_path / "run/model.safetensors").is_file()
    assert json.loads((tmp_path / "run/result.json").read_text())["history"] == out["history"]


def test_bad_recipe_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: lenet300\ntraining:\n  epochs: 2\npolicies:\n  - method: qat\n    weight_bits: 16\n")
    proc = subprocess.run([str(Path(sys.executable).parent / "nncompress"), "run-recipe", str(bad)], capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {bad}:6: policies[0].weight_bits: Input should be less than or equal to 8 (got 16)"
