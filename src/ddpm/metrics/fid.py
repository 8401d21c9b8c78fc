"""FID and Inception Score: float64 statistics, feature extractors, batch / streaming / torch-fidelity paths.

Protocol (docs/ddpm-reference.md section 9 and 13.4-13.5):

* images are quantised to uint8 first (:func:`to_uint8`), exactly as saved samples would be;
* FID uses float64 mean/covariance (``np.cov`` convention, ddof=1) of the extractor features and the Frechet
  distance between Gaussians (:func:`frechet_distance`), which never returns NaN or a complex number;
* IS follows the OpenAI code: softmax of the logits, split into ``splits`` (10) parts, per part
  ``exp(mean_x KL(p(y|x) || p(y)))``, mean and std over parts. Samples are shuffled with a fixed seed first
  (torch-fidelity's ``samples_shuffle`` / ``rng_seed=2020``), so class-ordered inputs do not bias the splits;
* for paper-comparable numbers use the TF-Inception port (``get_extractor("inception")``), 50 000 samples
  and the CIFAR-10 *train* statistics. The result keys carry the sample count (:func:`metric_key`) so a 5k
  proxy can never be mistaken for ``fid_50k``.

Extractors map uint8 images ``[N, 3, H, W]`` (0..255) to ``{"features": [N, D], "logits": [N, K]}``:

* ``"inception"`` (name ``inception-v3-compat``): torch-fidelity's TF-Inception port, pool3 (2048) features
  and ``logits_unbiased``. Built only on request; ``weights_path`` (config ``inception_weights=PATH``)
  points at a local copy of the weights for air-gapped machines.
* ``"digits"`` (name ``ddpm-digits``): a small CNN trained on the 8x8 scikit-learn digits, see
  :mod:`ddpm.metrics.digits`.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator

import numpy as np
import scipy.linalg
import torch
import torch.nn as nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from ddpm.metrics.refstats import RefStats

__all__ = [
    "Extractor",
    "InceptionExtractor",
    "get_extractor",
    "to_uint8",
    "to_nchw_uint8",
    "extract_all",
    "frechet_distance",
    "stats_from_features",
    "inception_score",
    "metric_key",
    "compute_fid_is",
    "fid_is_from_stats",
    "compute_with_torch_fidelity",
    "StreamingFIDIS",
    "INCEPTION_WEIGHTS_URL",
]

INCEPTION_WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
IS_SHUFFLE_SEED = 2020  # torch-fidelity's default rng_seed; makes our IS bit-compatible with its split layout


# --------------------------------------------------------------------------------------------------- images
def to_uint8(x: torch.Tensor, mode: str = "round") -> torch.Tensor:
    """Map model-space images in [-1, 1] to uint8 0..255: clamp to [-1, 1], ``(x + 1) * 127.5``, then
    quantise.

    ``mode="round"`` (default) rounds to the nearest level: it is unbiased and inverts the data scaling
    exactly (``to_uint8(u / 127.5 - 1) == u`` for every uint8 ``u``). ``mode="floor"`` truncates like the
    official TF code and guided-diffusion (``((x+1)*127.5).clamp(0,255).to(uint8)``), which shifts every
    pixel down by 0.5 level on average; use it to reproduce those pipelines bit-for-bit. The difference
    moves CIFAR FID by far less than the sampling noise of a 50k estimate, but the metrics JSON should
    record which one was used.
    """
    if mode not in ("round", "floor"):
        raise ValueError(f"mode must be 'round' or 'floor', got {mode!r}")
    if not torch.is_tensor(x):
        x = torch.as_tensor(x)
    if x.dtype == torch.uint8:
        return x
    y = (x.float().clamp(-1.0, 1.0) + 1.0) * 127.5
    y = y.round() if mode == "round" else y.floor()
    return y.clamp(0, 255).to(torch.uint8)


def to_nchw_uint8(images) -> torch.Tensor:
    """uint8 tensor ``[N, C, H, W]`` from a uint8 tensor/array ``[N,C,H,W]``, ``[N,H,W,C]`` or ``[N,H,W]``.

    Layout rule: 4-d inputs with 1 or 3 entries on axis 1 are NCHW; otherwise, with 1 or 3 on the last
    axis, NHWC (the ADM ``arr_0`` convention). Non-uint8 input is refused: quantise with :func:`to_uint8`
    first.
    """
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if not torch.is_tensor(x):
        raise TypeError(f"expected a uint8 tensor or numpy array, got {type(images).__name__}")
    if x.dtype != torch.uint8:
        raise TypeError(
            f"images must be uint8 in 0..255, got {x.dtype}; quantise model outputs in [-1, 1] with "
            "ddpm.metrics.to_uint8 first"
        )
    if x.dim() == 3:
        return x.unsqueeze(1)
    if x.dim() != 4:
        raise ValueError(f"expected images [N,C,H,W], [N,H,W,C] or [N,H,W], got shape {tuple(x.shape)}")
    if x.shape[1] in (1, 3):
        return x
    if x.shape[-1] in (1, 3):
        return x.permute(0, 3, 1, 2)
    raise ValueError(
        f"cannot tell the channel axis of images with shape {tuple(x.shape)} (need 1 or 3 channels)"
    )


def _iter_batches(images, batch_size: int) -> Iterator[torch.Tensor]:
    if isinstance(images, np.ndarray) or torch.is_tensor(images):
        x = to_nchw_uint8(images)
        for i in range(0, x.shape[0], batch_size):
            yield x[i : i + batch_size]
        return
    for b in images:
        if isinstance(b, (tuple, list)):  # (images, labels) from a DataLoader
            b = b[0]
        if isinstance(b, dict):
            b = b["images"] if "images" in b else b["image"]
        x = to_nchw_uint8(b)
        for i in range(0, x.shape[0], batch_size):
            yield x[i : i + batch_size]


# ------------------------------------------------------------------------------------------------ extractors
class Extractor(nn.Module):
    """Interface: ``forward(uint8 [N, C, H, W]) -> {"features": [N, D] float, "logits": [N, K] float}``.

    Subclasses set ``name`` (used in file names and checked against :class:`RefStats`), ``feature_dim`` and
    ``num_classes``. Extractors are frozen and always run in float32 whatever the training precision.
    """

    name: str = "extractor"
    feature_dim: int = 0
    num_classes: int = 0

    def device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")


class InceptionExtractor(Extractor):
    """torch-fidelity's TF-Inception-v3 port (``inception-v3-compat``): pool3 2048-d features,
    ``logits_unbiased``.

    ``weights_path``: a local copy of :data:`INCEPTION_WEIGHTS_URL` (torch-fidelity's
    ``feature_extractor_weights_path``). Without it the weights are looked up in the torch hub cache and
    downloaded if missing; offline that fails with an error naming ``inception_weights=PATH``.
    """

    name = "inception-v3-compat"
    feature_dim = 2048
    num_classes = 1008

    def __init__(self, weights_path: str | os.PathLike | None = None):
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        if weights_path is not None and not os.path.isfile(weights_path):
            raise FileNotFoundError(
                f"inception_weights={weights_path}: file not found "
                f"(expected a copy of {INCEPTION_WEIGHTS_URL})"
            )
        if weights_path is not None:
            # torch-fidelity reads the file with weights_only=False; refuse anything that is not plain tensors
            try:
                torch.load(weights_path, map_location="cpu", weights_only=True)
            except Exception as e:
                raise ValueError(f"inception_weights={weights_path}: not a plain state dict ({e})") from e
        try:
            self.net = FeatureExtractorInceptionV3(
                self.name,
                ["2048", "logits_unbiased"],
                feature_extractor_weights_path=None if weights_path is None else str(weights_path),
                verbose=False,
            )
        except Exception as e:  # no network / dead URL (user-needs P11)
            if weights_path is not None:
                raise
            raise RuntimeError(
                "Could not obtain the TF-Inception weights for FID/IS "
                f"({type(e).__name__}: {e}). On an offline machine download {INCEPTION_WEIGHTS_URL} "
                "elsewhere "
                "and pass inception_weights=PATH (CLI: --inception-weights PATH)."
            ) from e
        self.net.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # always eval (lucidrains/denoising-diffusion-pytorch#234)
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = to_nchw_uint8(x)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        with torch.autocast(device_type=x.device.type, enabled=False):
            feats, logits = self.net(x.contiguous())
        return {"features": feats.float(), "logits": logits.float()}


def get_extractor(
    name: str,
    *,
    weights_path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
) -> Extractor:
    """``"inception"``/``"inception-v3-compat"`` or ``"digits"``/``"ddpm-digits"``.

    ``weights_path``: local Inception weights (config ``inception_weights``). It only applies to Inception,
    so a globally configured ``inception_weights`` is harmless with the digits extractor; the one exception
    is a ``.safetensors`` path, which the digits extractor takes as an explicit classifier file.
    ``cache_dir``: digits classifier cache (default ``$DDPM_CACHE`` or ``~/.cache/ddpm``).
    """
    key = name.lower()
    if key in ("inception", "inception-v3-compat", "inception_v3"):
        ext: Extractor = InceptionExtractor(weights_path)
    elif key in ("digits", "ddpm-digits"):
        from ddpm.metrics.digits import DigitsExtractor

        digits_weights = weights_path if str(weights_path or "").endswith(".safetensors") else None
        ext = DigitsExtractor(cache_dir=cache_dir, weights_path=digits_weights)
    else:
        raise ValueError(f"unknown feature extractor {name!r} (choose 'inception' or 'digits')")
    if device is not None:
        ext = ext.to(device)
    return ext.eval()


@torch.no_grad()
def extract_all(
    images,
    extractor: Extractor,
    *,
    device=None,
    batch_size: int = 256,
    need_logits: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Features (float64 [N, D]) and logits (float64 [N, K] or None) for all images."""
    device = torch.device(device) if device is not None else extractor.device()
    extractor = extractor.to(device).eval()
    feats, logits = [], []
    for x in _iter_batches(images, batch_size):
        out = extractor(x.to(device))
        feats.append(out["features"].detach().to("cpu", torch.float64))
        if need_logits:
            logits.append(out["logits"].detach().to("cpu", torch.float64))
    if not feats:
        raise ValueError("FID needs at least 2 images, got 0")
    f = torch.cat(feats).numpy()
    return f, (torch.cat(logits).numpy() if need_logits else None)


