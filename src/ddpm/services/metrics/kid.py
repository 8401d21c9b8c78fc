"""Statistics of two feature sets whose bias does not depend on the sample count, beside FID:

* :func:`kid`: the unbiased Kernel Inception Distance (Binkowski et al. 2018, "Demystifying MMD GANs"): the
  unbiased estimate of the squared MMD with the cubic polynomial kernel ``k(x, y) = (x.y / d + 1)^3``, averaged
  over random subsets, with the standard deviation of the subset estimates (the paper's and torch-fidelity's
  ``kid_std``). Its expectation is 0 for two draws of one distribution at any n, where FID's is positive and
  shrinks like 1/n. The reference side may be weighted (:func:`ddpm.services.metrics.classmix.class_weights`: the
  reference reweighted to a sample's class mix).
* :func:`fid_infinity`: FID extrapolated to infinitely many samples (Chong & Forsyth 2020, "Effectively Unbiased
  FID and Inception Score and where to find them"): FID of random subsets of several sizes, a least-squares line
  in 1/n, its intercept.

All float64 numpy.
"""

from __future__ import annotations

import numpy as np

from ddpm.services.metrics.fid import frechet_distance
from ddpm.services.metrics.refstats import stats_from_features

__all__ = ["fid_infinity", "kid", "mmd2_unbiased", "polynomial_kernel"]


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``(x @ y.T / d + 1) ** 3``, the KID kernel (``d``: the feature dimension)."""
    return (np.asarray(x, np.float64) @ np.asarray(y, np.float64).T / x.shape[1] + 1.0) ** 3


def _mmd2(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray, w: np.ndarray | None) -> float:
    """The unbiased squared MMD from kernel blocks; ``w``: weights of the y points (None: equal)."""
    m = kxx.shape[0]
    xx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    if w is None:
        n = kyy.shape[0]
        yy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        xy = kxy.mean()
    else:
        w = w / w.sum()
        # E[k(y, y')] over distinct pairs, weighted: sum_{i != j} w_i w_j k_ij / sum_{i != j} w_i w_j
        yy = (w @ kyy @ w - (w * w * np.diag(kyy)).sum()) / (1.0 - (w * w).sum())
        xy = kxy.mean(axis=0) @ w
    return float(xx + yy - 2.0 * xy)


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, weights_y: np.ndarray | None = None) -> float:
    """The unbiased estimate of ``MMD^2(P, Q)`` from ``x ~ P`` ``[m, d]`` and ``y ~ Q`` ``[n, d]`` with
    :func:`polynomial_kernel` (``weights_y``: importance weights of the y points, e.g. to another class mix)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(f"KID needs at least 2 points on each side, got {x.shape[0]} and {y.shape[0]}")
    w = None if weights_y is None else np.asarray(weights_y, np.float64)
    return _mmd2(polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y), w)


def kid(x: np.ndarray, y: np.ndarray, *, weights_y: np.ndarray | None = None, num_subsets: int = 100,
        subset_size: int = 1000, seed: int = 0) -> dict:
    """Unbiased KID of features ``x`` (samples) against ``y`` (reference): :func:`mmd2_unbiased` on
    ``num_subsets`` random subsets of ``min(subset_size, len(x), len(y))`` points of each side (without
    replacement; the same subsets for a given ``seed``), as torch-fidelity's ``kid``. With ``weights_y`` the y
    subsets are drawn from the points of positive weight.

    Returns ``{"kid": mean, "kid_std": std of the subset estimates, "kid_subsets", "kid_subset_size"}``. With
    ``weights_y`` each y subset is weighted by its points' weights (renormalised within the subset).
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    w = None if weights_y is None else np.asarray(weights_y, np.float64)
    if w is not None:  # subsets from the points that carry weight (a subset of zero weights says nothing)
        y, w = y[w > 0], w[w > 0]
    m = int(min(subset_size, x.shape[0], y.shape[0]))
    if m < 2:
        raise ValueError(f"KID needs at least 2 points on each side, got {x.shape[0]} and {y.shape[0]}")
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    rng = np.random.default_rng(seed)
    k = int(num_subsets)
    # every subset as a row of an indicator (x) / weight (y) matrix: the subsets' kernel sums are then matrix
    # products (the same estimates as _mmd2 on each subset's kernel blocks, without copying the blocks)
    sx, sy = np.zeros((k, x.shape[0])), np.zeros((k, y.shape[0]))
    for i in range(k):
        sx[i, rng.choice(x.shape[0], m, replace=False)] = 1.0
        sy[i, rng.choice(y.shape[0], m, replace=False)] = 1.0
    xx = (((sx @ kxx) * sx).sum(1) - sx @ np.diag(kxx)) / (m * (m - 1))
    wy = sy / m if w is None else sy * w / (sy * w).sum(1, keepdims=True)
    yy = (((wy @ kyy) * wy).sum(1) - (wy * wy) @ np.diag(kyy)) / (1.0 - (wy * wy).sum(1))
    xy = ((sx @ kxy) * wy).sum(1) / m
    v = xx + yy - 2.0 * xy
    return {"kid": float(v.mean()), "kid_std": float(v.std()), "kid_subsets": k, "kid_subset_size": m}


def fid_infinity(features: np.ndarray, ref_mu: np.ndarray, ref_sigma: np.ndarray, *, num_points: int = 15,
                 repeats: int = 4, min_n: int | None = None, seed: int = 0) -> dict:
    """FID extrapolated to infinite n (Chong & Forsyth 2020): the FID of random subsets (without replacement,
    ``repeats`` per size) at ``num_points`` sizes from ``min_n`` (default ``max(n // 5, 2 d)``, so each subset
    covariance has full rank) to n, a least-squares line ``FID = fid_inf + slope / n``.

    Returns ``{"fid_inf", "fid_inf_slope", "fid_inf_sizes": [min_n, n]}``. The line is FID's leading bias term
    (``tr`` of the covariance estimate's error, proportional to 1/n), so ``fid_inf`` estimates the distance
    between the two distributions themselves, not the one at this n. An extrapolation: where the distributions
    match it scatters around 0 and may come out slightly negative (the real held-out digits: -1.3 on extractor A).
    """
    f = np.asarray(features, np.float64)
    n, d = f.shape
    lo = int(min_n) if min_n is not None else max(n // 5, 2 * d)
    if lo < 2 or lo >= n:
        raise ValueError(f"fid_infinity needs more samples than its smallest subset ({lo}) and at least 2, got {n}")
    sizes = np.unique(np.linspace(lo, n, int(num_points)).round().astype(int))
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for size in sizes:
        for _ in range(1 if size == n else int(repeats)):
            mu, sigma = stats_from_features(f[rng.choice(n, size, replace=False)])
            xs.append(1.0 / size)
            ys.append(frechet_distance(mu, sigma, ref_mu, ref_sigma))
    slope, intercept = np.polyfit(np.asarray(xs), np.asarray(ys), 1)
    return {"fid_inf": float(intercept), "fid_inf_slope": float(slope), "fid_inf_sizes": [int(lo), int(n)]}
