"""Issue 12: channel removal on masked, aliased, tied and non-float32 models.

Thinning used to drop unstructured masks (pruned weights came back and the next pruner hit a raw KeyError),
to leave the second name of a module registered twice at full width, to untie tied weights silently, and to
refuse float64/float16/bfloat16 models with a message blaming a hard-coded channel count.
"""
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from nncompress.core.errors import UserError
from nncompress.pruning import LevelPruner, apply_mask, dense_tensor, finalize, get_mask, masked_layers
from nncompress.pruning.criteria import prune_count
from nncompress.pruning.structured import (
    build_dependency_graph,
    channel_scores,
    channels_to_remove,
    prune_channels,
    remove_channels,
    remove_dead_channels,
)

from .models import randomize_bn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = F.relu(self.bn2(self.c2(F.relu(self.bn(self.c1(x))))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Aliased(nn.Module):
    """conv `a` registered again as `b` and applied twice."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = self.a
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.b(F.relu(self.a(F.relu(self.c1(x))))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Tied(Aliased):
    """Two convs holding one weight tensor; `use_b=False` never calls `b` in forward."""

    def __init__(self, use_b: bool = True):
        super().__init__()
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.b.weight = self.a.weight
        self.use_b = use_b

    def forward(self, x):
        x = F.relu(self.a(F.relu(self.c1(x))))
        if self.use_b:
            x = F.relu(self.b(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


X = torch.randn(2, 3, 8, 8)


def _masked_net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    net = randomize_bn(Net())
    LevelPruner(0.5).prune(net)
    return net


def test_thinning_slices_masks_with_the_weights():
    net = _masked_net()
    old_mask, old_dense = get_mask(net.c2).clone(), dense_tensor(net.c2).detach().clone()
    graph = build_dependency_graph(net, X)
    thin = remove_channels(net, graph, {graph.group("c1").name: [0, 2], graph.group("c2").name: [5]}, X)
    keep_in, keep_out = [1, 3, 4, 5, 6, 7], [0, 1, 2, 3, 4]
    assert set(masked_layers(thin)) == {"c1", "c2", "fc"}
    assert torch.equal(get_mask(thin.c2), old_mask[keep_out][:, keep_in])
    assert torch.equal(dense_tensor(thin.c2), old_dense[keep_out][:, keep_in])  # the dense tensor stays under the mask
    assert torch.equal(thin.c2.weight, (old_dense * old_mask)[keep_out][:, keep_in])  # pruned weights stay pruned
    assert type(thin.c2) is not nn.Conv2d and parametrize.type_before_parametrizations(thin.c2) is nn.Conv2d
    assert net.c2.weight.shape[1] == 8  # the original is untouched


def test_a_thinned_masked_model_can_be_pruned_again_and_finalized():
    net = _masked_net()
    thin = prune_channels(net, X, "l1", 0.5)
    before = {n: m.weight.detach().clone() for n, m in masked_layers(thin).items()}
    LevelPruner(0.8).prune(thin)  # used to raise KeyError: 'weight' from inside torch's parametrize
    for name, m in masked_layers(thin).items():
        assert (m.weight[before[name] == 0] == 0).all()  # nothing revived
        assert int((~get_mask(m)).sum()) == prune_count(0.8, m.weight.numel())
    y = thin(X)
    finalize(thin)
    assert not masked_layers(thin) and torch.allclose(thin(X), y)


def test_straight_through_masks_stay_straight_through():
    net = _masked_net()
    apply_mask(net.c2, get_mask(net.c2), straight_through=True)
    thin = prune_channels(net, X, "l1", 0.5)
    assert thin.c2.parametrizations["weight"][0].straight_through is True
    assert thin.c1.parametrizations["weight"][0].straight_through is False


def test_dead_channel_removal_keeps_masks():
    net = _masked_net()
    with torch.no_grad():
        dense_tensor(net.c1)[3] = 0  # filter 3 of c1 dead, and its bias, and the bn shift after it
        net.c1.bias[3] = 0
        net.bn.bias[3] = 0
        net.bn.running_mean[3] = 0
    thin, removed = remove_dead_channels(net, X)
    assert removed and set(masked_layers(thin)) == {"c1", "c2", "fc"}
    assert torch.allclose(thin(X), net(X), atol=1e-5)


class _Double(nn.Module):
    def forward(self, w):
        return 2 * w


def test_a_parametrization_that_cannot_be_sliced_is_refused_naming_the_layer():
    torch.manual_seed(0)
    net = Net()
    parametrize.register_parametrization(net.c2, "weight", _Double())
    with pytest.raises(UserError) as e:
        prune_channels(net, X, "l1", 0.5)
    msg = str(e.value)
    assert "'c2'" in msg and "_Double" in msg and "\n" not in msg


def test_a_module_under_two_names_is_thinned_under_both():
    torch.manual_seed(0)
    net = Aliased().eval()
    thin = prune_channels(net, X, "l1", 0.5)  # used to thin only `a` and then blame a "hard-coded channel count"
    assert thin.a is thin.b and thin.a.out_channels == 4 and thin.a.in_channels == 4
    assert thin(X).shape == (2, 4)


def test_tied_weights_lose_the_same_channels_and_stay_tied():
    torch.manual_seed(0)
    net = Tied().eval()
    thin = prune_channels(net, X, "l1", 0.5)
    assert thin.a.weight is thin.b.weight and thin.a.out_channels == 4
    assert thin.a.bias is not thin.b.bias
    thin(X).sum().backward()  # one tensor, gradients from both uses
    assert thin.a.weight.grad is not None


def test_tied_masked_weights_share_one_mask_after_thinning():
    torch.manual_seed(0)
    net = Tied().eval()
    LevelPruner(0.5).prune(net)
    thin = prune_channels(net, X, "l1", 0.5)
    assert get_mask(thin.a) is get_mask(thin.b)
    assert dense_tensor(thin.a) is dense_tensor(thin.b)
    finalize(thin)
    assert thin.a.weight is thin.b.weight


def test_a_tie_the_graph_cannot_couple_pins_its_channels():
    """`b` shares `a`'s weight but forward never calls it: removing `a`'s channels would untie them silently."""
    torch.manual_seed(0)
    net = Tied(use_b=False).eval()
    graph = build_dependency_graph(net, X)
    assert graph.group_of("a") is None and graph.group_of("c1") is None  # a's input is c1's output: pinned too
    with pytest.raises(UserError, match="no prunable channels"):
        prune_channels(net, X, "l1", 0.5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("criterion", ["l1", "l2", "bn_scale", "taylor"])
def test_channel_pruning_keeps_the_model_dtype(dtype, criterion):
    torch.manual_seed(0)
    net = randomize_bn(Net()).to(dtype)
    data = [(X, torch.tensor([0, 1]))] if criterion == "taylor" else None
    thin = prune_channels(net, X, criterion, 0.5, data=data)  # a float32 example input, cast to the model's dtype
    assert thin.c1.out_channels == 4 and thin.c2.out_channels == 3
    assert {p.dtype for p in thin.parameters()} == {dtype}
    assert {b.dtype for n, b in thin.named_buffers() if "running" in n} == {dtype}
    assert thin(X.to(dtype)).dtype == dtype


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_macs_target_and_dead_channels_work_in_every_dtype(dtype):
    torch.manual_seed(0)
    net = randomize_bn(Net()).to(dtype)
    thin = prune_channels(net, X, "l1", remove_macs=0.3)
    assert thin.c1.out_channels < 8 and thin(X.to(dtype)).dtype == dtype
    with torch.no_grad():
        net.c2.weight[:, 2] = 0  # nothing reads channel 2 of c1
    dead, removed = remove_dead_channels(net, X)
    assert removed == {"c1": 1} and dead.c1.weight.dtype == dtype


def test_float64_scores_are_not_rounded_to_float32():
    """Two filters whose L1 norms differ by 1e-12: float64 tells them apart, float32 (or bf16 numpy) would not."""
    net = Net().double()
    with torch.no_grad():
        net.c1.weight.fill_(0.5)
        net.c1.weight[1, 0, 0, 0] += 1e-12  # filter 1 is the larger one: filter 0 must go
    graph = build_dependency_graph(net, X)
    scores = channel_scores(net, graph, "l1", scope="filters")
    assert channels_to_remove({"c1": scores["c1"][:2]}, {"c1": 0.5}) == {"c1": [0]}


def test_nm_masks_a_tied_weight_once():
    from nncompress.pruning.structured import apply_nm_sparsity, is_nm_sparse

    torch.manual_seed(0)
    net = Tied()
    apply_nm_sparsity(net, 2, 4, layers=["a"])
    assert get_mask(net.a) is get_mask(net.b) and is_nm_sparse(net.b.weight, 2, 4)


def test_a_thinned_masked_state_dict_loads_into_a_fresh_model():
    from nncompress.pruning import load_masked_state_dict
    from nncompress.pruning.structured import resize_to_state_dict

    net = _masked_net()
    thin = prune_channels(net, X, "l1", 0.5).eval()
    state = thin.state_dict()
    fresh = resize_to_state_dict(Net(), state)  # shapes read from parametrizations.weight.original
    load_masked_state_dict(fresh, state)
    assert set(masked_layers(fresh)) == {"c1", "c2", "fc"}
    assert torch.equal(fresh.eval()(X), thin(X))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_sensitivity_scan_and_netadapt_take_float32_data_for_other_dtypes(dtype):
    from torch.utils.data import DataLoader, TensorDataset

    from nncompress.pruning.structured import netadapt, structured_sensitivity

    torch.manual_seed(0)
    net = randomize_bn(Net()).to(dtype)
    data = DataLoader(TensorDataset(torch.randn(32, 3, 8, 8), torch.randint(0, 4, (32,))), batch_size=8)  # float32 data
    scan = structured_sensitivity(net, X, data, ratios=(0.5,))
    assert set(scan) == {"c1", "c2"} and all(0 <= v[0.5] <= 100 for v in scan.values())
    result = netadapt(net, data, data, X, 0.9, short_steps=1, long_epochs=1, max_iterations=1, repeats=2)
    assert {p.dtype for p in result.model.parameters()} == {dtype}
    if dtype == torch.float64:  # bf16 convolutions on a CPU need not get faster when thinner: no proposal may qualify
        assert result.history  # a proposal was fine-tuned on the float32 batches


def test_a_second_name_finds_the_group_and_the_nm_layer():
    from nncompress.pruning.structured import apply_nm_sparsity

    torch.manual_seed(0)
    net = Aliased().eval()
    graph = build_dependency_graph(net, X)
    assert graph.group("b") is graph.group("a") and graph.group_of("b") is graph.group_of("a")
    thin = prune_channels(net, X, "l1", 0.0, ratios={"b": 0.5})  # used to be "no prunable channel group 'b'"
    assert thin.a is thin.b and thin.a.out_channels == 4
    masks = apply_nm_sparsity(net, 2, 4, layers=["b", "a"])  # one module, one mask, under the first name given
    assert list(masks) == ["b"] and get_mask(net.a) is get_mask(net.b)


def test_a_tie_that_would_be_cut_is_refused_naming_both_layers():
    """A graph built before the weights were tied does not couple them; thinning must not untie them silently."""
    torch.manual_seed(0)
    net = Tied().eval()
    net.b.weight = nn.Parameter(net.a.weight.detach().clone())  # untied while the graph is built ...
    graph = build_dependency_graph(net, X)
    net.b.weight = net.a.weight  # ... and tied again afterwards
    with pytest.raises(UserError) as e:
        remove_channels(net, graph, {graph.group("a").name: [0, 1]}, X)
    assert "'a' and 'b'" in str(e.value) and "\n" not in str(e.value)


def test_run_prune_channels_keeps_the_masks_of_masked_weights(tmp_path):
    """Magnitude-pruned weights saved with their masks, then channel-pruned and fine-tuned: still masked, still zero."""
    from nncompress.architectures import LeNet5
    from nncompress.core.io import load_weights, save_weights
    from nncompress.pruning import load_masked_state_dict
    from nncompress.pruning.structured import resize_to_state_dict
    from nncompress.pruning.structured.api import run_prune_channels

    torch.manual_seed(0)
    net = LeNet5((1, 8, 8), 10)
    LevelPruner(0.6).prune(net)
    save_weights(net.state_dict(), tmp_path / "masked.safetensors")
    rep = run_prune_channels("lenet5", "digits", tmp_path / "masked.safetensors", ratio=0.5, finetune_epochs=1,
                             pretrain_epochs=0, latency_batch=4, out=tmp_path / "thin.safetensors")
    assert rep["after"]["params"] < rep["before"]["params"]
    state = load_weights(tmp_path / "thin.safetensors")
    fresh = load_masked_state_dict(resize_to_state_dict(LeNet5((1, 8, 8), 10), state), state)
    assert set(masked_layers(fresh)) == set(masked_layers(net))
    for name, m in masked_layers(fresh).items():
        assert (m.weight[~get_mask(m)] == 0).all()  # fine-tuning did not revive them
        assert float((~get_mask(m)).float().mean()) > 0.3  # the weakest (most-pruned) channels went, the rest stay masked
