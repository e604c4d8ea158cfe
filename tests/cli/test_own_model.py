"""`--model path/to/file.py:factory` (and package.module:factory) through every command: your own model trains,
compresses to .nnc, decompresses, evaluates, quantizes, loses channels, exports to ONNX and runs a recipe;
`--weights` takes safetensors or a weights-only .pt; bad references exit 2 with one line."""
import json
import textwrap

import pytest
import torch

USER_MODULE = '''
import torch
from torch import nn


class Small(nn.Module):
    def __init__(self, in_shape, num_classes):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_shape[0], 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(2))
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def build(in_shape=(1, 8, 8), num_classes=10):
    return Small(in_shape, num_classes)


CONSTANT = 3
'''

REF = "tmp.py:build"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder holding the user's model file and weights trained by `nncompress train --model tmp.py:build`."""
    import subprocess
    import sys
    from pathlib import Path

    d = tmp_path_factory.mktemp("own_model")
    (d / "tmp.py").write_text(textwrap.dedent(USER_MODULE))
    exe = Path(sys.executable).parent / "nncompress"
    proc = subprocess.run([str(exe), "train", "--model", REF, "--data", "digits", "--epochs", "3", "--threads", "1",
                           "--out", "w.safetensors", "--json"], cwd=d, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["top1"] > 50  # digits: well above chance (10 %) after 3 epochs
    from safetensors.torch import load_file

    torch.save(load_file(str(d / "w.safetensors")), d / "w.pt")  # a weights-only .pt: a plain dict of tensors
    return d, result["top1"]


def _json(out: str) -> dict:
    return json.loads(out[out.index("{"):])


def test_compress_decompress_evaluate_a_factory_model(workdir, run_cli, monkeypatch):
    d, top1 = workdir
    monkeypatch.chdir(d)
    code, out, err = run_cli(["compress", "--model", REF, "--data", "digits", "--weights", "w.pt", "--out", "out",
                              "--prune-steps", "1", "--finetune-epochs", "0", "--threads", "1", "--json"])
    assert code == 0, err
    report = _json(out)
    assert report["stages"][0]["top1"] == pytest.approx(top1)  # the .pt loaded is the trained model
    nnc = d / "out" / "tmp.py_build.nnc"
    assert nnc.is_file()
    # the file names code to run: decompress refuses to import it on the file's word alone
    code, out, err = run_cli(["decompress", str(nnc), "--out", "d.safetensors"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and f"--model {REF}" in err
    code, out, err = run_cli(["decompress", str(nnc), "--model", REF, "--out", "d.safetensors", "--json"])
    assert code == 0, err
    assert json.loads(out)["model"] == REF
    code, out, err = run_cli(["evaluate", "--nnc", str(nnc), "--model", REF, "--data", "digits", "--json"])
    assert code == 0, err
    huffman = report["stages"][-1]["top1"]
    assert json.loads(out)["top1"] == pytest.approx(huffman)  # decoded by another path, same accuracy as the pipeline saw
    code, out, err = run_cli(["evaluate", "--weights", "d.safetensors", "--model", REF, "--data", "digits", "--json"])
    assert code == 0, err
    assert json.loads(out)["top1"] == pytest.approx(huffman)


def test_quantize_prune_channels_export_and_recipe_on_a_factory_model(workdir, run_cli, monkeypatch):
    d, top1 = workdir
    monkeypatch.chdir(d)
    code, out, err = run_cli(["quantize", "--model", REF, "--data", "digits", "--weights", "w.pt", "--mode", "static",
                              "--threads", "1", "--repeats", "2", "--json"])
    assert code == 0, err
    code, out, err = run_cli(["prune-channels", "--model", REF, "--data", "digits", "--weights", "w.pt", "--ratio", "0.5",
                              "--finetune-epochs", "0", "--threads", "1", "--out", "thin.safetensors", "--json"])
    assert code == 0, err
    from safetensors.torch import load_file

    assert load_file(str(d / "thin.safetensors"))["features.0.weight"].shape[0] == 8  # half of 16 filters removed
    code, out, err = run_cli(["export", "--model", REF, "--data", "digits", "--weights", "w.pt", "--out", "m.onnx", "--json"])
    assert code == 0, err
    rep = json.loads(out)
    assert rep["max_abs_error"] < 1e-4 and rep["ort_top1"] == pytest.approx(top1)  # ORT runs the trained factory model
    (d / "r.yaml").write_text("model: lenet300\ndata: digits\ntraining:\n  epochs: 2\n  lr: 0.02\n"
                              "policies:\n  - method: agp\n    final_sparsity: 0.5\n    start: 0\n    end: 2\n")
    code, out, err = run_cli(["run-recipe", "r.yaml", "--model", REF, "--weights", "w.pt", "--out", "run", "--json"])
    assert code == 0, err
    res = json.loads(out)
    assert res["top1_pretrained"] == pytest.approx(top1)  # the override's model and weights, not lenet300's
    assert 0.3 < res["sparsity"] <= 0.55


@pytest.mark.parametrize("ref, needle", [
    ("no_such_pkg_h6.models:build", "module 'no_such_pkg_h6' is not importable"),
    ("tmp.py:missing", "has no attribute 'missing'"),
    ("tmp.py:CONSTANT", "not a callable"),
    ("absent.py:build", "not found"),
    ("resnet9000", "unknown model 'resnet9000'"),
])
@pytest.mark.parametrize("command", [["compress", "--data", "digits"], ["quantize", "--data", "digits"],
                                     ["prune-channels", "--data", "digits"], ["export", "--data", "digits"]])
def test_bad_model_references_exit_2_with_one_line(workdir, run_cli, monkeypatch, ref, needle, command):
    d, _ = workdir
    monkeypatch.chdir(d)
    code, out, err = run_cli([*command, "--model", ref])
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and needle in err and "--model" in err
