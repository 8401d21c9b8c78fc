"""The class mix of a sample set, apart from within-class quality.

In a classifier's feature space the classes are far-apart clusters, so FID against the reference moves with the
binomial noise of the sample's class proportions as much as with how good each image is. These separate the
two: :func:`class_kl` (how far the predicted-class histogram is from the reference's) and
:func:`class_weights` (reference weights that give it the sample's class mix), with :func:`weighted_stats` for
the FID against that reweighted reference (KID takes the weights directly, :func:`ddpm.services.metrics.kid.kid`).

All float64 numpy; classes are the argmax of the classifier's logits for both sides.
"""

from __future__ import annotations

import numpy as np

__all__ = ["class_histogram", "class_kl", "class_weights", "weighted_stats"]


def class_histogram(logits: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """The fraction of images per predicted class (argmax of ``logits`` ``[N, K]``), length ``K``."""
    lg = np.asarray(logits)
    k = int(num_classes or lg.shape[1])
    return np.bincount(lg.argmax(axis=1), minlength=k).astype(np.float64) / lg.shape[0]


def class_kl(sample_hist: np.ndarray, ref_hist: np.ndarray) -> float:
    """``KL(sample || ref)`` in nats of two class histograms (0 when equal). A class the sample has and the
    reference never predicts makes it infinite."""
    p, q = np.asarray(sample_hist, np.float64), np.asarray(ref_hist, np.float64)
    nz = p > 0
    if np.any(q[nz] <= 0):
        return float("inf")
    return float(np.sum(p[nz] * np.log(p[nz] / q[nz])))


def class_weights(ref_logits: np.ndarray, sample_hist: np.ndarray) -> np.ndarray:
    """Weights of the reference images (summing to 1) under which the reference's predicted-class mix is
    ``sample_hist``: ``w_i ∝ sample_hist[c_i] / ref_hist[c_i]`` for ``c_i`` the predicted class of image i."""
    lg = np.asarray(ref_logits)
    cls = lg.argmax(axis=1)
    ref_hist = class_histogram(lg, len(sample_hist))
    p = np.asarray(sample_hist, np.float64)
    w = p[cls] / ref_hist[cls]
    if w.sum() <= 0:
        raise ValueError("class_weights: the sample's classes never occur in the reference")
    return w / w.sum()


def weighted_stats(features: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean and covariance (``np.cov`` with ``aweights``: unbiased for reliability weights; equal
    weights give :func:`ddpm.services.metrics.refstats.stats_from_features`'s ddof=1 covariance)."""
    f = np.asarray(features, np.float64)
    w = np.asarray(weights, np.float64)
    keep = w > 0
    f, w = f[keep], w[keep]
    mu = (w[:, None] * f).sum(axis=0) / w.sum()
    return mu, np.atleast_2d(np.cov(f, rowvar=False, aweights=w))


def kid_and_class_mix(features: np.ndarray, logits: np.ndarray | None, ref_features: np.ndarray,
                      ref_logits: np.ndarray | None, *, seed: int = 0) -> dict:
    """KID of a sample set against the reference and, with logits on both sides, its class mix:

    * ``kid``, ``kid_std``: :func:`ddpm.services.metrics.kid.kid` against the reference;
    * ``class_kl``: :func:`class_kl` of the predicted-class histograms (sample from reference, nats);
    * ``fid_classmix``, ``kid_classmix``: FID and KID against the reference reweighted to the sample's class mix
      (:func:`class_weights`): within-class quality, the class proportions taken out.
    """
    from ddpm.services.metrics.fid import fid_of_features
    from ddpm.services.metrics.kid import kid

    out = {k: v for k, v in kid(features, ref_features, seed=seed).items() if k in ("kid", "kid_std")}
    if logits is None or ref_logits is None:
        return out
    hist = class_histogram(logits)
    w = class_weights(ref_logits, hist)
    rmu, rsigma = weighted_stats(ref_features, w)
    mixed = kid(features, ref_features, weights_y=w, seed=seed)
    return {**out, "class_kl": class_kl(hist, class_histogram(ref_logits, hist.size)),
            "fid_classmix": fid_of_features(features, rmu, rsigma), "kid_classmix": mixed["kid"]}
