import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from nncompress.architectures import build_model
from nncompress.core.errors import UserError
from nncompress.data import load_dataset, make_loaders
from nncompress.sharing import finalize_sharing, get_codebook, share_weights, shared_layers
from nncompress.training import TrainConfig, train

# two obvious clusters {-1.0, -0.8} → -0.9 and {0.5, 0.7, 0.9} → 0.7; zeros are pruned
W = torch.tensor([[-1.0, 0.0, 0.5], [0.0, 0.7, -0.8], [0.9, 0.0, 0.0]])


def _tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3))
    with torch.no_grad():
        model[0].weight.copy_(W)
    return model


def test_shares_into_hand_expected_codebook():
    model = _tiny()
    info = share_weights(model, bits=1)["0"]
    assert (info.bits, info.num_centroids, info.nnz, info.numel) == (1, 2, 5, 9)
    # mse = mean of 0.1², 0.1², 0.2², 0, 0.2² over the 5 non-zeros
    assert info.mse == pytest.approx((0.01 + 0.01 + 0.04 + 0.0 + 0.04) / 5, rel=1e-5)
    expected = torch.tensor([[-0.9, 0.0, 0.7], [0.0, 0.7, -0.9], [0.7, 0.0, 0.0]])
    assert torch.allclose(model[0].weight, expected, atol=1e-6)
    centroids, codes, mask = get_codebook(model[0])
    assert torch.allclose(centroids, torch.tensor([-0.9, 0.7]))
    assert mask.tolist() == (W != 0).tolist()
    assert codes[mask].tolist() == [0, 1, 1, 0, 1]


def test_centroid_gradient_is_the_sum_of_weight_gradients_per_cluster():
    model = _tiny()
    share_weights(model, bits=1)
    centroids, codes, mask = get_codebook(model[0])
    x = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.25, -1.0]])
    target = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 2.0]])
    # dense copy of the shared weight as its own leaf: its gradient is ∂L/∂W_ij
    dense = model[0].weight.detach().clone().requires_grad_(True)
    nn.functional.mse_loss(nn.functional.linear(x, dense, model[0].bias.detach()), target).backward()
    g = dense.grad
    expected = [g[(codes == k) & mask].sum() for k in range(2)]  # Deep Compression eq. 3
    model.zero_grad()
    nn.functional.mse_loss(model(x), target).backward()
    grad = model[0].parametrizations.weight[0].centroids.grad
    assert torch.allclose(grad, torch.stack(expected), atol=1e-6)
    # written out for cluster 0 = positions (0,0) and (1,2)
    assert grad[0] == pytest.approx(float(g[0, 0] + g[1, 2]), abs=1e-6)
    assert model[0].parametrizations.weight.original.grad is None  # the dense weight gets nothing


def test_fine_tuning_trains_only_centroids_and_keeps_zeros():
    ds = load_dataset("digits").subset(256, 64)
    model = build_model("lenet300", ds.input_shape, ds.num_classes)
    with torch.no_grad():
        for lin in (model.fc1, model.fc2):
            lin.weight[lin.weight.abs() < lin.weight.abs().median()] = 0.0  # prune half
    zeros = {n: (m.weight == 0).clone() for n, m in model.named_children()}
    share_weights(model, bits={"fc1": 3, "linear": 2})
    original = model.fc1.parametrizations.weight.original.clone()
    before = model.fc1.parametrizations.weight[0].centroids.detach().clone()
    train(model, make_loaders(ds, batch_size=64)[0], TrainConfig(epochs=1, lr=0.05, weight_decay=1e-3, progress=False))
    assert not torch.equal(model.fc1.parametrizations.weight[0].centroids, before)  # centroids were trained
    assert torch.equal(model.fc1.parametrizations.weight.original, original)  # the dense weight was not
    for name, m in model.named_children():
        w = m.weight.detach()
        assert torch.equal(w[zeros[name]], torch.zeros_like(w[zeros[name]]))  # pruned stay exactly zero
        nonzero_values = torch.unique(w[w != 0])
        assert len(nonzero_values) <= (8 if name == "fc1" else 4)


def test_default_bits_are_8_for_conv_and_5_for_linear():
    model = build_model("lenet5", (1, 8, 8))
    info = share_weights(model)
    assert {n: i.bits for n, i in info.items()} == {"conv1": 8, "conv2": 8, "fc1": 5, "fc2": 5}
    assert len(torch.unique(model.fc1.weight)) <= 32 and len(torch.unique(model.conv2.weight)) <= 256
    assert set(shared_layers(model)) == {"conv1", "conv2", "fc1", "fc2"}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.endswith(("centroids", "bias")) for n in trainable)