# ---------------------------------------------------------------------------------------------------- math
def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    ``||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr(sqrtm(sigma1 sigma2))``. As in TTUR/pytorch-fid, if
    the matrix square root is not finite (singular product, e.g. fewer samples than dimensions) it is
    recomputed with ``eps * I`` added to both covariances; the real part is taken. Round-off negatives are
    clamped to 0. The result is always a finite Python float; non-finite inputs raise ``ValueError``.
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
    fid = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)
    if not math.isfinite(fid):
        raise ValueError("frechet_distance: result is not finite")
    scale = max(1.0, float(np.trace(sigma1) + np.trace(sigma2)))
    if fid < 0.0:
        if fid < -1e-6 * scale:
            warnings.warn(f"FID came out negative ({fid:.3g}); clamped to 0", stacklevel=2)
        fid = 0.0
    return fid


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


def _check_ref(ref: RefStats, extractor_name: str, dim: int) -> None:
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
    _check_ref(ref, extractor_name, mu.shape[0])
    if n < mu.shape[0]:
        warnings.warn(
            f"FID with n={n} samples < feature dim {mu.shape[0]}: the sample covariance is singular "
            "and the figure "
            "is not comparable with published FIDs (use 50k samples for those)",
            stacklevel=3,
        )
    out = {metric_key("fid", n): frechet_distance(mu, sigma, ref.mu, ref.sigma)}
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


