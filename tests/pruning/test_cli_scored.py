"""`nncompress prune --criterion obd|snip|... --granularity ...`: whole groups removed, bad values exit 2 before training."""
import json

import torch
import typer
from typer.testing import CliRunner

from nncompress.commands.pruning import register
from nncompress.core.io import load_weights


def _app():
    app = typer.Typer()
    register(app)
    return app


def test_prune_obd_block_removes_whole_blocks_at_the_target(tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "p.safetensors"
    res = CliRunner().invoke(_app(), ["prune", "--model", "lenet300", "--data", "digits", "--criterion", "obd",
                                      "--granularity", "block", "--block", "4", "--sparsity", "0.5",
                                      "--train-epochs", "1", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    w = load_weights(out)["fc1.weight"]  # 300×64: 4×4 blocks tile it exactly
    zero_blocks = (w == 0).view(75, 4, 16, 4).permute(0, 2, 1, 3).reshape(75 * 16, 16)
    assert ((zero_blocks.all(1)) | (~zero_blocks.any(1))).all()  # every block all-zero or all-nonzero
    assert int(zero_blocks.all(1).sum()) == round(0.5 * 300 * 64 / 16)
    assert report["criterion"] == "obd"


def test_prune_refuses_bad_granularity_and_combinations(tmp_path, run_cli):
    out = tmp_path / "p.safetensors"
    for extra, message in ((["--granularity", "channel"], "unknown --granularity"),
                           (["--criterion", "magnitude", "--threshold", "0.1", "--granularity", "kernel"], "works with --criterion"),
                           (["--criterion", "snip", "--block", "0", "--granularity", "block"], "--block"),
                           (["--criterion", "hessian"], "unknown --criterion")):
        code, _, err = run_cli(["prune", "--out", str(out), *extra])
        assert code == 2 and message in err and "Traceback" not in err, (extra, err)
        assert not out.exists()
