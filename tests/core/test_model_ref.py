"""Rebuild references (zoo name, package.module:factory, file.py:factory) and .nnc persistence of any model."""
import textwrap

import pytest
import torch
from torch import nn

from nncompress.architectures import build_model
from nncompress.core.errors import UserError
from nncompress.core.model_ref import check_model_ref, resolve_model
from nncompress.encoding import read_nnc, write_nnc
from nncompress.export import compress_model, load_nnc_into, model_from_nnc
from nncompress.sharing import share_weights

NETS = '''
import torch
from torch import nn


class Tagged(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU())
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


def build(num_classes=10):
    return Tagged(num_classes)


def build_any(**kwargs):
    return Tagged(kwargs["num_classes"]) if "in_shape" in kwargs else None


def plain():
    torch.manual_seed(0)
    return nn.Linear(12, 2)


def needs_depth(depth):
    return nn.Linear(12, depth)


def not_a_model():
    return {"weights": 1}


CONSTANT = 3
'''


@pytest.fixture
def nets_file(tmp_path):
    path = tmp_path / "nets.py"
    path.write_text(textwrap.dedent(NETS))
    return path


def test_zoo_name_and_file_factory_get_the_arguments_they_declare(nets_file):
    assert isinstance(resolve_model("lenet5", in_shape=(1, 28, 28), num_classes=10), nn.Module)
    m = resolve_model(f"{nets_file}:build", in_shape=(3, 2, 2), num_classes=3)
    assert m.head.out_features == 3  # num_classes declared: passed; in_shape not declared: not passed
    assert resolve_model(f"{nets_file}:plain", in_shape=(3, 2, 2), num_classes=3).out_features == 2
    assert resolve_model(f"{nets_file}:build_any", in_shape=(3, 2, 2), num_classes=4).head.out_features == 4  # **kwargs: all
    assert build_model(f"{nets_file}:build", (3, 2, 2), 5).head.out_features == 5  # every command's build_model takes refs


def test_package_module_factory(tmp_path, monkeypatch):
    pkg = tmp_path / "h6_user_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(textwrap.dedent(NETS))
    monkeypatch.syspath_prepend(str(tmp_path))
    m = resolve_model("h6_user_pkg.models:build", num_classes=7)
    assert m.head.out_features == 7
    assert resolve_model("h6_user_pkg.models:Tagged", num_classes=2).head.out_features == 2  # a class is a factory too


@pytest.mark.parametrize("suffix, match", [
    (":missing", r"has no attribute 'missing'"),
    (":CONSTANT", r"'CONSTANT' is a int, not a callable"),
    (":not_a_model", r"returned a dict, not a torch.nn.Module"),
    (":needs_depth", r"needs argument\(s\) depth"),
    (":build_any", r"returned a NoneType"),
])
def test_bad_factory_refs_are_one_line_user_errors(nets_file, suffix, match):
    ref = f"{nets_file}{suffix}"
    kwargs = {} if suffix == ":build_any" else {"in_shape": (3, 2, 2), "num_classes": 2}
    with pytest.raises(UserError, match=match) as info:
        resolve_model(ref, **kwargs)
    assert ref in str(info.value) and "\n" not in str(info.value)


def test_unimportable_and_malformed_refs(tmp_path):
    with pytest.raises(UserError, match=r"module 'no_such_pkg_h6' is not importable"):
        resolve_model("no_such_pkg_h6.nets:build")
    with pytest.raises(UserError, match=r"not found"):
        resolve_model(f"{tmp_path}/absent.py:build")
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom at import')\n")
    with pytest.raises(UserError, match=r"importing .*broken.py failed \(RuntimeError: boom at import\)"):
        resolve_model(f"{broken}:build")
    with pytest.raises(UserError, match="malformed"):
        resolve_model("nets:")
    with pytest.raises(UserError, match=r"--model: unknown model 'resnet9000'"):
        check_model_ref("resnet9000")


def _shared(model):
    share_weights(model, bits=3)
    return model


def test_nnc_round_trip_of_a_factory_model_and_loading_into_an_instance(nets_file):
    torch.manual_seed(0)
    ref = f"{nets_file}:build"
    net = _shared(resolve_model(ref, num_classes=3))
    meta = {"model": ref, "in_shape": [3, 2, 2], "num_classes": 3}
    cm = read_nnc(write_nnc(compress_model(net, meta)))
    x = torch.randn(4, 3, 2, 2)
    with torch.no_grad():
        want = net(x)
    # a factory named by a file is code: rebuilt only when the caller names it
    with pytest.raises(UserError, match=r"rebuilding it imports and runs that code.*--model"):
        model_from_nnc(cm)
    back = model_from_nnc(cm, ref)
    assert torch.equal(back(x), want)
    # any instance, built however the user likes
    fresh = resolve_model(ref, num_classes=3)
    assert model_from_nnc(cm, fresh) is fresh and torch.equal(fresh(x), want)


def test_load_into_names_the_first_mismatch(nets_file, tmp_path):
    torch.manual_seed(0)
    ref = f"{nets_file}:build"
    net = _shared(resolve_model(ref, num_classes=3))
    path = tmp_path / "m.nnc"
    path.write_bytes(write_nnc(compress_model(net, {"model": ref, "in_shape": [3, 2, 2], "num_classes": 3})))
    wrong = resolve_model(ref, num_classes=5)
    with pytest.raises(UserError, match=r"head.weight has shape \[3, 16\], the given Tagged expects \[5, 16\]"):
        load_nnc_into(wrong, path)
    with pytest.raises(UserError, match=r"the file has 'body.1.bias', which the model does not"):
        load_nnc_into(nn.Sequential(), path)