# ------------------------------------------------------------------------------------------- torch-fidelity
class _UInt8Dataset(torch.utils.data.Dataset):
    """uint8 images as a torch-fidelity input (a Dataset returning uint8 [3, H, W])."""

    def __init__(self, images):
        self.x = to_nchw_uint8(images)

    def __len__(self):
        return self.x.shape[0]

    def __getitem__(self, i):
        x = self.x[i]
        return x.expand(3, -1, -1).contiguous() if x.shape[0] == 1 else x


def compute_with_torch_fidelity(
    samples,
    ref_input,
    *,
    feature_extractor: str = "inception-v3-compat",
    weights_path: str | os.PathLike | None = None,
    isc: bool = True,
    fid: bool = True,
    isc_splits: int = 10,
    batch_size: int = 64,
    cuda: bool | None = None,
    cache: bool = False,
    verbose: bool = False,
    **kwargs,
) -> dict:
    """Thin wrapper over ``torch_fidelity.calculate_metrics`` for the final numbers.

    ``samples`` / ``ref_input``: a directory of images, a registered torch-fidelity input name
    (``cifar10-train``), a ``Dataset`` returning uint8 [3,H,W], or a uint8 tensor/array (wrapped as a
    Dataset). ``feature_extractor``: ``inception-v3-compat`` (``weights_path`` = local weights) or
    ``ddpm-digits`` (registered here, offline). Returns ``{"fid": ..., "is": ..., "is_std": ...,
    "n_samples": ..., "extractor": ..., "raw": {...}}``. Extra ``kwargs`` go to ``calculate_metrics`` (e.g.
    ``samples_find_deep=True``, ``datasets_download=False``).
    """
    import torch_fidelity

    if feature_extractor in ("digits", "ddpm-digits"):
        from ddpm.metrics.digits import register_with_torch_fidelity

        feature_extractor = register_with_torch_fidelity()
    elif feature_extractor == "inception":
        feature_extractor = "inception-v3-compat"

    def _input(x):
        if isinstance(x, (str, os.PathLike)):
            return str(x)
        if isinstance(x, torch.utils.data.Dataset):
            return x
        return _UInt8Dataset(x)

    args = dict(
        input1=_input(samples),
        isc=isc,
        fid=fid,
        isc_splits=isc_splits,
        feature_extractor=feature_extractor,
        batch_size=batch_size,
        cuda=torch.cuda.is_available() if cuda is None else cuda,
        cache=cache,
        verbose=verbose,
        save_cpu_ram=True,
    )
    if fid:
        args["input2"] = _input(ref_input)
    if isinstance(args["input1"], str) and os.path.isdir(args["input1"]):
        args.setdefault("samples_find_deep", True)
    if weights_path is not None and (
        feature_extractor != "ddpm-digits" or str(weights_path).endswith(".safetensors")
    ):
        args["feature_extractor_weights_path"] = str(weights_path)
    args.update(kwargs)
    try:
        raw = torch_fidelity.calculate_metrics(**args)
    except Exception as e:
        if (
            feature_extractor == "inception-v3-compat"
            and weights_path is None
            and "URL" in type(e).__name__ + str(e)
        ):
            raise RuntimeError(
                f"torch-fidelity could not download the Inception weights ({e}); pass inception_weights=PATH"
            ) from e
        raise
    inp = args["input1"]
    n = len(inp) if isinstance(inp, torch.utils.data.Dataset) else None
    out = {"extractor": feature_extractor, "n_samples": n, "raw": dict(raw)}
    if fid:
        out["fid"] = float(raw["frechet_inception_distance"])
    if isc:
        out["is"] = float(raw["inception_score_mean"])
        out["is_std"] = float(raw["inception_score_std"])
    return out


