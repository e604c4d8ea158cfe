"""Sparse execution: sparse modules compute what the dense layers compute; the per-layer choice respects
min_sparsity; .nnc tensors become CSR without a dense copy; bad input gives one UserError. No timing is asserted."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nncompress.architectures import build_model
from nncompress.core.errors import UserError
from nncompress.encoding import CompressedModel, SharedTensor, save_nnc
from nncompress.export.nnc import model_from_nnc
from nncompress.pruning import LevelPruner
from nncompress.pruning.mask import finalize
from nncompress.sparse import (
    SparseConv2d,
    SparseLinear,
    load_nnc_sparse,
    sparse_from_shared,
    sparse_module_for,
    sparsify,
)
from nncompress.sparse import kernel as sparse_kernel

FORMATS = ["csr", "scipy", "bsr4"] + (["kernel"] if sparse_kernel.load() is not None else [])
ATOL = 1e-5


def _lenet(finalized: bool) -> nn.Module:
    torch.manual_seed(0)
    m = build_model("lenet300", (1, 28, 28), 10)
    LevelPruner({"fc1": 0.935, "fc2": 0.9, "fc3": 0.7}).prune(m)
    return (finalize(m) if finalized else m).eval()


def _conv_net() -> nn.Module:
    torch.manual_seed(1)
    m = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=2, dilation=2, bias=False),
                      nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    LevelPruner(0.8).prune(m)
    return m.eval()


@pytest.mark.parametrize("finalized", [False, True])
@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_matches_dense_linear(fmt, finalized):
    m = _lenet(finalized)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        ref = m(x)
        for name in ("fc1", "fc2", "fc3"):
            if fmt == "bsr4" and name == "fc3":
                continue  # 10 outputs: 4 does not divide the shape
            setattr(m, name, sparse_module_for(getattr(m, name), fmt))
        out = m(x)
    assert isinstance(m.fc1, SparseLinear) and m.fc1.format == fmt
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_matches_dense_conv(fmt):
    m = _conv_net()
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        ref = m(x)
        m[0] = sparse_module_for(m[0], fmt if fmt != "bsr4" else "csr")  # 4·3·3 = 36 inputs: bsr4 fits only m[2]
        m[2] = sparse_module_for(m[2], fmt)
        out = m(x)
    assert isinstance(m[0], SparseConv2d)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("finalized", [False, True])
def test_sparsify_forced_conversion_matches_dense(finalized):
    m = _lenet(finalized)
    x = torch.randn(1, 1, 28, 28)
    with torch.no_grad():
        ref = m(x).clone()
    # min_speedup ~0 converts every layer that passes min_sparsity, whatever the timing: the output check is the point
    report = sparsify(m, x, min_speedup=1e-9, repeats=2)
    assert report.converted == ["fc1", "fc2", "fc3"]
    assert report.threads == 1 and report.batch_size == 1
    for c in report.layers:
        assert c.dense_ms > 0 and c.sparse_ms > 0 and c.speedup > 0 and c.format in c.candidates_ms
    assert abs(report.layers[0].sparsity - 0.935) < 1e-3
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref, atol=ATOL, rtol=0)
        x2 = torch.randn(4, 1, 28, 28)  # another batch size still computes the same function
        assert isinstance(m.fc1, SparseLinear)
    dense = _lenet(finalized)
    with torch.no_grad():
        torch.testing.assert_close(m(x2), dense(x2), atol=ATOL, rtol=0)
    assert "fc1" in report.table()


def test_sparsify_conv_model_matches_dense():
    m = _conv_net()
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        ref = m(x).clone()
    report = sparsify(m, x, min_speedup=1e-9, repeats=2, formats=("csr", "scipy"))
    assert [c.kind for c in report.layers] == ["Conv2d", "Conv2d", "Linear"]
    assert isinstance(m[0], SparseConv2d) and isinstance(m[2], SparseConv2d)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref, atol=ATOL, rtol=0)


def test_layer_below_min_sparsity_is_never_converted():
    torch.manual_seed(2)
    m = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    LevelPruner({"0": 0.1, "2": 0.95}).prune(m)
    report = sparsify(m, torch.randn(1, 64), min_sparsity=0.5, min_speedup=1e-9, repeats=2)
    first, last = report.layers
    assert first.format == "dense" and "min_sparsity" in first.reason and first.dense_ms is None
    assert not isinstance(m[0], SparseLinear)
    assert last.format != "dense" and isinstance(m[2], SparseLinear)


def test_dense_wins_keeps_layer_dense():
    """An impossible bar (sparse must be 1e9x faster) leaves every layer dense, with the measurement reported."""
    m = _lenet(True)
    report = sparsify(m, torch.randn(1, 1, 28, 28), min_speedup=1e9, repeats=2, formats=("csr",))
    assert report.converted == []
    assert all(c.reason.startswith("dense is faster") and c.sparse_ms is not None for c in report.layers)
    assert isinstance(m.fc1, nn.Linear)


def test_inference_only():
    m = _lenet(True)
    sparsify(m, torch.randn(1, 1, 28, 28), min_speedup=1e-9, repeats=1, formats=("csr",))
    with pytest.raises(UserError, match="inference only"):
        m.train()(torch.randn(1, 1, 28, 28))
    m.eval()
    with pytest.raises(UserError, match="inference only"):
        m(torch.randn(1, 1, 28, 28, requires_grad=True))


def test_bad_inputs_are_user_errors():
    with pytest.raises(UserError, match="no nn.Linear or nn.Conv2d"):
        sparsify(nn.Sequential(nn.ReLU()), torch.randn(1, 3))
    m = nn.Sequential(nn.Linear(4, 4))
    with torch.no_grad():
        m[0].weight[0, 0] = float("nan")
    with pytest.raises(UserError, match="NaN or infinite"):
        sparsify(m, torch.randn(1, 4))
    with pytest.raises(UserError, match="unknown sparse format"):
        sparsify(_lenet(True), torch.randn(1, 1, 28, 28), formats=("coo",))
    with pytest.raises(UserError, match="threads"):
        sparsify(_lenet(True), torch.randn(1, 1, 28, 28), threads=0)
    bad = SharedTensor((2, 3), np.array([1.0], np.float32), 1, np.array([4, 2]), np.array([0, 0]), 2)
    with pytest.raises(UserError, match="strictly increasing"):
        sparse_from_shared(bad)


def _shared(weight: torch.Tensor, k: int = 8) -> SharedTensor:
    w = weight.detach().numpy()
    nz = w[w != 0]
    codebook = np.quantile(nz, np.linspace(0, 1, k)).astype(np.float32)
    return SharedTensor.from_dense(w, codebook, bits=3, gap_bits=5)


def test_csr_from_shared_equals_dense_decode():
    torch.manual_seed(3)
    for shape in [(6, 10), (5, 3, 3, 3)]:
        w = torch.randn(shape)
        w[torch.rand(shape) < 0.8] = 0
        t = _shared(w)
        csr = sparse_from_shared(t)
        assert csr.layout == torch.sparse_csr and csr.shape == (shape[0], int(np.prod(shape[1:])))
        np.testing.assert_array_equal(csr.to_dense().numpy(), t.to_dense().reshape(shape[0], -1))


def _nnc_file(tmp_path) -> tuple:
    m = _lenet(True)
    shared = {f"{n}.weight": _shared(getattr(m, n).weight) for n in ("fc1", "fc2", "fc3")}
    dense = {f"{n}.bias": getattr(m, n).bias.detach().numpy().copy() for n in ("fc1", "fc2", "fc3")}
    cm = CompressedModel(metadata={"model": "lenet300", "in_shape": [1, 28, 28], "num_classes": 10}, shared=shared, dense=dense)
    path = save_nnc(tmp_path / "lenet.nnc", cm)
    return path, cm


@pytest.mark.parametrize("given_model", [False, True])
def test_load_nnc_sparse_matches_dense_decode(tmp_path, given_model):
    path, cm = _nnc_file(tmp_path)
    ref_model = model_from_nnc(cm)
    model = build_model("lenet300", (1, 28, 28), 10) if given_model else None
    sparse = load_nnc_sparse(path, model, format="csr")
    assert all(isinstance(getattr(sparse, n), SparseLinear) for n in ("fc1", "fc2", "fc3"))
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), ref_model(x), atol=ATOL, rtol=0)
    assert not any(p.is_meta for p in sparse.state_dict().values())


def test_load_nnc_sparse_refuses_mismatched_model(tmp_path):
    path, _ = _nnc_file(tmp_path)
    with pytest.raises(UserError, match="do not match"):
        load_nnc_sparse(path, nn.Sequential(nn.Linear(784, 10)))


def test_conv_dense_fn_reference():
    """SparseConv2d's own im2col arithmetic, checked against F.conv2d on a non-square input."""
    torch.manual_seed(4)
    conv = nn.Conv2d(3, 5, (3, 2), stride=(2, 1), padding=(1, 0))
    with torch.no_grad():
        conv.weight[torch.rand_like(conv.weight) < 0.7] = 0
        x = torch.randn(2, 3, 9, 7)
        sc = SparseConv2d.from_dense(conv, "csr")
        torch.testing.assert_close(sc(x), F.conv2d(x, conv.weight, conv.bias, (2, 1), (1, 0)), atol=ATOL, rtol=0)


