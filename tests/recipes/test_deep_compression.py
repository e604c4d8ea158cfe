"""End-to-end: the main job on digits through the real CLI, and its bad-input contract."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from nncompress.core import UserError
from nncompress.encoding import load_nnc
from nncompress.export import decompress_model
from nncompress.recipes.deep_compression import DeepCompressionConfig, run_deep_compression

CLI = [sys.executable, "-c", "from nncompress.cli import main; main()"]


def _run(args, cwd):
    return subprocess.run(CLI + args, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "NNCOMPRESS_PROGRESS": "0", "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dc")
    cfg = DeepCompressionConfig(model="lenet300", data="digits", out_dir=str(out / "out"), cache_dir=str(out / "cache"),
                                threads=1, baseline_epochs=8, prune_steps=2, prune_finetune_epochs=2,
                                share_finetune_epochs=2, sparsity=0.8, bits=4, progress=False)
    return run_deep_compression(cfg, log=lambda *a: None), out


def test_pipeline_stages_shrink_and_file_decodes_bit_exactly(small_run):
    result, out = small_run
    names = [s.stage for s in result.stages]
    assert names == ["dense fp32", "pruned", "shared", "huffman (.nnc)"]
    dense, pruned, shared, huff = (s.bytes for s in result.stages)
    assert dense == (64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10) * 4  # LeNet-300-100 on 8×8 inputs, fp32
    assert dense > pruned > shared > huff
    nnc = Path(result.nnc_path)
    assert nnc.stat().st_size == huff
    cm = load_nnc(nnc)
    for name, t in cm.shared.items():  # 80% pruned, ≤ 2^4 centroids
        assert t.codebook.size <= 16
        assert abs(t.positions.size / t.numel - 0.2) < 0.01
    model, meta = decompress_model(nnc)
    assert meta["model"] == "lenet300" and meta["in_shape"] == [1, 8, 8]
    assert result.stages[-1].top1 == result.stages[-2].top1  # the decoded model is the shared model
    assert result.stages[0].top1 > 85 and result.stages[-1].top1 > 80
    report = json.loads((out / "out" / "report.json").read_text())
    assert report["stages"][-1]["bytes"] == huff
    for f in ("report.md", "weights_before.png", "weights_after.png", "sparsity.png"):
        assert (out / "out" / f).stat().st_size > 0


def test_cli_compress_on_digits_then_decompress_and_evaluate(tmp_path):
    r = _run(["compress", "--data", "digits", "--out", "o", "--sparsity", "0.7", "--bits", "5", "--train-epochs", "4",
              "--prune-steps", "1", "--finetune-epochs", "1", "--threads", "1", "--json"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["stages"][-1]["ratio"] > 10
    r = _run(["decompress", "o/lenet300.nnc", "--out", "w.safetensors"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = _run(["evaluate", "--model", "lenet300", "--data", "digits", "--weights", "w.safetensors", "--json"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["top1"] == pytest.approx(res["stages"][-1]["top1"])


@pytest.mark.parametrize("args, message", [
    (["compress", "--data", "digits", "--sparsity", "1.5"], "must be in [0, 1)"),
    (["compress", "--data", "digits", "--sparsity", "fc9=0.5"], "unknown layers"),
    (["compress", "--data", "digits", "--bits", "17"], "1..16"),
    (["compress", "--data", "missing.npz"], "not found"),
    (["compress", "--data", "digits", "--weights", "nope.safetensors"], "not found"),
    (["compress", "--data", "digits", "--model", "nosuchnet"], "unknown model"),
    (["decompress", "corrupt.nnc"], "corrupt"),
])
def test_bad_input_exits_2_with_one_line_and_no_output(tmp_path, run_main, args, message):
    """In-process through the real entry point (`main`), so each case costs no new interpreter."""
    (tmp_path / "corrupt.nnc").write_bytes(b"NNC\x00" + b"\x01" * 40)
    code, err = run_main(args, tmp_path)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message.lower() in lines[0].lower(), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.nnc"]


def test_real_executable_exits_2_on_bad_sparsity(tmp_path):
    r = _run(["compress", "--data", "digits", "--sparsity", "1.5"], cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "must be in [0, 1)" in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_config_validation_without_cli():
    with pytest.raises(UserError, match="bits"):
        run_deep_compression(DeepCompressionConfig(data="digits", bits={"linear": 0}, progress=False), log=lambda *a: None)


def test_compress_with_a_recipe_runs_the_yaml_schedule(tmp_path):
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "level.yaml"
    r = _run(["compress", "--recipe", str(recipe), "--out", "run", "--threads", "1", "--json"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["name"] == "level-lenet300"
    # fc1/fc2/fc3 at 92/91/74 % of 64·300 + 300·100 + 100·10 weights, biases dense
    expected_zeros = round(0.92 * 19200) + round(0.91 * 30000) + round(0.74 * 1000)
    assert res["params"] - res["nonzero_params"] == pytest.approx(expected_zeros, abs=3)