# ------------------------------------------------------------------------------------------------ streaming
class StreamingFIDIS(Metric):
    """torchmetrics FID/IS for the training callback; DDP-safe via summed float64 states.

    States (per rank, synced with ``dist_reduce_fx``): ``feat_sum`` [D] and ``feat_outer`` [D, D] (sums of
    features and of their outer products, float64, centred on ``ref.mu`` to avoid cancellation), ``count``,
    and all ``logits`` (concatenated; needed for IS splits) with the images' ``index`` when ``update`` is given
    one: IS splits the logits into contiguous chunks, so they are put back in index order first, and the IS
    does not depend on how the images were shared among ranks. ``compute()`` returns the same dict as
    :func:`compute_fid_is`. The extractor is kept outside the module tree (it is not saved in checkpoints);
    it is moved to the device of the images on first use. Call ``reset()`` after ``compute()`` (A20).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = False

    def __init__(self, extractor: Extractor, ref: RefStats, splits: int = 10, **kwargs):
        super().__init__(**kwargs)
        d = int(ref.dim)
        _check_ref(ref, extractor.name, d)
        self.__dict__["_extractor"] = extractor.eval()
        self._ref = ref
        self.splits = splits
        # plain attribute, not a buffer: Module.half()/bfloat16() must never touch it
        self.__dict__["_shift"] = torch.as_tensor(ref.mu, dtype=torch.float64)
        self.add_state("feat_sum", default=torch.zeros(d, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("feat_outer", default=torch.zeros(d, d, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("logits", default=[], dist_reduce_fx="cat")
        self.add_state("index", default=[], dist_reduce_fx="cat")

    @property
    def extractor(self) -> Extractor:
        return self.__dict__["_extractor"]

    def update(self, images, index=None) -> None:
        """Add a batch of images; ``index`` (one int per image, e.g. its sample number) orders the IS splits."""
        x = to_nchw_uint8(images)
        ext = self.extractor
        if ext.device() != x.device:
            ext.to(x.device)
        with torch.no_grad():
            out = ext(x)
        f = out["features"].to(torch.float64)
        f = f - self.__dict__["_shift"].to(f.device)
        self.feat_sum += f.sum(dim=0)
        self.feat_outer += f.T @ f
        self.count += f.shape[0]
        self.logits.append(out["logits"].to(torch.float64))
        if index is not None:
            index = torch.as_tensor(index, dtype=torch.int64, device=f.device).reshape(-1)
            if index.numel() != f.shape[0]:
                raise ValueError(f"index has {index.numel()} entries for {f.shape[0]} images")
            self.index.append(index)

    def compute(self) -> dict:
        n = int(self.count)
        if n < 2:
            raise ValueError(f"FID needs at least 2 samples, got {n}")
        m = self.feat_sum / n
        sigma = (self.feat_outer - n * torch.outer(m, m)) / (n - 1)
        sigma = 0.5 * (sigma + sigma.T)
        mu = (m.cpu() + self.__dict__["_shift"]).numpy()
        logits = dim_zero_cat(self.logits)
        if len(self.index) > 0:  # sample order, whatever the ranks' shares
            index = dim_zero_cat(self.index)
            if index.numel() != logits.shape[0]:
                raise ValueError("update() was called with an index for some batches and without for others")
            logits = logits[torch.argsort(index.to(logits.device))]
        logits = logits.cpu().numpy()
        return fid_is_from_stats(
            mu, sigma.cpu().numpy(), n, logits, self._ref, self.extractor.name, splits=self.splits
        )
