"""Reference statistics (mu, sigma) of a real image set, for FID: computed, cached as ``.npz``, loaded.

File format: a plain ``.npz`` that any TTUR / pytorch-fid style tool can read:

* ``mu`` float64 [D], ``sigma`` float64 [D, D] (the TTUR / pytorch-fid keys),
* metadata: ``n`` (int64, number of images), ``id`` (str), ``extractor`` (str, e.g. ``inception-v3-compat`` or
  ``ddpm-digits``), ``sha`` (str, sha256 of the float64 arrays, see :func:`stats_sha`).

Files are read with ``np.load(..., allow_pickle=False)`` only: an npz holding pickled objects is refused.
Files are written atomically (temporary file + ``os.replace``), so concurrent ranks or an interrupted job
never leave a half-written file behind.

File names follow :func:`ref_stats_path`: ``{dataset}-{resolution}-{split}-{extractor}-n{n}.npz``, e.g.
``digits-8-train-ddpm-digits-n1437.npz`` or ``cifar10-32-train-inception-v3-compat-n50000.npz``, so the
split, the extractor and the sample count are always visible.
:func:`reference_stats` loads (or builds and caches) the statistics of a data module's split; the command
``python -m ddpm.build_refstats`` pre-computes them.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ddpm.core.io import atomic_savez
from ddpm.services.metrics.features import default_cache_dir, extract_all

__all__ = [
    "RefStats",
    "build_ref_stats",
    "default_refstats_dir",
    "load_or_build",
    "ref_stats_path",
    "reference_stats",
    "stats_from_features",
    "stats_sha",
]


def stats_from_features(feats) -> tuple[np.ndarray, np.ndarray]:
    """float64 ``(mu [D], sigma [D, D])`` with ``np.cov`` (ddof=1), as TTUR/pytorch-fid/torch-fidelity."""
    f = np.asarray(feats.detach().cpu() if torch.is_tensor(feats) else feats, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {f.shape}")
    if f.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 samples to estimate a covariance, got {f.shape[0]}")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or inf")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def stats_sha(mu: np.ndarray, sigma: np.ndarray) -> str:
    """sha256 (hex) of the float64 little-endian C-order bytes of ``mu`` then ``sigma``."""
    h = hashlib.sha256()
    for a in (mu, sigma):
        h.update(np.ascontiguousarray(np.asarray(a, dtype="<f8")).tobytes())
    return h.hexdigest()


@dataclass(frozen=True, eq=False)
class RefStats:
    """Gaussian statistics of the features of a reference image set.

    ``extractor`` is the feature extractor's name (:attr:`ddpm.services.metrics.features.Extractor.name`); FID is
    only meaningful against statistics computed with the same extractor, and
    :func:`ddpm.services.metrics.fid.compute_fid_is` checks it. ``n`` is -1 and ``extractor`` is ``"unknown"`` for
    third-party files that only hold ``mu``/``sigma``.
    """

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    id: str
    extractor: str

    def __post_init__(self):
        mu = np.asarray(self.mu, dtype=np.float64)
        sigma = np.asarray(self.sigma, dtype=np.float64)
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise ValueError(f"RefStats: expected mu [D] and sigma [D, D], got {mu.shape} and {sigma.shape}")
        object.__setattr__(self, "mu", mu)
        object.__setattr__(self, "sigma", sigma)
        object.__setattr__(self, "n", int(self.n))

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])

    @property
    def sha(self) -> str:
        return stats_sha(self.mu, self.sigma)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path`` atomically (temporary file in the same directory + ``os.replace``)."""
        path = Path(path)
        atomic_savez(
            path,
            mu=self.mu,
            sigma=self.sigma,
            n=np.int64(self.n),
            id=np.str_(self.id),
            extractor=np.str_(self.extractor),
            sha=np.str_(self.sha),
        )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, extractor: str | None = None) -> RefStats:
        """Load a stats file written by :meth:`save`, or a TTUR/pytorch-fid ``mu``/``sigma`` npz.

        Pickled content is refused. If the file carries a ``sha`` it is verified. ``extractor`` names the
        extractor for files without metadata (e.g. ``"inception-v3-compat"`` for a TTUR Inception file);
        when the file has metadata and ``extractor`` is given, they must agree.
        """
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                keys = set(z.files)
                if not {"mu", "sigma"} <= keys:
                    raise ValueError(
                        f"{path}: not a reference-stats file (needs keys 'mu' and 'sigma', has {keys})"
                    )
                mu, sigma = z["mu"], z["sigma"]
                meta = {k: z[k][()] for k in ("n", "id", "extractor", "sha") if k in keys}
        except ValueError as e:
            if "allow_pickle" in str(e) or "pickle" in str(e).lower():
                raise ValueError(f"{path}: refusing to load an npz holding pickled objects") from e
            raise
        file_extractor = str(meta["extractor"]) if "extractor" in meta else None
        if file_extractor is not None and extractor is not None and file_extractor != extractor:
            raise ValueError(
                f"{path}: stats were computed with extractor {file_extractor!r}, not {extractor!r}"
            )
        stats = cls(
            mu=mu,
            sigma=sigma,
            n=int(meta.get("n", -1)),
            id=str(meta.get("id", path.stem)),
            extractor=file_extractor or extractor or "unknown",
        )
        if "sha" in meta and str(meta["sha"]) != stats.sha:
            raise ValueError(
                f"{path}: checksum mismatch (file says {meta['sha']}, arrays hash to {stats.sha})"
            )
        return stats


