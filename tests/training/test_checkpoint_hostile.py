"""Resuming from a damaged, foreign or half-written checkpoint: one clear error, and kill leftovers cleaned up."""
import json
import re
import shutil

import pytest
import torch

from nncompress.core.errors import UserError
from nncompress.training.checkpoint import clean_interrupted, load_checkpoint, save_checkpoint


def _save(root, step=3):
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(3, 4)).sum().backward()
    opt.step()
    return save_checkpoint(root, step, net.state_dict(), opt, {"epoch": step, "history": [], "recipe": "abc"},
                           {"rng_state": torch.get_rng_state()})


def _error(root, **kw) -> str:
    with pytest.raises(UserError) as e:
        load_checkpoint(root, **kw)
    msg = str(e.value)
    assert "\n" not in msg and "delete" in msg
    return msg


def test_a_good_checkpoint_loads(tmp_path):
    _save(tmp_path)
    ck = load_checkpoint(tmp_path, state_keys=("epoch", "recipe"), tensor_keys=("rng_state",))
    assert ck.state["epoch"] == 3 and set(ck.model) == {"weight", "bias"} and ck.optimizer["state"]


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda d: (d / "state.json").write_text("{not json"), "JSONDecodeError"),
        (lambda d: (d / "state.json").write_bytes(b"\xff\xfe"), "UnicodeDecodeError"),
        (lambda d: (d / "state.json").write_text("[1, 2]"), "not a checkpoint's"),
        (lambda d: (d / "state.json").write_text('{"state": {}, "optimizer": {"scalars": [], "param_groups": 3}}'), "no optimizer scalars"),
        (lambda d: (d / "state.json").write_text('{"state": {}, "optimizer": {"scalars": {"x": 1}, "param_groups": []}}'), "ValueError"),
        (lambda d: (d / "state.json").write_text("[" * 100000 + "]" * 100000), "RecursionError|JSONDecodeError"),
        (lambda d: (d / "state.json").unlink(), "FileNotFoundError"),
        (lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 30), "not a valid safetensors"),
        (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-7]), "not a valid safetensors"),
        (lambda d: (d / "optimizer.safetensors").unlink(), "weights file not found"),
        (lambda d: shutil.rmtree(d), "folder 'latest' points to is missing"),
        (lambda d: (d.parent / "latest").write_text("../../etc"), "not a ckpt-NNNNNN folder"),
        (lambda d: (d.parent / "latest").write_bytes(b"\xff\x00"), "UnicodeDecodeError"),
    ],
)
def test_damaged_checkpoints_give_one_clear_error(tmp_path, damage, match):
    folder = _save(tmp_path)
    damage(folder)
    assert re.search(match, _error(tmp_path))


def test_foreign_checkpoint_missing_what_the_caller_needs(tmp_path):
    folder = _save(tmp_path)
    meta = json.loads((folder / "state.json").read_text())
    meta["state"] = {"step": 7}  # another program's bookkeeping
    (folder / "state.json").write_text(json.dumps(meta))
    assert "lacks 'epoch'" in _error(tmp_path, state_keys=("epoch", "recipe"))
    assert load_checkpoint(tmp_path).state == {"step": 7}  # without requirements it is the caller's to judge
    assert "lacks 'cuda_rng'" in _error(tmp_path, tensor_keys=("cuda_rng",))


def test_foreign_tensor_names_in_the_optimizer_file(tmp_path):
    from safetensors.torch import save_file

    folder = _save(tmp_path)
    save_file({"not-a-state-name": torch.zeros(2)}, str(folder / "optimizer.safetensors"))
    assert "ValueError" in _error(tmp_path)


def test_a_write_killed_midway_is_cleaned_up_on_resume(tmp_path):
    _save(tmp_path, step=1)
    # what kill -9 during save_checkpoint(step=2) leaves: a half-filled temp folder and a temp pointer file
    tmp = tmp_path / ".ckpt-000002.tmp"
    tmp.mkdir()
    (tmp / "model.safetensors").write_bytes(b"\x00" * 10)
    (tmp_path / ".latest.abc123.tmp").write_text("ckpt-0000")
    ck = load_checkpoint(tmp_path)
    assert ck.state["epoch"] == 1  # the previous checkpoint stands
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000001", "latest"]
    assert clean_interrupted(tmp_path) == [] and clean_interrupted(tmp_path / "absent") == []
