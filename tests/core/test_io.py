import pickle

import pytest
import torch

from nncompress.core import UserError, atomic_write_bytes, load_weights, save_weights
from nncompress.core.layers import plain_state_dict


def test_atomic_write_leaves_no_temp_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_safetensors_round_trip(tmp_path):
    state = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.tensor([1, 2], dtype=torch.int64)}
    save_weights(state, tmp_path / "w.safetensors")
    back = load_weights(tmp_path / "w.safetensors")
    assert torch.equal(back["a"], state["a"]) and torch.equal(back["b"], state["b"])


def test_pickled_object_is_refused(tmp_path, recwarn):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"w": Evil()}))
    with pytest.raises(UserError, match="cannot read weights"):
        load_weights(path)
    assert not [w for w in recwarn if "pickle" in str(w.message)]  # one clear error, no torch warning beside it


def test_garbage_safetensors_is_a_user_error(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x00\x01not a safetensors file")
    with pytest.raises(UserError, match="not a valid safetensors"):
        load_weights(path)
    with pytest.raises(UserError, match="not found"):
        load_weights(tmp_path / "missing.safetensors")


def test_plain_state_dict_bakes_parametrizations_without_touching_the_model():
    from torch.nn.utils import parametrize

    class Double(torch.nn.Module):
        def forward(self, w):
            return 2 * w

    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
    w0 = net[0].weight.detach().clone()
    parametrize.register_parametrization(net[0], "weight", Double())
    state = plain_state_dict(net)
    assert sorted(state) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert torch.equal(state["0.weight"], 2 * w0)
    assert parametrize.is_parametrized(net[0], "weight")  # untouched
    fresh = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
    fresh.load_state_dict(state)


def test_atomic_write_gives_ordinary_permissions(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        path = atomic_write_bytes(tmp_path / "f.bin", b"x")
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o644


def test_weights_for_another_architecture_name_the_first_mismatched_key(tmp_path):
    from nncompress.architectures import build_model
    from nncompress.core.io import load_weights_into, state_dict_mismatch

    path = tmp_path / "w.safetensors"
    save_weights(build_model("lenet300", (1, 8, 8), 10).state_dict(), path)
    target = build_model("lenet300", (1, 28, 28), 10)
    with pytest.raises(UserError, match=r"do not fit lenet300: key 'fc1.weight' has shape \[300, 64\] in the file, "
                                        r"the model expects \[300, 784\] \(1 of 6 keys differ\)") as e:
        load_weights_into(target, path, "lenet300")
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="the file lacks key 'conv1.weight'"):
        load_weights_into(build_model("lenet5"), path)
    wide = {**build_model("lenet300").state_dict(), "extra.bias": torch.zeros(3)}
    assert state_dict_mismatch(build_model("lenet300").state_dict(), wide).startswith("the file has key 'extra.bias' (shape [3])")
    good = tmp_path / "good.safetensors"
    save_weights(target.state_dict(), good)
    assert load_weights_into(build_model("lenet300"), good) is not None


def test_cli_load_into_names_the_mismatch(tmp_path):
    from nncompress.architectures import build_model
    from nncompress.commands.common import load_into

    path = tmp_path / "w.safetensors"
    save_weights(build_model("lenet5", (1, 8, 8), 10).state_dict(), path)
    with pytest.raises(UserError, match=r"key 'fc1.weight' has shape \[500, 200\] in the file, the model expects \[500, 800\]"):
        load_into(build_model("lenet5"), path, "model 'lenet5' on mnist5k")
