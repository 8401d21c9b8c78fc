"""Reference statistics (mu, sigma) of a real image set, for FID.

File format: a plain ``.npz`` that any TTUR / pytorch-fid style tool can read:

* ``mu`` float64 [D], ``sigma`` float64 [D, D] (the TTUR / pytorch-fid keys),
* metadata: ``n`` (int64, number of images), ``id`` (str), ``extractor`` (str, e.g. ``inception-v3-compat`` or
  ``ddpm-digits``), ``sha`` (str, sha256 of the float64 arrays, see :func:`stats_sha`).

Files are read with ``np.load(..., allow_pickle=False)`` only: an npz holding pickled objects is refused.
Files are written atomically (temporary file + ``os.replace``), so concurrent ranks or an interrupted job
never leave a half-written file behind.

File names follow :func:`ref_stats_path`: ``{dataset}-{resolution}-{split}-{extractor}-n{n}.npz``, e.g.
``digits-8-train-ddpm-digits-n1437.npz`` or ``cifar10-32-train-inception-v3-compat-n50000.npz``, so the
split, the extractor and the sample count are always visible (user-needs P1: "which stats file?").

CLI::

    python -m ddpm.metrics.refstats --data digits --split train --extractor digits [--out DIR]
    python -m ddpm.metrics.refstats --data folder --root DIR --resolution 64 --split train \\
        --extractor inception --inception-weights /path/pt_inception-2015-12-05-6726825d.pth
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "RefStats",
    "stats_sha",
    "ref_stats_path",
    "build_ref_stats",
    "build_from_batches",
    "load_or_build",
    "default_refstats_dir",
    "main",
]


def stats_sha(mu: np.ndarray, sigma: np.ndarray) -> str:
    """sha256 (hex) of the float64 little-endian C-order bytes of ``mu`` then ``sigma``."""
    h = hashlib.sha256()
    for a in (mu, sigma):
        h.update(np.ascontiguousarray(np.asarray(a, dtype="<f8")).tobytes())
    return h.hexdigest()


@dataclass(frozen=True, eq=False)
class RefStats:
    """Gaussian statistics of the features of a reference image set.

    ``extractor`` is the feature extractor's name (:attr:`ddpm.metrics.fid.Extractor.name`); FID is only
    meaningful against statistics computed with the same extractor, and
    :func:`ddpm.metrics.fid.compute_fid_is` checks it. ``n`` is -1 and ``extractor`` is ``"unknown"`` for
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
        """Write ``path`` atomically (tmp file in the same directory + ``os.replace``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(
                    f,
                    mu=self.mu,
                    sigma=self.sigma,
                    n=np.int64(self.n),
                    id=np.str_(self.id),
                    extractor=np.str_(self.extractor),
                    sha=np.str_(self.sha),
                )
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
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
    from ddpm.metrics.digits import default_cache_dir

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
    from ddpm.metrics.fid import extract_all, stats_from_features

    feats, _ = extract_all(uint8_batches, extractor, device=device, batch_size=batch_size, need_logits=False)
    mu, sigma = stats_from_features(feats)
    return RefStats(mu=mu, sigma=sigma, n=feats.shape[0], id=id, extractor=extractor.name)


def build_from_batches(
    uint8_batches: Iterable,
    extractor,
    *,
    dataset_name: str,
    resolution: int,
    split: str,
    out_dir: str | os.PathLike | None = None,
    device=None,
    batch_size: int = 256,
) -> tuple[RefStats, Path]:
    """Build stats for a dataset split and save them under the canonical name; returns ``(stats, path)``.

    The id is the file stem, e.g. ``digits-8-train-ddpm-digits-n1437``. Entry point for config-driven builders
    (a datamodule yielding uint8 batches).
    """
    from ddpm.metrics.fid import extract_all, stats_from_features

    feats, _ = extract_all(uint8_batches, extractor, device=device, batch_size=batch_size, need_logits=False)
    mu, sigma = stats_from_features(feats)
    out_dir = Path(out_dir) if out_dir is not None else default_refstats_dir()
    path = ref_stats_path(out_dir, dataset_name, resolution, split, extractor.name, feats.shape[0])
    stats = RefStats(mu=mu, sigma=sigma, n=feats.shape[0], id=path.stem, extractor=extractor.name)
    stats.save(path)
    return stats, path


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


# ---------------------------------------------------------------------------------------------------- CLI
_IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def _folder_batches(root: Path, resolution: int, batch_size: int):
    """uint8 [B,3,R,R] batches from every image under ``root`` (recursive, sorted paths).

    Images are converted to RGB; images whose size differs from R x R are resized (shorter side to R with
    bicubic filtering, then a centre crop). Prepare the data at the target resolution beforehand for exact
    control.
    """
    import torch
    from PIL import Image

    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in _IMAGE_EXTS and p.is_file())
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(sorted(_IMAGE_EXTS))}) under {root}")
    batch = []
    for p in files:
        with Image.open(p) as im:
            im = im.convert("RGB")
            if im.size != (resolution, resolution):
                w, h = im.size
                s = resolution / min(w, h)
                im = im.resize((max(resolution, round(w * s)), max(resolution, round(h * s))), Image.BICUBIC)
                w, h = im.size
                left, top = (w - resolution) // 2, (h - resolution) // 2
                im = im.crop((left, top, left + resolution, top + resolution))
            batch.append(torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1))
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(prog="python -m ddpm.metrics.refstats", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, choices=["digits", "folder"])
    p.add_argument(
        "--split", default="train", help="digits: train|val|test|all; folder: a label for the file name"
    )
    p.add_argument("--extractor", default="inception", help="inception | digits")
    p.add_argument(
        "--inception-weights", default=None, help="local TF-Inception weights (.pth) for offline use"
    )
    p.add_argument("--root", default=None, help="--data folder: image directory (searched recursively)")
    p.add_argument("--resolution", type=int, default=None, help="--data folder: image size")
    p.add_argument(
        "--name", default=None, help="--data folder: dataset name in the file name (default: dir name)"
    )
    p.add_argument("--out", default=None, help="output directory (default $DDPM_CACHE/refstats)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    args = p.parse_args(argv)

    import torch

    from ddpm.metrics.fid import get_extractor

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    extractor = get_extractor(args.extractor, weights_path=args.inception_weights)
    if args.data == "digits":
        from ddpm.metrics.digits import digits_split

        images, _ = digits_split(args.split)
        batches, name, res = images, "digits", 8
    else:
        if not args.root or not args.resolution:
            p.error("--data folder needs --root and --resolution")
        root = Path(args.root)
        batches = _folder_batches(root, args.resolution, args.batch_size)
        name, res = args.name or root.resolve().name, args.resolution
    if extractor.name == "ddpm-digits" and res != 8:
        warnings.warn(
            "the digits extractor resizes images to 8x8; its FID is only meaningful for 8x8 digits",
            stacklevel=1,
        )
    stats, path = build_from_batches(
        batches,
        extractor,
        dataset_name=name,
        resolution=res,
        split=args.split,
        out_dir=args.out,
        device=device,
        batch_size=args.batch_size,
    )
    print(
        f"wrote {path}  (n={stats.n}, dim={stats.dim}, extractor={stats.extractor}, "
        f"sha256={stats.sha[:16]}...)"
    )
    return path


if __name__ == "__main__":
    main()
