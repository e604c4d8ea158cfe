"""The fused sparse MLP: chain detection, one-call execution equal to dense, and sparsify's measured choice.

No speed is asserted (a shared machine): the choice is driven through `min_speedup`, which decides from the timing."""
import copy

import pytest
import torch
from torch import nn

from nncompress.architectures import build_model
from nncompress.core.errors import UserError
from nncompress.pruning import LevelPruner
from nncompress.pruning.mask import finalize
from nncompress.sparse import (
    FusedSparseMLP,
    MLPChain,
    SparseLinear,
    find_mlp_chain,
    fused_modules,
    sparse_module_for,
    sparsify,
    unfuse,
)
from nncompress.sparse import kernel as sparse_kernel

pytestmark = pytest.mark.skipif(sparse_kernel.load() is None, reason="no C compiler for the sparse kernel")
ATOL = 1e-5


def _lenet() -> nn.Module:
    torch.manual_seed(0)
    m = build_model("lenet300", (1, 28, 28), 10)
    LevelPruner({"fc1": 0.935, "fc2": 0.9, "fc3": 0.7}).prune(m)
    return finalize(m).eval()


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        return self.b(torch.relu(self.a(x))) + x  # x is used twice: not a chain


class _Tanh(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 4)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def test_chain_detection():
    assert find_mlp_chain(_lenet()) == MLPChain(("fc1", "fc2", "fc3"), (True, True, False), True)
    seq = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 5), nn.Linear(5, 3), nn.ReLU())
    assert find_mlp_chain(seq) == MLPChain(("1", "3", "4"), (True, False, True), True)
    assert find_mlp_chain(_Residual()) is None
    assert find_mlp_chain(_Tanh()) is None  # an activation the kernel does not compute
    assert find_mlp_chain(nn.Sequential(nn.Linear(4, 4))) is None  # one layer: nothing to fuse
    assert find_mlp_chain(nn.Sequential(nn.Flatten(2), nn.Linear(4, 4), nn.Linear(4, 4))) is None  # not flatten(1)
    assert find_mlp_chain(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.ReLU(), nn.Linear(4, 4))) is None


def _fuse_by_hand(m: nn.Module) -> FusedSparseMLP:
    chain = find_mlp_chain(m)
    for n in chain.linears:
        setattr(m, n, sparse_module_for(getattr(m, n), "kernel"))
    fused = FusedSparseMLP([getattr(m, n) for n in chain.linears], chain.relu, chain.flatten)
    m.forward = fused
    return fused


