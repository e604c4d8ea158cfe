"""The streaming .nnc pipeline (issue 16): in-place pruning and sharing, layer-by-layer save and load, histogram gap widths."""
import numpy as np
import pytest
import torch

from nncompress.architectures import build_model
from nncompress.core import UserError
from nncompress.encoding import CompressedModel, SharedTensor, read_nnc, stream_stats, write_nnc
from nncompress.export.nnc import (
    best_gap_bits,
    compress_model,
    estimate_layer_bytes,
    gap_histograms,
    load_into,
    save_compressed,
)
from nncompress.pruning import LevelPruner, finalize
from nncompress.pruning.pruners import level_prune_inplace
from nncompress.sharing import finalize_sharing, share_weights
from nncompress.sharing.kmeans import kmeans_1d, kmeans_1d_weighted
from nncompress.sharing.shared_weight import share_weights_inplace
from nncompress.sparse.nnc import sparse_from_shared

META = {"model": "lenet5", "in_shape": [1, 28, 28], "num_classes": 10}
BITS = {"conv": 8, "linear": 5}


def _inplace_lenet5(seed=0):
    torch.manual_seed(seed)
    net = build_model("lenet5")
    level_prune_inplace(net, 0.9)
    return net, share_weights_inplace(net, BITS)


def _shared_lenet5(seed=0):
    torch.manual_seed(seed)
    net = build_model("lenet5")
    LevelPruner(0.9).prune(net)
    finalize(net)
    share_weights(net, BITS)
    return net


def test_streamed_and_in_memory_encodings_are_identical_bytes(tmp_path):
    net = _shared_lenet5()
    saved = save_compressed(net, tmp_path / "a.nnc", META)
    assert (tmp_path / "a.nnc").read_bytes() == write_nnc(compress_model(net, META))
    assert saved["bytes"] == (tmp_path / "a.nnc").stat().st_size
    net2, codebooks = _inplace_lenet5()
    save_compressed(net2, tmp_path / "b.nnc", META, codebooks=codebooks)
    assert (tmp_path / "b.nnc").read_bytes() == write_nnc(compress_model(net2, META, codebooks=codebooks))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nnc", "b.nnc"]  # no temp file left behind


def test_in_place_pipeline_equals_the_parametrized_one():
    """level_prune_inplace + share_weights_inplace give the weights LevelPruner + share_weights + finalize give."""
    a = _shared_lenet5(seed=3)
    finalize_sharing(a)
    b, codebooks = _inplace_lenet5(seed=3)
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=1e-7)
        assert torch.equal(sa[k] == 0, sb[k] == 0), k  # the same weights pruned
    assert all(cb.numel() <= (256 if name.startswith("conv") else 32) for name, cb in codebooks.items())


def test_level_prune_inplace_matches_level_pruner_with_ties():
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(40, 30), torch.nn.Conv2d(3, 8, 3))
    with torch.no_grad():
        net[0].weight[:, :10] = 0.25  # 300 equal magnitudes straddling the cut
        net[0].weight[:5, :10] = -0.25
        net[1].weight[0] = 0.0
    ref = torch.nn.Sequential(torch.nn.Linear(40, 30), torch.nn.Conv2d(3, 8, 3))
    ref.load_state_dict(net.state_dict())
    LevelPruner({"0": 0.7, "1": 0.55}).prune(ref)
    finalize(ref)
    kept = level_prune_inplace(net, {"0": 0.7, "1": 0.55})
    for k in ("0.weight", "1.weight"):
        assert torch.equal(net.state_dict()[k], ref.state_dict()[k])
    assert kept == {"0": 1200 - 840, "1": 216 - round(0.55 * 216)}
    with pytest.raises(UserError, match="already carries a pruning mask"):
        LevelPruner(0.1).prune(ref)
        level_prune_inplace(ref, 0.5)


def test_weighted_kmeans_hand_example_and_agreement():
    # values 1,1,1,2,10,10 with 1 bit: linear init [1, 10], midpoint 5.5 -> {1,1,1,2} and {10,10}: [1.25, 10]
    centroids, labels = kmeans_1d_weighted(np.array([1.0, 2.0, 10.0]), np.array([3, 1, 2]), 1)
    assert centroids.tolist() == [1.25, 10.0] and labels.tolist() == [0, 0, 1]
    rng = np.random.default_rng(0)
    x = rng.normal(size=5000).astype(np.float32)
    x[rng.random(5000) < 0.4] = 0
    nz = x[x != 0]
    u, inverse, counts = np.unique(nz, return_inverse=True, return_counts=True)
    for init in ("linear", "density", "random"):
        ref_c, ref_codes = kmeans_1d(x, 4, init=init, seed=2)
        c, lab = kmeans_1d_weighted(u, counts, 4, init=init, seed=2)
        np.testing.assert_allclose(c.astype(np.float32), ref_c.numpy(), rtol=1e-6)
        np.testing.assert_array_equal(lab[inverse], ref_codes.numpy())


