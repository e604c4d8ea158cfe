"""1-D k-means over a layer's non-zero weights (Han, Mao, Dally, "Deep Compression", ICLR 2016, §3.1-3.2).

Minimises Σ_i Σ_{w ∈ c_i} |w − c_i|² over k = 2^bits centroids (fewer if the layer has fewer distinct
non-zero values). Zeros are pruned connections: they are not clustered and get no code.
Initialisation (§3.2): `linear` spaces k centroids evenly over [min, max] (the paper's best: it keeps the
few large weights that matter most); `density` puts them at the quantiles (i + 1/2)/k of the weights'
CDF; `random` takes k distinct weights at random (seeded).
Lloyd's iterations exploit 1-D order: with sorted weights and sorted centroids every cluster is a
contiguous run bounded by the midpoints between centroids, so one iteration is a searchsorted of k−1
midpoints plus prefix sums. It stops when no weight changes cluster, or after max_iter iterations.
"""
from __future__ import annotations

import numpy as np
import torch

from nncompress.core.errors import UserError

INITS = ("linear", "density", "random")


def check_bits(bits: int) -> int:
    """Codebook bits must be an int in 1..16."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 16:
        raise UserError(f"weight-sharing bits must be an integer in 1..16, got {bits!r}")
    return int(bits)


def init_centroids(sorted_values: np.ndarray, k: int, init: str = "linear", seed: int = 0) -> np.ndarray:
    """k initial centroids (ascending, float64) for ascending 1-D `sorted_values`."""
    if init == "linear":
        return np.linspace(sorted_values[0], sorted_values[-1], k)
    if init == "density":
        return np.quantile(sorted_values, (np.arange(k) + 0.5) / k)
    if init == "random":
        rng = np.random.default_rng(seed)
        return np.sort(sorted_values[rng.choice(len(sorted_values), size=k, replace=False)])
    raise UserError(f"unknown k-means init '{init}': use one of {', '.join(INITS)}")


def kmeans_1d(weights: torch.Tensor | np.ndarray, bits: int, init: str = "linear", max_iter: int = 100,
              seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster the non-zero entries of `weights` into at most 2^bits centroids.

    Returns (centroids float32 [k] ascending, codes int64 [nnz]) where codes[j] is the cluster of the j-th
    non-zero weight in row-major order, i.e. of `weights.flatten()[weights.flatten() != 0][j]`.
    """
    bits = check_bits(bits)
    if init not in INITS:
        raise UserError(f"unknown k-means init '{init}': use one of {', '.join(INITS)}")
    if max_iter < 0:
        raise UserError(f"max_iter must be >= 0, got {max_iter}")
    w = weights.detach().cpu().numpy() if isinstance(weights, torch.Tensor) else np.asarray(weights)
    x = w.astype(np.float64).ravel()
    x = x[x != 0]
    if not np.isfinite(x).all():
        raise UserError("cannot cluster weights that contain NaN or infinite values")
    if x.size == 0:
        return torch.zeros(0, dtype=torch.float32), torch.zeros(0, dtype=torch.int64)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    distinct = np.unique(xs)
    k = 2**bits
    if len(distinct) <= k:  # every value is its own centroid: exact, no iterations needed
        centroids = distinct
        bounds = np.searchsorted(xs, centroids[1:], side="left")
    else:
        centroids = init_centroids(xs, k, init, seed)
        prefix = np.concatenate([[0.0], np.cumsum(xs)])
        bounds = None
        for _ in range(max_iter):
            new_bounds = np.searchsorted(xs, (centroids[:-1] + centroids[1:]) / 2, side="left")
            if bounds is not None and np.array_equal(new_bounds, bounds):
                break
            bounds = new_bounds
            edges = np.concatenate([[0], bounds, [len(xs)]])
            counts = np.diff(edges)
            sums = prefix[edges[1:]] - prefix[edges[:-1]]
            # an empty cluster keeps its centroid; sort keeps the midpoint assignment valid
            centroids = np.sort(np.where(counts > 0, sums / np.maximum(counts, 1), centroids))
        bounds = np.searchsorted(xs, (centroids[:-1] + centroids[1:]) / 2, side="left")
    edges = np.concatenate([[0], bounds, [len(xs)]])
    codes = np.empty(len(xs), dtype=np.int64)
    codes[order] = np.repeat(np.arange(len(centroids)), np.diff(edges))
    return torch.from_numpy(centroids.astype(np.float32)), torch.from_numpy(codes)