@pytest.mark.parametrize("batch", [1, 5])
def test_fused_lenet_matches_dense(batch):
    m = _lenet()
    dense = copy.deepcopy(m)
    _fuse_by_hand(m)
    x = torch.randn(batch, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(m(x), dense(x), atol=ATOL, rtol=0)


def test_fused_sequential_with_relu_last_and_no_bias_matches_dense():
    torch.manual_seed(3)
    seq = nn.Sequential(nn.Linear(2500, 40, bias=False), nn.ReLU(), nn.Linear(40, 7), nn.ReLU()).eval()
    LevelPruner(0.8).prune(seq)
    finalize(seq)
    dense = copy.deepcopy(seq)
    _fuse_by_hand(seq)  # 2500 inputs: two column panels of the kernel
    x = torch.randn(3, 2500)
    with torch.no_grad():
        out = seq(x)
        torch.testing.assert_close(out, dense(x), atol=ATOL, rtol=0)
    assert (out >= 0).all() and (out == 0).any()  # the last ReLU ran


def test_hand_worked_two_layer_mlp():
    """W1 = [[1, 0, -2], [0, 3, 0]], b1 = [0.5, -10]; W2 = [[2, 1]], b2 = [1]; x = [1, 2, 3]:
    h = relu([1 - 6 + 0.5, 6 - 10]) = relu([-4.5, -4]) = [0, 0] → y = 1; x = [4, 1, 1]: h = relu([2.5, -7]) = [2.5, 0] → y = 6."""
    l1, l2 = nn.Linear(3, 2), nn.Linear(2, 1)
    with torch.no_grad():
        l1.weight.copy_(torch.tensor([[1.0, 0, -2], [0, 3, 0]]))
        l1.bias.copy_(torch.tensor([0.5, -10]))
        l2.weight.copy_(torch.tensor([[2.0, 1]]))
        l2.bias.copy_(torch.tensor([1.0]))
    fused = FusedSparseMLP([sparse_module_for(l1, "kernel"), sparse_module_for(l2, "kernel")], (True, False), False)
    with torch.no_grad():
        assert fused(torch.tensor([[1.0, 2, 3], [4, 1, 1]])).tolist() == [[1.0], [6.0]]


def test_sparsify_installs_fusion_when_faster_and_not_when_slower():
    x = torch.randn(1, 1, 28, 28)
    m = _lenet()
    dense = copy.deepcopy(m)
    rep = sparsify(m, x, min_speedup=1e-6, repeats=2)  # any measured time counts as faster: the fusion is installed
    assert [f.applied for f in rep.fused] == [True] and rep.fused[0].layers == ["fc1", "fc2", "fc3"]
    assert list(fused_modules(m)) == [""] and all(isinstance(getattr(m, n), SparseLinear) for n in ("fc1", "fc2", "fc3"))
    assert {c.format for c in rep.layers} == {"kernel"}
    xs = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(m(xs), dense(xs), atol=ATOL, rtol=0)
        copied = copy.deepcopy(m)  # the fused forward is rebuilt on the copy's own layers
        assert vars(copied)["forward"].layers[0] is copied.fc1
        torch.testing.assert_close(copied(xs), dense(xs), atol=ATOL, rtol=0)
    assert unfuse(m) and not fused_modules(m)
    with torch.no_grad():
        torch.testing.assert_close(m(xs), dense(xs), atol=ATOL, rtol=0)  # per-layer sparse modules again

    slow = _lenet()
    rep = sparsify(slow, x, min_speedup=1e9, repeats=2)  # nothing is ever that much faster: nothing changes
    assert [f.applied for f in rep.fused] == [False] and "needs" in rep.fused[0].reason
    assert not fused_modules(slow) and isinstance(slow.fc1, nn.Linear)


def test_fusion_respects_min_sparsity_and_can_be_switched_off():
    x = torch.randn(1, 1, 28, 28)
    m = _lenet()
    rep = sparsify(m, x, min_sparsity=0.8, min_speedup=1e-6, repeats=2)  # fc3 is 70 % sparse
    assert not rep.fused[0].applied and "fc3 below min_sparsity" in rep.fused[0].reason
    m = _lenet()
    assert sparsify(m, x, fuse=False, min_speedup=1e-6, repeats=2).fused == [] and not fused_modules(m)


def test_state_dict_load_repoints_the_fused_call():
    x = torch.randn(2, 1, 28, 28)
    a, b = _lenet(), _lenet()
    with torch.no_grad():
        for layer in (b.fc1, b.fc2, b.fc3):
            layer.weight.mul_(-0.5)  # same sparsity pattern, other values
        ref_b = b(x)
    sparsify(a, x[:1], min_speedup=1e-6, repeats=2)
    sparsify(b, x[:1], min_speedup=1e-6, repeats=2)
    a.load_state_dict(b.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(a(x), ref_b, atol=ATOL, rtol=0)


def test_fused_refuses_training_and_wrong_shapes():
    m = _lenet()
    _fuse_by_hand(m)
    with pytest.raises(UserError, match="inference only"):
        m.train()(torch.randn(1, 1, 28, 28))
    m.eval()
    with pytest.raises(UserError, match="784 features"), torch.no_grad():
        m(torch.randn(1, 1, 28, 27))
    l1, l2 = nn.Linear(4, 3), nn.Linear(5, 2)
    with pytest.raises(UserError, match="feeds one with 5 inputs"):
        FusedSparseMLP([sparse_module_for(l1, "kernel"), sparse_module_for(l2, "kernel")], (True, False), False)
    with pytest.raises(UserError, match="format 'kernel'"):
        FusedSparseMLP([sparse_module_for(l1, "csr"), sparse_module_for(nn.Linear(3, 2), "kernel")], (True, False), False)
