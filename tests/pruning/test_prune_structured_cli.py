import json
import os
import subprocess
import sys

from safetensors.torch import load_file


def test_prune_structured_removes_half_the_channels_for_real(tmp_path):
    cmd = [sys.executable, "-c", "from nncompress.cli import main; main()", "prune", "--structured", "--criterion", "l1",
           "--ratio", "0.5", "--model", "lenet5", "--data", "digits", "--fine-tune-epochs", "0", "--out", "p.safetensors", "--json"]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "NNCOMPRESS_PROGRESS": "0", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    weights = load_file(tmp_path / "p.safetensors")
    assert weights["conv1.weight"].shape[0] == 10 and weights["conv2.weight"].shape[:2] == (25, 10)  # 20 → 10, 50 → 25
    assert report["after"]["params"] < report["before"]["params"]