def kmeans_1d_weighted(values: np.ndarray, counts: np.ndarray, bits: int, init: str = "linear", max_iter: int = 100,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`kmeans_1d` on a histogram: ascending distinct `values` with multiplicities `counts` (exact, not a sample).

    The same Lloyd iterations as `kmeans_1d` on the expanded sorted array: a cluster is a contiguous
    run of distinct values between centroid midpoints, its centroid sum_v c_v·v / sum_v c_v; the
    initialisations pick the same values (`linear`: min and max; `density`: numpy's linear quantile of
    the expanded array; `random`: the same seeded draw of positions in it). Only the summation order
    differs (per distinct value instead of per weight), i.e. rounding in the last bits of float64.
    A layer of n weights has at most ~2^23 distinct float32 values per binade, so this sorts and
    iterates over far fewer items than the weights themselves when a layer is large.

    Returns (centroids float64 ascending [<= 2^bits], label int64 per distinct value).
    """
    bits = check_bits(bits)
    if init not in INITS:
        raise UserError(f"unknown k-means init '{init}': use one of {', '.join(INITS)}")
    if max_iter < 0:
        raise UserError(f"max_iter must be >= 0, got {max_iter}")
    u = np.asarray(values, dtype=np.float64).reshape(-1)
    c = np.asarray(counts, dtype=np.int64).reshape(-1)
    if u.shape != c.shape:
        raise UserError(f"values and counts differ in length: {u.size} vs {c.size}")
    if u.size == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    if not np.isfinite(u).all():
        raise UserError("cannot cluster weights that contain NaN or infinite values")
    if np.any(np.diff(u) <= 0) or c.min() < 1:
        raise UserError("kmeans_1d_weighted needs strictly increasing distinct values with counts >= 1")
    k = 2**bits
    if u.size <= k:  # every value is its own centroid: exact, no iterations needed
        return u.copy(), np.arange(u.size, dtype=np.int64)
    cum = np.cumsum(c)
    n = int(cum[-1])

    def expanded(i):  # sorted_values[i] of the expanded array, for integer positions i
        return u[np.searchsorted(cum, np.asarray(i), side="right")]

    if init == "linear":
        centroids = np.linspace(u[0], u[-1], k)
    elif init == "density":
        h = ((np.arange(k) + 0.5) / k) * (n - 1)
        lo = np.floor(h).astype(np.int64)
        hi = np.minimum(lo + 1, n - 1)
        a, b = expanded(lo), expanded(hi)
        centroids = a + (h - lo) * (b - a)
    else:
        rng = np.random.default_rng(seed)
        centroids = np.sort(expanded(rng.choice(n, size=k, replace=False)))
    prefix_c = np.concatenate([[0], cum])
    prefix_s = np.concatenate([[0.0], np.cumsum(u * c)])
    bounds = None
    for _ in range(max_iter):
        new_bounds = np.searchsorted(u, (centroids[:-1] + centroids[1:]) / 2, side="left")
        if bounds is not None and np.array_equal(new_bounds, bounds):
            break
        bounds = new_bounds
        edges = np.concatenate([[0], bounds, [u.size]])
        sizes = prefix_c[edges[1:]] - prefix_c[edges[:-1]]
        sums = prefix_s[edges[1:]] - prefix_s[edges[:-1]]
        centroids = np.sort(np.where(sizes > 0, sums / np.maximum(sizes, 1), centroids))
    bounds = np.searchsorted(u, (centroids[:-1] + centroids[1:]) / 2, side="left")
    edges = np.concatenate([[0], bounds, [u.size]])
    return centroids, np.repeat(np.arange(centroids.size, dtype=np.int64), np.diff(edges))
