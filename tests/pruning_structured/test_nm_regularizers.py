"""N:M masks against hand-worked patterns; structured regularizers against hand-computed values and in training."""
import pytest
import torch
from torch import nn

from nncompress.core.errors import UserError
from nncompress.data import load_dataset, make_loaders
from nncompress.pruning.mask import finalize
from nncompress.pruning.structured import build_dependency_graph
from nncompress.pruning.structured.nm import apply_nm_sparsity, is_nm_sparse, nm_mask, to_semi_structured
from nncompress.pruning.structured.regularizers import StructuredRegularizer, bn_l1, group_lasso
from nncompress.training import TrainConfig, evaluate, train

from .models import Residual


def test_2_4_mask_keeps_the_two_largest_magnitudes_of_each_run():
    w = torch.tensor([[0.1, -3.0, 2.0, 0.5, 1.0, 1.0, -1.0, 0.0]])
    assert nm_mask(w, 2, 4).tolist() == [[False, True, True, False, True, True, False, False]]  # tie: lower index wins
    assert nm_mask(w, 1, 4).tolist() == [[False, True, False, False, True, False, False, False]]
    assert nm_mask(w, 3, 8).sum() == 3


def test_conv_groups_run_along_input_channels_at_each_kernel_position():
    w = torch.zeros(1, 4, 1, 2)
    w[0, :, 0, 0] = torch.tensor([4.0, 1.0, 3.0, 2.0])  # position (0,0): keep channels 0 and 2
    w[0, :, 0, 1] = torch.tensor([1.0, 2.0, 3.0, 4.0])  # position (0,1): keep channels 2 and 3
    m = nm_mask(w, 2, 4)
    assert m[0, :, 0, 0].tolist() == [True, False, True, False]
    assert m[0, :, 0, 1].tolist() == [False, False, True, True]


def test_apply_nm_sparsity_masks_layers_and_finalize_keeps_the_pattern():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 6), nn.Linear(6, 3))
    masks = apply_nm_sparsity(model, 2, 4)
    assert set(masks) == {"0", "2"}  # the 6-input layer cannot be grouped by 4
    finalize(model)
    assert is_nm_sparse(model[0].weight, 2, 4) and is_nm_sparse(model[2].weight, 2, 4)
    assert (model[0].weight != 0).sum() == 8 * 16 // 2
    assert not is_nm_sparse(torch.ones(2, 8), 2, 4)
    with pytest.raises(UserError, match="multiple of M=4"):
        apply_nm_sparsity(model, 2, 4, layers=["3"])
    with pytest.raises(UserError, match="0 < N <= M"):
        nm_mask(torch.ones(2, 4), 5, 4)


def test_semi_structured_conversion_refuses_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(UserError, match="CUDA"):
        to_semi_structured(nn.Linear(64, 64))


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(2, 3, bias=False)
        self.bn = nn.BatchNorm1d(3)
        self.fc2 = nn.Linear(3, 1)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


def test_group_lasso_and_bn_l1_hand_worked():
    model = TwoLayer()
    with torch.no_grad():
        model.fc1.weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]]))
        model.bn.weight.copy_(torch.tensor([1.0, -2.0, 0.5]))
    graph = build_dependency_graph(model, torch.randn(4, 2))
    assert float(group_lasso(model, graph).detach()) == pytest.approx(5.0 + 0.0 + 1.0)
    assert float(bn_l1(model).detach()) == pytest.approx(3.5)


def test_group_lasso_couples_residual_branches():
    model = Residual()
    with torch.no_grad():
        for m in (model.stem, model.b):
            m.weight.fill_(1.0)  # stem filters: 27 ones; b filters: 54 ones
    graph = build_dependency_graph(model, torch.randn(1, 3, 8, 8))
    residual = [g for g in graph.groups if g.name == "stem"][0]
    expected = residual.size * (27 + 54) ** 0.5
    others = sum(float(model.get_submodule(n).weight.detach().flatten(1).norm(dim=1).sum()) for n in ("a", "head"))
    assert float(group_lasso(model, graph).detach()) == pytest.approx(expected + others, rel=1e-5)


def test_bn_l1_training_drives_scales_to_zero():
    ds = load_dataset("digits").subset(600, 200)
    train_loader, test_loader = make_loaders(ds, batch_size=64)

    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(256, 10))

    plain, slim = net(), net()
    cfg = TrainConfig(epochs=8, lr=0.05, progress=False)
    train(plain, train_loader, cfg)
    train(slim, train_loader, cfg, callbacks=[StructuredRegularizer(slim, ds.x_train[:2], bn_l1=0.15)])
    assert int((plain[1].weight.abs() < 0.05).sum()) == 0
    assert int((slim[1].weight.abs() < 0.05).sum()) >= 4  # whole channels switched off, ready to be removed
    assert evaluate(slim, test_loader) > 85.0


def test_group_lasso_training_zeroes_whole_filters():
    ds = load_dataset("digits").subset(600, 200)
    train_loader, test_loader = make_loaders(ds, batch_size=64)

    def trained(strength):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        reg = StructuredRegularizer(model, ds.x_train[:2], group_lasso=strength)
        train(model, train_loader, TrainConfig(epochs=8, lr=0.05, progress=False), callbacks=[reg])
        norms = model[1].weight.detach().norm(dim=1)
        return model, int((norms < 0.05 * norms.max()).sum())

    assert trained(0.0)[1] == 0
    model, n_off = trained(0.1)
    assert n_off >= 8  # hidden units switched off as a whole row
    assert evaluate(model, test_loader) > 85.0