def test_layers_and_dict_selection():
    model = build_model("lenet300", (1, 8, 8))
    assert set(share_weights(model, bits={"fc2": 4})) == {"fc2"}  # a dict of names shares just those
    assert set(share_weights(model, bits=6, layers=["fc3"])) == {"fc3"}
    assert set(shared_layers(model)) == {"fc2", "fc3"}
    with pytest.raises(UserError, match="already shared"):
        share_weights(model, bits=4, layers=["fc2"])


@pytest.mark.parametrize("bits", [0, 17, {"fc1": 0}, {"linear": 17}])
def test_bits_out_of_range(bits):
    with pytest.raises(UserError):
        share_weights(build_model("lenet300", (1, 8, 8)), bits=bits)


def test_bad_names():
    model = build_model("lenet300", (1, 8, 8))
    with pytest.raises(UserError):
        share_weights(model, bits={"fc9": 4})
    with pytest.raises(UserError):
        share_weights(model, bits=4, layers=["nope"])
    with pytest.raises(UserError):
        share_weights(model, bits={"fc1": 4}, layers=["fc2"])  # fc2 selected but no bits for it
    with pytest.raises(UserError):
        get_codebook(model.fc1)


class _Mask(nn.Module):
    def __init__(self, mask):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w):
        return w * self.mask


def test_shares_on_top_of_a_mask_parametrization_and_finalizes():
    lin = nn.Linear(3, 3)
    with torch.no_grad():
        lin.weight.copy_(W.abs() + 1.0)  # dense underlying weight, no zeros
    parametrize.register_parametrization(lin, "weight", _Mask((W != 0).float()))  # pruning mask
    model = nn.Sequential(lin)
    share_weights(model, bits=1)
    assert torch.equal(model[0].weight == 0, W == 0)  # the effective zeros became the sharing mask
    shared = model[0].weight.detach().clone()
    finalize_sharing(model)
    assert not parametrize.is_parametrized(model[0]) and shared_layers(model) == {}
    assert torch.equal(model[0].weight, shared) and model[0].weight.requires_grad
    assert set(dict(model.named_parameters())) == {"0.weight", "0.bias"}


def test_codes_must_index_the_codebook():
    from nncompress.sharing import SharedWeight

    with pytest.raises(UserError):
        SharedWeight(torch.tensor([0.5, 1.0]), torch.tensor([[0, 2]]), torch.tensor([[True, True]]))
    with pytest.raises(UserError):
        SharedWeight(torch.tensor([0.5]), torch.tensor([[0, 0]]), torch.tensor([[True]]))  # shapes differ


def test_all_zero_layer_stays_zero():
    model = nn.Sequential(nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.zero_()
    info = share_weights(model, bits=2)["0"]
    assert info.nnz == 0 and torch.equal(model[0].weight, torch.zeros(2, 4))


def test_save_and_load_a_shared_model(tmp_path):
    from nncompress.core import load_weights, save_weights
    from nncompress.sharing import load_shared_state_dict

    lin = nn.Linear(3, 3)
    parametrize.register_parametrization(lin, "weight", _Mask((W != 0).float()))  # shared on top of a mask
    model = nn.Sequential(lin, nn.ReLU(), nn.Linear(3, 2))
    share_weights(model, bits={"0": 1, "2": 2})
    path = save_weights(model.state_dict(), tmp_path / "shared.safetensors")
    fresh = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    load_shared_state_dict(fresh, load_weights(path))
    assert set(shared_layers(fresh)) == {"0", "2"}
    x = torch.randn(4, 3)
    assert torch.equal(fresh(x), model(x))
    for name in ("0", "2"):
        assert all(torch.equal(a, b) for a, b in zip(get_codebook(fresh.get_submodule(name)), get_codebook(model.get_submodule(name))))
    assert {n for n, p in fresh.named_parameters() if p.requires_grad} == {
        "0.bias", "0.parametrizations.weight.0.centroids", "2.bias", "2.parametrizations.weight.0.centroids"}
    with pytest.raises(UserError):
        load_shared_state_dict(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), load_weights(path))
    with pytest.raises(UserError):
        load_shared_state_dict(nn.Sequential(nn.Linear(3, 3)), load_weights(path))  # unexpected layer 2