@pytest.mark.skipif("kernel" not in FORMATS, reason="no C compiler here")
def test_kernel_spans_several_column_panels():
    """More inputs than one panel (and not a multiple of it): the per-panel partial sums add up to the dense result."""
    torch.manual_seed(5)
    lin = nn.Linear(2 * sparse_kernel.PANEL + 77, 9)
    with torch.no_grad():
        lin.weight[torch.rand_like(lin.weight) < 0.9] = 0
        x = torch.randn(3, lin.in_features)
        torch.testing.assert_close(SparseLinear.from_dense(lin, "kernel")(x), lin(x), atol=ATOL, rtol=0)


def test_cli_evaluate_sparse_gives_the_dense_accuracy(tmp_path):
    import json

    from typer.testing import CliRunner

    from nncompress.cli import app
    from nncompress.core.io import save_weights

    torch.manual_seed(6)
    m = build_model("lenet300", (1, 8, 8), 10)
    LevelPruner(0.9).prune(m)
    save_weights(finalize(m).state_dict(), tmp_path / "w.safetensors")
    top1 = []
    for extra in ([], ["--sparse"]):
        r = CliRunner().invoke(app, ["evaluate", "--model", "lenet300", "--data", "digits", "--weights",
                                     str(tmp_path / "w.safetensors"), "--json", *extra])
        assert r.exit_code == 0, r.output
        top1.append(json.loads(r.stdout.strip().splitlines()[-1])["top1"])
    assert top1[0] == top1[1]


