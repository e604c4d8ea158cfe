"""Spatially separable decomposition (Jaderberg et al. 2014, scheme 2): exactness at full rank, costs by hand, CLI."""
import json

import pytest
import torch
import typer
from torch import nn
from typer.testing import CliRunner

from nncompress.architectures import build_model
from nncompress.commands.distill import register
from nncompress.core import UserError
from nncompress.lowrank import (
    LowRank,
    factorize,
    load_factorized,
    reconstruct_weight,
    relative_error,
    save_factorized,
    separable_conv,
    separable_matrix,
)


def test_reshaping_by_hand():
    # W[n,c,y,x] → M[(c,y),(x,n)]: row c·k_h + y, column x·N + n
    w = torch.arange(2 * 3 * 2 * 2, dtype=torch.float64).reshape(2, 3, 2, 2)  # N=2, C=3, k=2
    m = separable_matrix(w)
    assert m.shape == (3 * 2, 2 * 2)
    for n, c, y, x in [(0, 0, 0, 0), (1, 2, 1, 0), (0, 1, 0, 1), (1, 1, 1, 1)]:
        assert m[c * 2 + y, x * 2 + n] == w[n, c, y, x]


@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (1, 0, 1), (2, 1, 1), (1, 2, 2)])
def test_full_rank_reproduces_the_conv(stride, padding, dilation):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, stride=stride, padding=padding, dilation=dilation).double()
    x = torch.randn(2, 3, 9, 11, dtype=torch.float64)
    full = min(3 * 3, 3 * 5)  # K = min(C·k, k·N) = 9
    pair = separable_conv(conv, full)
    assert pair.ranks == (9,) and pair[0].kernel_size == (3, 1) and pair[1].kernel_size == (1, 3)
    # the vertical conv pads and strides rows only, the horizontal one columns only
    assert pair[0].padding == (padding, 0) and pair[1].padding == (0, padding)
    assert pair[0].stride == (stride, 1) and pair[1].stride == (1, stride)
    out = pair(x)
    assert out.shape == conv(x).shape
    assert torch.allclose(out, conv(x), atol=1e-5)
    assert relative_error(conv.weight, pair) < 1e-10


def test_truncation_is_the_best_rank_k_separable_kernel():
    # Eckart–Young: ‖W − Ŵ_K‖²_F = Σ_{i>K} s_i² of M
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    s = torch.linalg.svdvals(separable_matrix(conv.weight.detach().double()))
    pair = separable_conv(conv, 3)
    err2 = float((conv.weight.detach().double() - reconstruct_weight(pair).double()).norm() ** 2)
    assert err2 == pytest.approx(float((s[3:] ** 2).sum()), rel=1e-4)


def test_a_separable_kernel_is_recovered_at_rank_one():
    # W[n,c,y,x] = h[n,x]·v[c,y]: M is rank 1, so K = 1 is exact
    g = torch.Generator().manual_seed(0)
    v, h = torch.randn(4, 3, generator=g), torch.randn(6, 3, generator=g)
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.einsum("nx,cy->ncyx", h, v))
    net = nn.Sequential(conv)
    report = factorize(net, "separable", energy=0.999)
    assert report.layers[0].ranks == (1,) and report.layers[0].rel_error < 1e-5


def test_costs_by_hand():
    # conv 8→16, 3×3, padding 1, stride 1 at 10×10: per output pixel K·C·k + N·K·k MACs
    net = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1))
    report = factorize(net, "separable", ranks={"0": 5}, example_input=torch.randn(1, 8, 10, 10))
    (lf,) = report.layers
    assert lf.params_before == 16 * 8 * 9 + 16 and lf.macs_before == 16 * 8 * 9 * 100
    assert lf.params_after == 5 * 8 * 3 + 16 * 5 * 3 + 16
    assert lf.macs_after == (5 * 8 * 3 + 16 * 5 * 3) * 100
    # the module counted by the analysis package agrees
    from nncompress.analysis import count_macs

    assert count_macs(net, (8, 10, 10)).total_macs == lf.macs_after
    # stride 2 (10×10 → 5×5): the vertical conv runs on 5×10, the horizontal on 5×5
    net = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1))
    (lf,) = factorize(net, "separable", ranks={"0": 5}, example_input=torch.randn(1, 8, 10, 10)).layers
    assert lf.macs_after == 5 * 8 * 3 * 50 + 16 * 5 * 3 * 25 == count_macs(net, (8, 10, 10)).total_macs


def test_ratio_rule_by_hand_and_save_load(tmp_path):
    # conv 8→16 3×3: dense 1,152 + 16; /4 = 292 ≥ K·(24 + 48) + 16 → K = 3
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 1))
    report = factorize(net, "separable", ratio=4)
    assert report.layers[0].ranks == (3,) and isinstance(net[0], LowRank) and isinstance(net[2], nn.Conv2d)
    path = save_factorized(net, tmp_path / "s.safetensors")
    fresh = load_factorized(nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 1)), path)
    x = torch.randn(2, 8, 6, 6)
    assert torch.equal(fresh(x), net(x)) and fresh[0].method == "separable"
    with pytest.raises(UserError):
        factorize(nn.Sequential(nn.Linear(3, 3)), "separable", energy=0.9)


@pytest.mark.filterwarnings("ignore:separable factorization")  # 1 pretraining epoch, no fine-tuning: a drop is expected
def test_cli_on_digits(tmp_path):
    app = typer.Typer()

    @app.callback()
    def _root() -> None: ...

    register(app)
    out = tmp_path / "f.safetensors"
    r = CliRunner().invoke(app, ["factorize", "--model", "lenet5", "--data", "digits", "--method", "separable", "--ratio", "2",
                                 "--pretrain-epochs", "1", "--finetune-epochs", "0", "--allow-drop", "--json", "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout[r.stdout.index("{"):])
    assert res["method"] == "separable" and res["layers"]
    assert any(lf["skipped"] is None for lf in res["layers"])
    net = load_factorized(build_model("lenet5", (1, 8, 8), 10), out)
    assert any(isinstance(m, LowRank) and m.method == "separable" for m in net.modules())
