"""`nncompress distill` and `nncompress factorize` through typer, and the real entry point's exit code."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from nncompress.architectures import build_model
from nncompress.commands.distill import register
from nncompress.core import UserError
from nncompress.lowrank import LowRank, load_factorized


@pytest.fixture(scope="module")
def app():
    app = typer.Typer()

    @app.callback()
    def _root() -> None: ...

    register(app)
    return app


def test_distill_with_baseline_writes_student(app, tmp_path):
    out, js = tmp_path / "s.safetensors", tmp_path / "r.json"
    r = CliRunner().invoke(app, ["distill", "--teacher", "lenet300", "--student", "lenet300", "--data", "digits",
                                 "--epochs", "2", "--teacher-epochs", "3", "--lr", "0.05", "-T", "2", "--alpha", "0.5",
                                 "--rkd", "fc2:fc2", "--baseline", "--out", str(out), "--json", "--out-json", str(js)])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res == json.loads(js.read_text())
    assert res["teachers"][0]["trained_here"] and res["teachers"][0]["top1"] > 80
    assert res["gain_pp"] == pytest.approx(res["student_top1"] - res["baseline_top1"])
    assert len(res["history"]) == 2 and res["student_top1"] > 50
    load_factorized(build_model("lenet300", (1, 8, 8), 10), out)


def test_distill_bad_pairs_and_counts(app):
    r = CliRunner().invoke(app, ["distill", "--teacher", "lenet5", "--student", "lenet300", "--data", "digits", "--at", "fc1"])
    assert isinstance(r.exception, UserError) and "STUDENT_LAYER:TEACHER_LAYER" in str(r.exception)
    r = CliRunner().invoke(app, ["distill", "--teacher", "lenet5", "--student", "lenet300", "--data", "digits", "--mix", "1", "--mix", "2"])
    assert isinstance(r.exception, UserError) and "--mix" in str(r.exception)


def test_factorize_svd_energy_and_reload(app, tmp_path):
    out = tmp_path / "f.safetensors"
    r = CliRunner().invoke(app, ["factorize", "--model", "lenet300", "--data", "digits", "--method", "svd", "--energy", "0.6",
                                 "--pretrain-epochs", "2", "--finetune-epochs", "1", "--lr", "0.05", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["method"] == "svd" and res["param_ratio"] > 1
    assert {"top1_dense", "top1_factorized", "top1_finetuned"} <= set(res)
    fc1 = next(lf for lf in res["layers"] if lf["name"] == "fc1")
    assert fc1["params_after"] == fc1["ranks"][0] * (64 + 300) + 300
    net = load_factorized(build_model("lenet300", (1, 8, 8), 10), out)
    assert isinstance(net.fc1, LowRank)


def test_factorize_tucker_table_output(app):
    r = CliRunner().invoke(app, ["factorize", "--model", "lenet5", "--data", "digits", "--method", "tucker", "--ratio", "2",
                                 "--macs", "--layers", "conv2", "--pretrain-epochs", "1", "--finetune-epochs", "0",
                                 "--allow-drop"])  # 1 pretraining epoch (49 %) → 27 % unfine-tuned: the table is tested here
    assert r.exit_code == 0, r.output
    assert "conv2: 50x20x5x5" in r.output and "MACs" in r.output


def test_factorize_rule_errors(app):
    r = CliRunner().invoke(app, ["factorize", "--model", "lenet300", "--data", "digits", "--energy", "0.9", "--vbmf"])
    assert isinstance(r.exception, UserError)
    r = CliRunner().invoke(app, ["factorize", "--model", "lenet300", "--data", "digits", "--method", "qr", "--energy", "0.9"])
    assert isinstance(r.exception, UserError) and "--method" in str(r.exception)


def _cli_importable() -> bool:
    from nncompress import cli  # noqa: F401 - importing builds the app from every registered command module

    return "nncompress.commands.distill" in cli.COMMAND_MODULES


@pytest.mark.skipif(importlib.util.find_spec("nncompress.commands.core") is None, reason="the CLI's core commands are not in this tree yet")
def test_real_entry_point_exits_2_with_one_line():
    assert _cli_importable()
    exe = Path(sys.executable).with_name("nncompress")
    p = subprocess.run([str(exe), "factorize", "--model", "lenet300", "--data", "digits", "--method", "qr", "--energy", "0.9"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "--method" in p.stderr