def test_state_dict_round_trip_rebuilds_the_executor():
    m = _lenet(True)
    a = sparse_module_for(m.fc2, "kernel" if "kernel" in FORMATS else "csr")
    with torch.no_grad():
        m.fc2.weight.mul_(2.0)
        b = sparse_module_for(m.fc2, a.format)  # same pattern, other values
        a.load_state_dict(b.state_dict())  # a, after loading b's state, must compute what b computes
        x = torch.randn(2, 300)
        torch.testing.assert_close(a(x), b(x), atol=ATOL, rtol=0)


def test_without_the_kernel_sparsify_still_works(monkeypatch):
    """No C compiler (or NNCOMPRESS_NO_KERNEL): the kernel format is dropped with a note, the rest still run."""
    monkeypatch.setattr(sparse_kernel, "_tried", True)
    monkeypatch.setattr(sparse_kernel, "_lib", None)
    monkeypatch.setattr(sparse_kernel, "_reason", "no C compiler (cc/gcc/clang) on PATH")
    m = _lenet(True)
    x = torch.randn(1, 1, 28, 28)
    with torch.no_grad():
        ref = m(x).clone()
    report = sparsify(m, x, min_speedup=1e-9, repeats=1)
    assert any("kernel format unavailable" in n for n in report.notes)
    assert all(c.format in ("csr", "scipy") or c.format.startswith("bsr") for c in report.layers)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref, atol=ATOL, rtol=0)
    with pytest.raises(UserError, match="kernel is unavailable"):
        sparse_module_for(m.fc1 if isinstance(m.fc1, nn.Linear) else nn.Linear(4, 4), "kernel")
