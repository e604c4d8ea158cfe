import numpy as np
import pytest
import torch

from nncompress.architectures import build_model
from nncompress.core import UserError
from nncompress.encoding import read_nnc, write_nnc
from nncompress.export import best_gap_bits, compress_model, model_from_nnc
from nncompress.pruning import LevelPruner, finalize
from nncompress.sharing import share_weights

META = {"model": "lenet5", "in_shape": [1, 28, 28], "num_classes": 10}


def _shared_lenet5(seed=0):
    torch.manual_seed(seed)
    net = build_model("lenet5")
    LevelPruner({"conv1": 0.3, "conv2": 0.8, "fc1": 0.9, "fc2": 0.7}).prune(net)
    finalize(net)
    share_weights(net, bits={"conv": 8, "linear": 5})
    return net


def test_round_trip_is_bit_exact_and_outputs_match():
    net = _shared_lenet5()
    blob = write_nnc(compress_model(net, META))
    back = model_from_nnc(read_nnc(blob))
    for name in ("conv1", "conv2", "fc1", "fc2"):
        assert torch.equal(getattr(back, name).weight, getattr(net, name).weight.detach())
        assert torch.equal(getattr(back, name).bias, getattr(net, name).bias.detach())
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(back(x), net(x))


def test_auto_gap_bits_never_loses_to_the_papers_fixed_widths():
    net = _shared_lenet5(1)
    auto = len(write_nnc(compress_model(net, META, gap_bits="auto")))
    for fixed in (4, 5, 8):
        assert auto <= len(write_nnc(compress_model(net, META, gap_bits=fixed)))


def test_best_gap_bits_picks_wide_gaps_for_sparse_and_narrow_for_dense_layers():
    rng = np.random.default_rng(0)
    dense_pos = np.flatnonzero(rng.random(20000) < 0.5)  # mean gap 2
    sparse_pos = np.flatnonzero(rng.random(20000) < 0.01)  # mean gap 100
    cb = np.array([-0.5, -0.1, 0.1, 0.5], dtype=np.float32)
    assert best_gap_bits(dense_pos, rng.integers(0, 4, dense_pos.size), cb, 2) <= 4
    assert best_gap_bits(sparse_pos, rng.integers(0, 4, sparse_pos.size), cb, 2) >= 6


def test_unshared_models_are_refused_and_masked_unshared_layers_stored_dense():
    with pytest.raises(UserError, match="share_weights"):
        compress_model(build_model("lenet5"), META)
    net = build_model("lenet5")
    LevelPruner(0.5).prune(net)
    share_weights(net, bits=4, layers=["fc2"])
    cm = compress_model(net, META)
    assert sorted(cm.shared) == ["fc2.weight"]
    assert np.array_equal(cm.dense["fc1.weight"], net.fc1.weight.detach().numpy())
    assert (cm.dense["fc1.weight"] == 0).mean() == pytest.approx(0.5, abs=1e-4)
    with pytest.raises(UserError, match="metadata needs"):
        compress_model(_shared_lenet5(), {"model": "lenet5"})
