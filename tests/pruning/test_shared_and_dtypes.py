"""Issue 12: shared modules, tied weights, non-float32 models and broken parametrized copies in the pruners.

Each case here used to give a misleading refusal, a raw KeyError/TypeError, or a silently dense weight.
"""
import pytest
import torch
from torch import nn

from nncompress.core.errors import UserError
from nncompress.pruning import (
    LevelPruner,
    MagnitudePruner,
    SensitivityPruner,
    SplicingPruner,
    finalize,
    get_mask,
    load_masked_state_dict,
    mask_state_dict,
)


class Aliased(nn.Module):
    """One Linear registered under two names (`self.b = self.a`), applied twice."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = self.a
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        return self.out(torch.relu(self.b(torch.relu(self.a(x)))))


class Tied(nn.Module):
    """Two Linear modules holding one weight tensor (`b.weight = a.weight`), separate biases."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.b.weight = self.a.weight
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        return self.out(torch.relu(self.b(torch.relu(self.a(x)))))


def _zero_fraction(t: torch.Tensor) -> float:
    return float((t == 0).float().mean())


def test_a_module_under_two_names_is_pruned_by_either_name():
    torch.manual_seed(0)
    model = Aliased()
    LevelPruner(0.5, layers=["b"]).prune(model)  # 'b' used to be an "unknown layer"
    assert _zero_fraction(model.a.weight) == 0.5 and model.a is model.b
    LevelPruner({"a": 0.75, "b": 0.75}).prune(model)  # both names, one value: one module, one mask
    assert _zero_fraction(model.a.weight) == 0.75


def test_two_names_with_two_values_are_refused_naming_both():
    with pytest.raises(UserError) as e:
        LevelPruner({"a": 0.5, "b": 0.7}).prune(Aliased())
    msg = str(e.value)
    assert "'a'" in msg and "'b'" in msg and "\n" not in msg


def test_aliased_masked_state_dict_loads_into_a_fresh_model():
    torch.manual_seed(0)
    model = Aliased()
    LevelPruner(0.5).prune(model)
    state = model.state_dict()
    assert any(k.startswith("b.parametrizations.") for k in state)  # state_dict lists the module under both names
    fresh = load_masked_state_dict(Aliased(), state)  # used to refuse: "mask 'b.weight' names layer 'b' ..."
    x = torch.randn(4, 8)
    assert torch.equal(fresh(x), model(x))


def test_tied_weight_gets_one_mask_in_every_holder():
    torch.manual_seed(0)
    model = Tied()
    LevelPruner(0.5, layers=["a"]).prune(model)  # choosing one holder prunes the tensor everywhere it is used
    assert get_mask(model.a) is get_mask(model.b)
    assert torch.equal(model.a.weight, model.b.weight) and _zero_fraction(model.b.weight) == 0.5
    MagnitudePruner(0.2).prune(model)
    assert get_mask(model.a) is get_mask(model.b) and torch.equal(model.a.weight, model.b.weight)
    finalize(model)
    assert model.a.weight is model.b.weight  # still one Parameter after baking
    assert _zero_fraction(model.a.weight) >= 0.5


def test_global_scope_counts_a_tied_weight_once():
    torch.manual_seed(0)
    model = Tied()
    LevelPruner(0.5, scope="global").prune(model)
    assert get_mask(model.a) is get_mask(model.b)
    unique = [model.a.weight, model.out.weight]  # model.b.weight is model.a.weight
    n_zero = sum(int((w == 0).sum()) for w in unique)
    assert n_zero == round(0.5 * sum(w.numel() for w in unique))


def test_tied_weights_with_different_values_are_refused():
    with pytest.raises(UserError, match="'a' and 'b'"):
        SensitivityPruner({"a": 0.5, "b": 1.0}).prune(Tied())


def test_splicing_shares_the_tied_mask():
    torch.manual_seed(0)
    model = Tied()
    sp = SplicingPruner(c=0.0, layers=["a"])
    sp.on_train_begin(model, None)
    sp.splice()
    assert get_mask(model.a) is get_mask(model.b)
    assert 0 < _zero_fraction(model.b.weight) < 1
    sp.on_train_end(model)
    assert not get_mask(model.a) is None and torch.equal(model.a.weight, model.b.weight)
    assert set(mask_state_dict(model)) == {"a.weight", "b.weight"}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_pruners_keep_the_model_dtype_and_exact_counts(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).to(dtype)
    LevelPruner(0.5).prune(model)
    assert all(p.dtype == dtype for p in model.parameters())
    assert int((model[0].weight == 0).sum()) == 256 and int((model[2].weight == 0).sum()) == 64
    LevelPruner(0.75, scope="global").prune(model)
    assert sum(int((m.weight == 0).sum()) for m in (model[0], model[2])) == round(0.75 * (512 + 128))
    SensitivityPruner(1.0).prune(model)
    MagnitudePruner(0.01).prune(model)
    assert model(torch.randn(2, 16, dtype=dtype)).dtype == dtype


@pytest.mark.parametrize("dtype,threshold", [(torch.float16, 0.09997), (torch.bfloat16, 0.09998)])
def test_half_precision_threshold_is_compared_exactly(dtype, threshold):
    """0.1 stored in fp16 is 0.0999756 and in bf16 0.1000977, both above the threshold; comparing in the
    weight's own dtype rounds the threshold onto the same grid value and prunes them."""
    layer = nn.Linear(2, 1, bias=False).to(dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.1, 0.01]]))
    assert float(layer.weight.detach()[0, 0]) > threshold
    MagnitudePruner(threshold).prune(nn.Sequential(layer))
    assert get_mask(layer).tolist() == [[True, False]]


def test_float64_scores_keep_float64_resolution():
    """Two weights 1e-12 apart: float32 would call them equal (and remove the lower index); float64 does not."""
    layer = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0 + 1e-12, 1.0]], dtype=torch.float64))
    LevelPruner(0.5).prune(nn.Sequential(layer))
    assert get_mask(layer).tolist() == [[True, False]]


def test_a_broken_parametrized_copy_is_a_user_error_not_a_key_error():
    """`type(masked_layer)(...)` builds a Parametrized* object without parametrizations; torch fails on it with KeyError."""
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    LevelPruner(0.5).prune(model)
    broken = nn.Sequential(type(model[0])(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(UserError) as e:
        LevelPruner(0.5).prune(broken)
    assert "'0'" in str(e.value) and "plain Linear" in str(e.value) and "\n" not in str(e.value)


def test_pruning_after_weight_sharing_is_refused_not_silently_ignored():
    """SharedWeight computes centroids[codes]·mask and ignores the tensor it is given: a new or updated pruning
    mask on that weight would change nothing while the pruner reported success."""
    from nncompress.sharing import share_weights

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    LevelPruner(0.5).prune(model)
    share_weights(model, bits=4)
    with pytest.raises(UserError, match="SharedWeight") as e:
        LevelPruner(0.8).prune(model)
    assert "\n" not in str(e.value)