def test_load_into_restores_every_tensor_bit_exactly(tmp_path):
    net, codebooks = _inplace_lenet5(seed=4)
    reference = {k: v.clone() for k, v in net.state_dict().items()}
    save_compressed(net, tmp_path / "m.nnc", META, codebooks=codebooks)
    target = build_model("lenet5")
    meta = load_into(target, tmp_path / "m.nnc")
    assert meta == META
    for k, v in target.state_dict().items():
        assert torch.equal(v, reference[k]), k


def test_load_into_checks_every_header_before_touching_the_model(tmp_path):
    net, codebooks = _inplace_lenet5()
    save_compressed(net, tmp_path / "m.nnc", META, codebooks=codebooks)
    other = torch.nn.Sequential(torch.nn.Linear(3, 2))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(UserError, match="do not match the model") as info:
        load_into(other, tmp_path / "m.nnc")
    assert "\n" not in str(info.value)
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())
    wrong = build_model("lenet5", num_classes=7)
    with pytest.raises(UserError, match="has shape"):
        load_into(wrong, tmp_path / "m.nnc")


def test_in_place_compress_refuses_weights_that_are_not_codebook_values():
    net, codebooks = _inplace_lenet5()
    with torch.no_grad():
        w = net.fc1.weight
        w.view(-1)[int(torch.nonzero(w.view(-1))[0])] += 1e-3
    with pytest.raises(UserError, match="not values of its codebook"):
        compress_model(net, META, codebooks=codebooks)


def test_gap_histograms_hand_example():
    # gap_bits 3 (M = 8), positions [1, 4, 20]: raw gaps 2, 3, 16 -> symbols 1, 2 and one filler (7) + 7
    hist, fillers = gap_histograms(np.array([1, 4, 20]), 3)
    assert fillers == 1
    assert hist.tolist() == [0, 1, 1, 0, 0, 0, 0, 2]


@pytest.mark.parametrize("density, k", [(0.02, 32), (0.3, 256), (0.9, 4)])
def test_histogram_estimate_equals_the_huffman_encoded_size(density, k):
    rng = np.random.default_rng(int(density * 100))
    n = 50_000
    pos = np.flatnonzero(rng.random(n) < density)
    codes = np.minimum(rng.geometric(0.15, pos.size) - 1, k - 1)
    cb = np.linspace(-1, 1, k).astype(np.float32)
    bits = int(np.log2(k))
    estimates = estimate_layer_bytes(pos, codes, k, coder="huffman")
    auto = estimate_layer_bytes(pos, codes, k)
    for g, est in estimates.items():
        model = CompressedModel({}, {"w": SharedTensor((n,), cb, bits, pos, codes, g)}, {})
        huff = stream_stats(model, coder="huffman")
        assert est == sum(s.total_bits for s in huff) / 8  # exact: tag, table, nbits field and payload
        stored = sum(s.total_bits for s in stream_stats(model)) / 8
        assert abs(auto[g] - stored) <= 0.002 * stored + 16  # rANS priced from its table within 0.2 % + 16 B
    best = best_gap_bits(pos, codes, cb, bits)
    sizes = {g: len(write_nnc(CompressedModel({}, {"w": SharedTensor((n,), cb, bits, pos, codes, g)}, {})))
             for g in estimates}
    assert sizes[best] <= min(sizes.values()) * 1.002 + 16


def test_decode_into_csr_equals_dense(tmp_path):
    net, codebooks = _inplace_lenet5(seed=5)
    cm = read_nnc(write_nnc(compress_model(net, META, codebooks=codebooks), coder="rans"))
    for name, t in cm.shared.items():
        sparse = sparse_from_shared(t)
        dense = t.to_dense().reshape(t.shape[0], -1)
        assert torch.equal(sparse.to_dense(), torch.from_numpy(dense)), name
        assert torch.equal(torch.from_numpy(t.to_dense()), net.state_dict()[name])


def test_streamed_bytes_equal_with_masked_unshared_layers_stored_dense(tmp_path):
    torch.manual_seed(6)
    net = build_model("lenet5")
    LevelPruner(0.8).prune(net)  # every layer masked; only the convs shared: the FC weights go dense (masked values)
    share_weights(net, {"conv": 6}, layers=["conv1", "conv2"])
    save_compressed(net, tmp_path / "m.nnc", META)
    cm = compress_model(net, META)
    assert (tmp_path / "m.nnc").read_bytes() == write_nnc(cm)
    assert "fc1.weight" in cm.dense and float((cm.dense["fc1.weight"] == 0).mean()) == pytest.approx(0.8, abs=1e-3)
