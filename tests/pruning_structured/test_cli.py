"""The two commands end to end (small data, few steps) and their exit code 2 on bad input."""
import json
import re
import subprocess
import sys
from pathlib import Path

import typer
from typer.testing import CliRunner

from nncompress.architectures import LeNet5
from nncompress.commands.structured import register
from nncompress.core.errors import UserError
from nncompress.core.io import load_weights
from nncompress.pruning.structured import resize_to_state_dict

app = typer.Typer()
register(app)
NNCOMPRESS = str(Path(sys.executable).with_name("nncompress"))


def test_prune_channels_command(tmp_path):
    out = tmp_path / "pruned.safetensors"
    r = CliRunner().invoke(app, ["prune-channels", "--model", "lenet5", "--data", "digits", "--criterion", "l1", "--ratio", "0.5",
                                 "--pretrain-epochs", "1", "--finetune-epochs", "0", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["after"]["params"] < rep["before"]["params"] and rep["after"]["macs"] < rep["before"]["macs"]
    assert rep["macs_ratio"] > 2.5  # conv1 20→10, conv2 50→25, fc1 500→250: MACs fall about 3.5×
    state = load_weights(out)
    assert state["conv1.weight"].shape == (10, 1, 5, 5) and state["fc1.weight"].shape == (250, 25 * 4)
    model = resize_to_state_dict(LeNet5((1, 8, 8), 10), state)
    model.load_state_dict(state)


def test_netadapt_command_table():
    r = CliRunner().invoke(app, ["netadapt", "--latency-budget", "0.7", "--model", "lenet5", "--data", "digits",
                                 "--pretrain-epochs", "1", "--short-steps", "2", "--long-epochs", "0"])
    assert r.exit_code == 0, r.output
    assert "latency ms" in r.output and "top-1" in r.output and "MACs" in r.output


def test_bad_input_is_a_user_error():
    for args, message in ((["netadapt", "--latency-budget", "1.5"], "in \\(0, 1\\)"),
                          (["prune-channels", "--layer-ratio", "conv1"], "NAME=RATIO"),
                          (["prune-channels", "--ratio", "1.2"], "--ratio must be in"),
                          (["prune-channels", "--criterion", "l3"], "unknown --criterion 'l3'")):
        r = CliRunner().invoke(app, args)
        assert isinstance(r.exception, UserError), (args, r.output)
        assert re.search(message, str(r.exception))


def test_bad_input_exits_2_with_one_line():
    p = subprocess.run([NNCOMPRESS, "prune-channels", "--criterion", "l3"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip() == "error: unknown --criterion 'l3': choose one of l1, l2, bn_scale, taylor, random, largest"


def test_prune_channels_with_sensitivity_ratios():
    r = CliRunner().invoke(app, ["prune-channels", "--model", "lenet5", "--data", "digits", "--sensitivity-drop", "2",
                                 "--pretrain-epochs", "1", "--finetune-epochs", "0", "--json"])
    assert r.exit_code == 0, r.output
    ratios = json.loads(r.output)["layer_ratios"]
    assert set(ratios) == {"conv1", "conv2", "fc1"} and set(ratios.values()) <= {0.0, 0.1, 0.25, 0.5, 0.75}


def test_weights_of_another_shape_are_a_user_error(tmp_path):
    from nncompress.core.io import save_weights

    save_weights(LeNet5((1, 28, 28), 10).state_dict(), tmp_path / "w.safetensors")  # fc1 sized for 28×28, data is 8×8
    r = CliRunner().invoke(app, ["prune-channels", "--model", "lenet5", "--data", "digits", "--weights", str(tmp_path / "w.safetensors")])
    assert isinstance(r.exception, UserError) and "fc1.weight" in str(r.exception)
