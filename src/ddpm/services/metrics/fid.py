"""FID and Inception Score: the float64 math, and the FID/IS of a set of uint8 images.

Protocol (as the paper's numbers were computed: TTUR's FID, OpenAI's Inception Score):

* images are quantised to uint8 first (:func:`ddpm.core.data.model_to_uint8`), exactly as saved samples would be;
* FID uses float64 mean/covariance (``np.cov`` convention, ddof=1) of the extractor features
  (:func:`ddpm.services.metrics.refstats.stats_from_features`) and the Frechet distance between Gaussians
  (:func:`frechet_distance`), which never returns NaN or a complex number;
* IS follows the OpenAI code: softmax of the logits, split into ``splits`` (10) parts, per part
  ``exp(mean_x KL(p(y|x) || p(y)))``, mean and std over parts. Samples are shuffled with a fixed seed first
  (torch-fidelity's ``samples_shuffle`` / ``rng_seed=2020``), so class-ordered inputs do not bias the splits;
* for paper-comparable numbers use the TF-Inception port (``get_extractor("inception")``), 50 000 samples
  and the CIFAR-10 *train* statistics. The result keys carry the sample count (:func:`metric_key`) so a 5k
  proxy can never be mistaken for ``fid_50k``.

On top of this module: :class:`ddpm.services.metrics.streaming.StreamingFIDIS` (the training callback's metric) and
:func:`ddpm.services.metrics.fidelity.compute_with_torch_fidelity` (the same numbers through torch-fidelity).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import scipy.linalg
import torch

from ddpm.services.metrics.features import Extractor, extract_all
from ddpm.services.metrics.refstats import RefStats, stats_from_features

__all__ = [
    "IS_SHUFFLE_SEED",
    "check_ref",
    "compute_fid_is",
    "fid_is_from_stats",
    "fid_of_features",
    "frechet_distance",
    "low_rank_factor",
    "inception_score",
    "metric_key",
]

IS_SHUFFLE_SEED = 2020  # torch-fidelity's default rng_seed; makes our IS bit-compatible with its split layout


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6, factor1=None) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    ``||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr(sqrtm(sigma1 sigma2))``. As in TTUR/pytorch-fid, if
    the matrix square root is not finite (singular product, e.g. fewer samples than dimensions) it is
    recomputed with ``eps * I`` added to both covariances; the real part is taken. Round-off negatives are
    clamped to 0. The result is always a finite Python float; non-finite inputs raise ``ValueError``.

    ``factor1``: a ``(k, d)`` matrix ``F`` with ``sigma1 = F^T F`` and ``k < d`` (fewer samples than feature
    dimensions: ``F`` = the centred features over ``sqrt(n - 1)``, see :func:`low_rank_factor`). Then the trace
    term is computed exactly and in closed form from the ``k x k`` matrix ``F sigma2 F^T``, whose eigenvalues are
    the non-zero ones of ``sigma1 sigma2`` (``tr sqrtm(sigma1 sigma2) = sum sqrt(eig(F sigma2 F^T))``), instead
    of a ``d x d`` ``sqrtm`` (thousands of times faster at Inception's d = 2048, and equal to it within its
    round-off, about 1e-6 relative).
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}"
        )
    for a in (mu1, mu2, sigma1, sigma2):
        if not np.isfinite(a).all():
            raise ValueError("frechet_distance: statistics contain NaN or inf")
    diff = mu1 - mu2
    if factor1 is not None:
        f = np.atleast_2d(np.asarray(factor1, dtype=np.float64))
        if f.shape[1] != mu1.size or f.shape[0] >= mu1.size:
            raise ValueError(f"factor1 must be (k, {mu1.size}) with k < {mu1.size}, got {f.shape}")
        m = f @ sigma2 @ f.T
        ev = np.linalg.eigvalsh((m + m.T) / 2)
        tr_covmean = float(np.sqrt(np.clip(ev, 0.0, None)).sum())
        return _finish(float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean), sigma1, sigma2)
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        warnings.warn(
            f"FID: sqrtm(sigma1 @ sigma2) is singular; adding {eps} to the covariance diagonals", stacklevel=2
        )
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    tr_covmean = float(np.trace(covmean))
    if not math.isfinite(tr_covmean):  # pathological: fall back to eigenvalues, as torch-fidelity does
        ev = np.linalg.eigvals(sigma1 @ sigma2).astype(np.complex128)
        tr_covmean = float(np.sum(np.sqrt(ev)).real)
    return _finish(float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean), sigma1, sigma2)


def _finish(fid: float, sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    if not math.isfinite(fid):
        raise ValueError("frechet_distance: result is not finite")
    scale = max(1.0, float(np.trace(sigma1) + np.trace(sigma2)))
    if fid < 0.0:
        if fid < -1e-6 * scale:
            warnings.warn(f"FID came out negative ({fid:.3g}); clamped to 0", stacklevel=2)
        fid = 0.0
    return fid


def fid_of_features(features, mu_ref, sigma_ref) -> float:
    """The FID of a set of features ``[N, D]`` against ``(mu_ref, sigma_ref)``: their ddof=1 statistics
    (:func:`ddpm.services.metrics.refstats.stats_from_features`), and below ``D`` images the exact low-rank trace
    term (:func:`low_rank_factor`) instead of a ``d x d`` ``sqrtm`` of a singular product."""
    mu, sigma = stats_from_features(features)
    return float(frechet_distance(mu, sigma, mu_ref, sigma_ref, factor1=low_rank_factor(features)))


def low_rank_factor(features=None, sigma=None, n: int | None = None):
    """``F`` with ``sigma = F^T F`` and fewer rows than feature dimensions, or ``None`` when ``n >= d``: from
    ``features`` (``(n, d)``, the centred rows over ``sqrt(n - 1)``, exact), or from a sample covariance ``sigma``
    of ``n`` images (its ``n - 1`` leading eigenvectors scaled by their roots)."""
    if features is not None:
        x = np.asarray(features, dtype=np.float64)
        n, d = x.shape
        if n >= d or n < 2:
            return None
        return (x - x.mean(axis=0)) / np.sqrt(n - 1)
    sigma = np.asarray(sigma, dtype=np.float64)
    d = sigma.shape[0]
    if n is None or n >= d or n < 2:
        return None
    w, v = np.linalg.eigh((sigma + sigma.T) / 2)
    keep = slice(d - (n - 1), d)  # rank n - 1: the n - 1 largest eigenvalues
    return (v[:, keep] * np.sqrt(np.clip(w[keep], 0.0, None))).T

def inception_score(
    logits, splits: int = 10, shuffle_seed: int | None = IS_SHUFFLE_SEED
) -> tuple[float, float]:
    """Inception Score ``(mean, std)`` over ``splits`` parts, as the OpenAI code (float64).

    Per part: ``exp(mean_x KL(p(y|x) || p(y)))`` with ``p(y)`` the part's mean prediction. Rows are
    shuffled with ``np.random.RandomState(shuffle_seed)`` first (None: keep order) and part ``i`` is rows
    ``[i*N//splits, (i+1)*N//splits)``: identical to torch-fidelity's ``isc``. ``splits`` is capped at N.
    """
    lg = torch.as_tensor(
        np.asarray(logits.detach().cpu() if torch.is_tensor(logits) else logits), dtype=torch.float64
    )
    if lg.dim() != 2 or lg.shape[0] < 1:
        raise ValueError(f"logits must be [N, K] with N >= 1, got {tuple(lg.shape)}")
    n = lg.shape[0]
    if shuffle_seed is not None:
        lg = lg[torch.from_numpy(np.random.RandomState(shuffle_seed).permutation(n))]
    splits = max(1, min(int(splits), n))
    p, log_p = lg.softmax(dim=1), lg.log_softmax(dim=1)
    scores = []
    for i in range(splits):
        sl = slice(i * n // splits, (i + 1) * n // splits)
        pc, lpc = p[sl], log_p[sl]
        log_py = pc.mean(dim=0, keepdim=True).log()
        kl = (pc * (lpc - log_py)).sum(dim=1).mean()
        scores.append(float(kl.exp()))
    return float(np.mean(scores)), float(np.std(scores))


def metric_key(name: str, n: int) -> str:
    """Key naming the sample count: ``fid_50k`` for 50000, ``fid_5k`` for 5000, ``fid_1797`` for counts
    that are not a multiple of 1000 (so 2500 -> ``fid_2500``, never a rounded ``fid_2k``)."""
    n = int(n)
    if n <= 0:
        raise ValueError(f"sample count must be positive, got {n}")
    return f"{name}_{n // 1000}k" if n % 1000 == 0 else f"{name}_{n}"


def check_ref(ref: RefStats, extractor_name: str, dim: int) -> None:
    if ref.extractor == "unknown":
        warnings.warn(
            f"reference stats {ref.id!r} do not record their extractor; assuming {extractor_name!r}",
            stacklevel=3,
        )
    elif ref.extractor != extractor_name:
        raise ValueError(
            f"reference stats {ref.id!r} were computed with {ref.extractor!r}, "
            f"samples with {extractor_name!r}"
        )
    if ref.dim != dim:
        raise ValueError(f"reference stats have dim {ref.dim}, extractor features have dim {dim}")


def fid_is_from_stats(
    mu: np.ndarray,
    sigma: np.ndarray,
    n: int,
    logits,
    ref: RefStats,
    extractor_name: str,
    splits: int = 10,
) -> dict:
    """The result dict of :func:`compute_fid_is` from sample statistics and logits (shared with the
    streaming path)."""
    if n < 2:
        raise ValueError(f"FID needs at least 2 samples, got {n}")
    check_ref(ref, extractor_name, mu.shape[0])
    if n < mu.shape[0]:
        warnings.warn(
            f"FID with n={n} samples < feature dim {mu.shape[0]}: the sample covariance is singular "
            "and the figure "
            "is not comparable with published FIDs (use 50k samples for those)",
            stacklevel=3,
        )
    factor = low_rank_factor(sigma=sigma, n=n)  # n <= d: the exact closed form, not a d x d sqrtm
    out = {metric_key("fid", n): frechet_distance(mu, sigma, ref.mu, ref.sigma, factor1=factor)}
    if logits is not None:
        is_mean, is_std = inception_score(logits, splits=splits)
        out[metric_key("is", n)] = is_mean
        out[metric_key("is", n) + "_std"] = is_std
    out.update(
        n_samples=int(n),
        ref_id=ref.id,
        ref_sha=ref.sha,
        ref_n=int(ref.n),
        extractor=extractor_name,
        is_splits=int(max(1, min(splits, n))),
    )
    return out


def compute_fid_is(
    images,
    ref: RefStats,
    extractor: Extractor,
    *,
    splits: int = 10,
    batch_size: int = 256,
    device=None,
    compute_is: bool = True,
) -> dict:
    """FID (vs ``ref``) and IS of uint8 images, in one pass.

    ``images``: uint8 tensor/array ``[N,H,W,C]`` / ``[N,C,H,W]`` / ``[N,H,W]``, or an iterable of such
    batches (or of ``(images, labels)`` tuples). Returns e.g. ``{"fid_5k", "is_5k", "is_5k_std",
    "n_samples", "ref_id", "ref_sha", "ref_n", "extractor", "is_splits"}`` (keys per :func:`metric_key`).
    Raises ``ValueError`` for n < 2 and warns when n is below the feature dimension.
    """
    feats, logits = extract_all(
        images, extractor, device=device, batch_size=batch_size, need_logits=compute_is
    )
    n = feats.shape[0]
    if n < 2:
        raise ValueError(f"FID needs at least 2 samples, got {n}")
    mu, sigma = stats_from_features(feats)
    return fid_is_from_stats(mu, sigma, n, logits, ref, extractor.name, splits=splits)
