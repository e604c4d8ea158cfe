import numpy as np
import pytest
import torch

from nncompress.core.errors import UserError
from nncompress.sharing import init_centroids, kmeans_1d


def test_obvious_clusters_and_zeros_ignored():
    w = torch.tensor([[-2.1, 0.0, -2.0, -1.9], [-0.6, -0.5, 0.0, -0.4], [0.9, 1.0, 1.1, 0.0], [2.9, 3.0, 3.1, 0.0]])
    centroids, codes = kmeans_1d(w, bits=2)
    assert centroids.dtype == torch.float32 and codes.dtype == torch.int64
    assert torch.allclose(centroids, torch.tensor([-2.0, -0.5, 1.0, 3.0]), atol=1e-6)
    assert codes.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]  # one code per non-zero, row-major


def test_lloyd_iterations_hand_worked():
    # linear init for bits=1: c = (1, 10), midpoint 5.5 → {1, 2, 3}, {10} → c = (2, 10), midpoint 6 → stable
    c, codes = kmeans_1d(np.array([0.0, 1.0, 2.0, 3.0, 10.0]), bits=1)
    assert c.tolist() == [2.0, 10.0] and codes.tolist() == [0, 0, 0, 1]
    # init (0.5, 9), midpoint 4.75 → {0.5, 1, 4}, {8, 9} → (5.5/3, 8.5), midpoint 5.17 → stable
    c, codes = kmeans_1d(np.array([0.5, 1.0, 4.0, 8.0, 9.0]), bits=1)
    assert c.tolist() == pytest.approx([5.5 / 3, 8.5]) and codes.tolist() == [0, 0, 0, 1, 1]


def test_max_iter_stops_early():
    # values 1, 2, 3, 4, 12 with bits=1: init (1, 12), midpoint 6.5 → {1..4}, {12} → (2.5, 12) after one update
    c, _ = kmeans_1d(np.array([1.0, 2.0, 3.0, 4.0, 12.0]), bits=1, max_iter=0)
    assert c.tolist() == [1.0, 12.0]  # no update: the linear initialisation itself
    c, _ = kmeans_1d(np.array([1.0, 2.0, 3.0, 4.0, 12.0]), bits=1, max_iter=1)
    assert c.tolist() == [2.5, 12.0]


def test_linear_init_hand_values():
    values = np.array([-1.0, -0.2, 0.1, 0.7, 1.0])
    assert init_centroids(values, 4, "linear") == pytest.approx([-1.0, -1 / 3, 1 / 3, 1.0])


def test_density_init_is_evenly_spaced_on_the_cdf():
    # quantiles at (i + 1/2)/k = 1/8, 3/8, 5/8, 7/8 of 0..8 (9 evenly spaced values) → 1, 3, 5, 7
    assert init_centroids(np.arange(9.0), 4, "density") == pytest.approx([1.0, 3.0, 5.0, 7.0])


def test_random_init_is_seeded_and_samples_the_data():
    values = np.sort(np.random.default_rng(1).normal(size=200))
    a = init_centroids(values, 8, "random", seed=3)
    assert np.array_equal(a, init_centroids(values, 8, "random", seed=3))
    assert not np.array_equal(a, init_centroids(values, 8, "random", seed=4))
    assert np.isin(a, values).all() and np.all(np.diff(a) >= 0)


def test_fewer_distinct_values_than_clusters():
    c, codes = kmeans_1d(torch.tensor([0.0, 2.0, 1.0, 1.0, 0.0]), bits=4)
    assert c.tolist() == [1.0, 2.0] and codes.tolist() == [1, 0, 0]


def test_all_zero_layer():
    c, codes = kmeans_1d(torch.zeros(3, 3), bits=2)
    assert c.numel() == 0 and codes.numel() == 0


@pytest.mark.parametrize("init", ["linear", "density", "random"])
def test_deterministic_and_at_most_2_pow_bits(init):
    w = torch.randn(50, 40, generator=torch.Generator().manual_seed(0))
    w[w.abs() < 0.5] = 0
    c1, k1 = kmeans_1d(w, bits=3, init=init, seed=7)
    c2, k2 = kmeans_1d(w, bits=3, init=init, seed=7)
    assert torch.equal(c1, c2) and torch.equal(k1, k2)
    assert c1.numel() == 8 and len(k1) == int((w != 0).sum())
    # Lloyd's fixed point: every weight sits with its nearest centroid
    nz = w[w != 0]
    assert torch.equal((nz[:, None] - c1[None, :]).abs().argmin(1), k1)


def test_bad_arguments():
    for bits in (0, 17, 2.5, True):
        with pytest.raises(UserError):
            kmeans_1d(torch.ones(3), bits=bits)
    with pytest.raises(UserError):
        kmeans_1d(torch.ones(3), bits=2, init="kmeans++")
    with pytest.raises(UserError):
        kmeans_1d(torch.tensor([1.0, float("nan")]), bits=2)


def test_matches_scikit_learn_lloyd_from_the_same_start():
    from sklearn.cluster import KMeans

    w = np.random.default_rng(0).laplace(size=2000)
    w[np.abs(w) < 0.3] = 0.0
    nz = np.sort(w[w != 0])
    start = init_centroids(nz, 8, "linear")
    ref = KMeans(8, init=start[:, None], n_init=1, max_iter=300, tol=0.0, algorithm="lloyd").fit(nz[:, None])
    ours, codes = kmeans_1d(w, bits=3)
    assert ours.numpy() == pytest.approx(np.sort(ref.cluster_centers_[:, 0]), abs=1e-5)
    order = np.argsort(w[w != 0], kind="stable")  # our codes follow the weights' order, sklearn's the sorted one
    assert ours.numpy()[codes.numpy()][order] == pytest.approx(ref.cluster_centers_[ref.labels_, 0], abs=1e-5)