def default_refstats_dir() -> Path:
    """``$DDPM_CACHE/refstats`` (default ``~/.cache/ddpm/refstats``)."""
    return default_cache_dir() / "refstats"


def ref_stats_path(
    cache_dir: str | os.PathLike,
    dataset_name: str,
    resolution: int,
    split: str,
    extractor_name: str,
    n: int,
) -> Path:
    """``{cache_dir}/{dataset}-{resolution}-{split}-{extractor}-n{n}.npz``."""
    for part in (dataset_name, split, extractor_name):
        if os.sep in part or not part:
            raise ValueError(f"invalid name component {part!r}")
    return Path(cache_dir) / f"{dataset_name}-{int(resolution)}-{split}-{extractor_name}-n{int(n)}.npz"


def build_ref_stats(
    uint8_batches: Iterable, extractor, id: str, *, device=None, batch_size: int = 256
) -> RefStats:
    """Run ``extractor`` over uint8 images (tensor/array or iterable of batches) and return their stats."""
    feats, _ = extract_all(uint8_batches, extractor, device=device, batch_size=batch_size, need_logits=False)
    mu, sigma = stats_from_features(feats)
    return RefStats(mu=mu, sigma=sigma, n=feats.shape[0], id=id, extractor=extractor.name)


def load_or_build(
    path: str | os.PathLike,
    build_fn: Callable[[], RefStats],
    *,
    extractor: str | None = None,
) -> RefStats:
    """Load ``path`` if it exists, else call ``build_fn()``, save the result atomically at ``path`` and
    return it."""
    path = Path(path)
    if path.exists():
        return RefStats.load(path, extractor=extractor)
    stats = build_fn()
    if extractor is not None and stats.extractor != extractor:
        raise ValueError(f"build_fn produced stats for extractor {stats.extractor!r}, expected {extractor!r}")
    stats.save(path)
    return stats


def reference_stats(
    datamodule,
    split: str,
    extractor,
    *,
    cache_dir=None,
    max_items: int | None = None,
    device=None,
    batch_size: int = 256,
) -> tuple[RefStats, Path]:
    """Load the cached stats of ``datamodule``'s ``split`` for ``extractor``, building (and caching) them
    first if needed. Returns ``(stats, path)``."""
    n = datamodule.num_images(split)
    if max_items is not None:
        n = min(n, int(max_items))
    if n < 2:
        raise ValueError(f"{datamodule.name} split {split!r} has {n} images; reference stats need at least 2")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_refstats_dir()
    path = ref_stats_path(cache_dir, datamodule.name, datamodule.image_shape[-1], split, extractor.name, n)

    def build() -> RefStats:
        print(f"[ddpm] building FID reference stats {path.name} ({n} images)", file=sys.stderr)
        return build_ref_stats(
            datamodule.iter_uint8(split, max_items=n, batch_size=batch_size),
            extractor,
            id=path.stem,
            device=device,
            batch_size=batch_size,
        )

    return load_or_build(path, build, extractor=extractor.name), path
