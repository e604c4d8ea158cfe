"""Issue 12 for factorization: CP fine-tuning at the CLI's default lr went to NaN and was reported as a 10 % result.

The CP scale λ sat in the last 1×1 conv, whose weights were ~10⁹× the depthwise ones; `balance_cp` spreads it
over the four factors. These tests fail without the balancing (NaN / DivergenceError at lr 0.01) and without
the guards (a chance-level model written with exit 0 at lr 1.0).
"""

import numpy as np
import pytest
import torch

from nncompress.architectures import build_model
from nncompress.core.guards import DivergenceError, chance_top1
from nncompress.core.io import save_weights
from nncompress.data import load_dataset, make_loaders
from nncompress.lowrank import factorize
from nncompress.lowrank.decompose import balance_cp
from nncompress.training import TrainConfig, evaluate, train

CLI_DEFAULT_LR, CLI_DEFAULT_FINETUNE_EPOCHS = 0.01, 3  # `nncompress factorize` defaults


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits")
    return ds, make_loaders(ds, seed=0)


@pytest.fixture(scope="module")
def trained_lenet5(digits):
    """LeNet-5 trained 3 epochs on digits (≈ 95 % top-1): a model with accuracy worth keeping."""
    ds, (train_loader, _) = digits
    torch.manual_seed(0)
    net = build_model("lenet5", ds.input_shape, ds.num_classes)
    train(net, train_loader, TrainConfig(epochs=3, lr=0.05, seed=0, progress=False))
    return {k: v.clone() for k, v in net.state_dict().items()}


def _net(ds, state):
    net = build_model("lenet5", ds.input_shape, ds.num_classes)
    net.load_state_dict(state)
    return net


def test_balance_cp_keeps_the_tensor_and_equalizes_factor_norms():
    """Balancing must not change W = Σ_r λ_r a_r∘b_r∘c_r∘d_r, and must give every factor of a component the norm s_r^(1/4)."""
    rng = np.random.default_rng(0)
    lam = np.array([1000.0, -3.0, 0.5])
    factors = [rng.normal(size=(n, 3)) for n in (6, 4, 3, 3)]
    full = np.einsum("r,or,ir,hr,wr->oihw", lam, *factors)
    balanced = balance_cp(lam, factors)
    assert np.allclose(np.einsum("or,ir,hr,wr->oihw", *balanced), full)
    norms = np.stack([np.linalg.norm(f, axis=0) for f in balanced])  # (4 factors, 3 components)
    s = np.abs(lam) * np.prod([np.linalg.norm(f, axis=0) for f in factors], axis=0)
    assert np.allclose(norms, s[None, :] ** 0.25)


def test_cp_fine_tunes_at_the_default_lr_without_nan(digits, trained_lenet5):
    """CP with the CLI's default fine-tuning (3 epochs, lr 0.01) stays finite and near the dense accuracy (unbalanced: NaN)."""
    ds, (train_loader, test_loader) = digits
    net = _net(ds, trained_lenet5)
    dense = evaluate(net, test_loader)
    factorize(net, "cp", ranks={"conv1": 6, "conv2": 16})
    train(net, train_loader, TrainConfig(epochs=CLI_DEFAULT_FINETUNE_EPOCHS, lr=CLI_DEFAULT_LR, seed=0, progress=False))
    assert all(bool(torch.isfinite(p).all()) for p in net.parameters())
    after = evaluate(net, test_loader)
    assert dense > 90.0 and after >= dense - 2.0, (dense, after)


def test_cp_factors_are_balanced_in_the_model(digits, trained_lenet5):
    """The four convolutions of a CP layer carry weights of comparable size (λ no longer in the last one)."""
    ds, _ = digits
    net = _net(ds, trained_lenet5)
    factorize(net, "cp", ranks={"conv2": 16})
    mod = net.conv2
    b, c, d, a = mod[0].weight[:, :, 0, 0], mod[1].weight[:, 0, :, 0], mod[2].weight[:, 0, 0, :], mod[3].weight[:, :, 0, 0]
    per_component = torch.stack([b.norm(dim=1), c.norm(dim=1), d.norm(dim=1), a.norm(dim=0)])  # (4 factors, R)
    assert torch.allclose(per_component, per_component[:1].expand_as(per_component), rtol=1e-4)



def test_cp_cli_at_lr_1_works_or_stops_with_a_divergence_error(digits, trained_lenet5, tmp_path, run_cli):
    """lr 1.0 fine-tuning: either a working model (exit 0, well above chance) or exit 2 naming the divergence and the
    fix, with no output file. Never a chance-level model with exit 0 (the reported bug)."""
    ds, _ = digits
    weights = tmp_path / "lenet5.safetensors"
    save_weights(trained_lenet5, weights)
    out = tmp_path / "cp.safetensors"
    code, stdout, stderr = run_cli(["factorize", "--model", "lenet5", "--data", "digits", "--method", "cp", "--ratio", "3",
                                    "--layers", "conv1", "--weights", str(weights), "--finetune-epochs", "2", "--lr", "1.0",
                                    "--json", "--out", str(out)])
    if code == 0:
        import json

        result = json.loads(stdout)
        assert result["top1_finetuned"] > chance_top1(ds.num_classes) + 40.0 and out.is_file()
    else:
        assert code == 2, stderr
        line = stderr.strip()
        assert len(line.splitlines()) == 1 and line.startswith("error:")
        assert ("diverged" in line or "chance" in line) and "lr" in line, line
        assert not out.exists()


def test_factorize_refuses_non_finite_weights(digits, trained_lenet5):
    """A NaN in a layer's weights makes the decomposition NaN: a DivergenceError naming the layer, not a silent NaN model."""
    ds, _ = digits
    state = dict(trained_lenet5)
    state["conv1.weight"] = state["conv1.weight"].clone()
    state["conv1.weight"][0, 0, 0, 0] = float("nan")
    net = _net(ds, state)
    with pytest.raises(DivergenceError, match="layer conv1.*non-finite weights in weight"):
        factorize(net, "tucker", ranks={"conv1": (4, 1)})
