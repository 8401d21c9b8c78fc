"""Offline metrics for the 8x8 scikit-learn digits: a small CNN feature extractor and a quality score.

* :func:`digits_split_indices` is THE train/val/test split of ``sklearn.datasets.load_digits`` used across the
  project. ``ddpm.data.digits`` must import it (never re-implement it) so the classifier, the reference
  stats and the training data agree on which images are held out.
* :class:`DigitsExtractor` (name ``ddpm-digits``): a CNN trained deterministically (seed 0, a few seconds
  on CPU) on the train split; its 64-d penultimate layer gives ``features`` and its 10 logits give
  ``logits``. The weights are cached as safetensors in ``$DDPM_CACHE`` (default ``~/.cache/ddpm``) under a
  version key and retrained when missing. It stands in for Inception wherever no Inception weights are
  available (tests, quickstart).
* :func:`register_with_torch_fidelity` registers it so ``torch_fidelity.calculate_metrics(...,
  feature_extractor="ddpm-digits")`` works offline.
* :func:`digits_quality` and :func:`digits_reference_scores`: feature-space FID vs the train split, mean
  confidence and class entropy of a batch of samples, and the same scores for real held-out digits and for
  noise, to give a model's number a scale.

Digit images are uint8 ``round(v * 255 / 16)`` of the 0..16 sklearn values, one channel.
"""

from __future__ import annotations

import math
import os
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ddpm.metrics.fid import (
    Extractor,
    extract_all,
    frechet_distance,
    stats_from_features,
    to_nchw_uint8,
    to_uint8,
)
from ddpm.metrics.refstats import RefStats

__all__ = [
    "DIGITS_EXTRACTOR_NAME",
    "CLASSIFIER_VERSION",
    "N_DIGITS",
    "digits_split_indices",
    "load_digits_uint8",
    "digits_split",
    "default_cache_dir",
    "DigitsNet",
    "train_digits_classifier",
    "load_or_train_digits_classifier",
    "DigitsExtractor",
    "register_with_torch_fidelity",
    "digits_train_ref_stats",
    "digits_quality",
    "digits_reference_scores",
    "to_uint8",
]

DIGITS_EXTRACTOR_NAME = "ddpm-digits"
CLASSIFIER_VERSION = "digits-cnn-v1"  # bump when the architecture, data or training recipe changes
N_DIGITS = 1797
_SPLIT_SEED = 0


def digits_split_indices(
    n: int = N_DIGITS, seed: int = _SPLIT_SEED, val_fraction: float = 0.1, test_fraction: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train_idx, val_idx, test_idx)``: ``torch.randperm(n,
    generator=torch.Generator().manual_seed(seed))``, then the first ``floor((1 - val - test) n)`` are train,
    the next ``floor(val n)`` val and the rest test.

    For the 1797 sklearn digits with the defaults: 1437 / 179 / 181. :class:`ddpm.data.DigitsDataModule`
    uses this function, so the classifier behind the quality score never trains on the held-out digits.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_train, n_val = int((1.0 - val_fraction - test_fraction) * n + 1e-9), int(val_fraction * n)
    return perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]


@lru_cache(maxsize=1)
def _load_digits_cached() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # [1797, 8, 8]
    return images, d.target.astype(np.int64)


def load_digits_uint8() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits as uint8 ``[N, 1, 8, 8]`` (``round(v * 255 / 16)``) and int64 labels ``[N]``."""
    images, labels = _load_digits_cached()
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.copy())


def digits_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images ``[n, 1, 8, 8]`` and labels of ``split`` in ``train | val | test | all``."""
    x, y = load_digits_uint8()
    if split == "all":
        return x, y
    idx = dict(zip(("train", "val", "test"), digits_split_indices(x.shape[0])))
    if split not in idx:
        raise ValueError(f"unknown digits split {split!r} (train, val, test, all)")
    return x[idx[split]], y[idx[split]]


def default_cache_dir() -> Path:
    """``$DDPM_CACHE`` if set, else ``~/.cache/ddpm``."""
    env = os.environ.get("DDPM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ddpm"


# ------------------------------------------------------------------------------------------------ classifier
class DigitsNet(nn.Module):
    """conv(1->16) conv(16->32) maxpool -> 32x4x4 -> fc 64 (``features``, pre-activation) -> ReLU -> fc 10."""

    feature_dim = 64
    num_classes = 10

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, self.feature_dim)
        self.fc2 = nn.Linear(self.feature_dim, self.num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x``: float [N, 1, 8, 8] in [-1, 1]. Returns ``(features [N, 64], logits [N, 10])``."""
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        f = self.fc1(h.flatten(1))
        return f, self.fc2(F.relu(f))


def _preprocess(x: torch.Tensor) -> torch.Tensor:
    """uint8 [N, C, H, W] -> float [N, 1, 8, 8] in [-1, 1] (channel mean; area-style resize if not 8x8)."""
    x = to_nchw_uint8(x).float() / 255.0
    if x.shape[1] == 3:
        x = x.mean(dim=1, keepdim=True)
    elif x.shape[1] != 1:
        raise ValueError(f"digits extractor takes 1 or 3 channels, got {x.shape[1]}")
    if x.shape[-2:] != (8, 8):
        x = F.interpolate(x, size=(8, 8), mode="bilinear", antialias=True, align_corners=False)
    return x * 2.0 - 1.0


def _shift_augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random translation by -1..1 pixel (zero fill), deterministic given ``g``."""
    n = x.shape[0]
    pad = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dx = torch.randint(0, 3, (n,), generator=g)
    dy = torch.randint(0, 3, (n,), generator=g)
    out = torch.empty_like(x)
    for i in range(3):
        for j in range(3):
            m = (dy == i) & (dx == j)
            if m.any():
                out[m] = pad[m, :, i : i + 8, j : j + 8]
    return out


def train_digits_classifier(seed: int = 0, epochs: int = 12, batch_size: int = 64) -> tuple[DigitsNet, dict]:
    """Train :class:`DigitsNet` on the train split; returns ``(net, {"train"|"val"|"test": accuracy})``.

    CPU, one thread, fixed seed: deterministic and ~3-6 s. Adam + one-cycle LR, random +-1 pixel shifts.
    """
    xtr, ytr = digits_split("train")
    g = torch.Generator().manual_seed(seed)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs: threads only add contention, and 1 thread is reproducible
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = DigitsNet()
        xtr = _preprocess(xtr)
        opt = torch.optim.Adam(net.parameters(), lr=2e-3, weight_decay=1e-4)
        steps = epochs * math.ceil(xtr.shape[0] / batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
        net.train()
        for _ in range(epochs):
            perm = torch.randperm(xtr.shape[0], generator=g)
            for i in range(0, xtr.shape[0], batch_size):
                idx = perm[i : i + batch_size]
                xb = _shift_augment(xtr[idx], g)
                loss = F.cross_entropy(net(xb)[1], ytr[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        net.eval()
        acc = {s: _accuracy(net, *digits_split(s)) for s in ("train", "val", "test")}
    finally:
        torch.set_num_threads(prev_threads)
    return net, acc


@torch.no_grad()
def _accuracy(net: DigitsNet, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((net(_preprocess(x))[1].argmax(1) == y).double().mean())


def _weights_file(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir or default_cache_dir()) / f"{CLASSIFIER_VERSION}.safetensors"


_NET_MEMO: dict[str, DigitsNet] = {}


def load_or_train_digits_classifier(
    cache_dir: str | os.PathLike | None = None, weights_path: str | os.PathLike | None = None
) -> DigitsNet:
    """The cached classifier (``{cache_dir}/{CLASSIFIER_VERSION}.safetensors``), training and caching it if
    missing.

    ``weights_path`` loads an explicit file instead (never trains). The file is written atomically.
    """
    from safetensors.torch import load_file, save_file

    path = Path(weights_path) if weights_path is not None else _weights_file(cache_dir)
    key = str(path.resolve())
    if key in _NET_MEMO:
        return _NET_MEMO[key]
    net = DigitsNet()
    if path.exists():
        net.load_state_dict(load_file(str(path)))
    elif weights_path is not None:
        raise FileNotFoundError(f"digits classifier weights not found: {path}")
    else:
        with torch.enable_grad():  # callers may be inside no_grad / inference code
            net, acc = train_digits_classifier()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            meta = {"version": CLASSIFIER_VERSION, **{f"acc_{k}": f"{v:.4f}" for k, v in acc.items()}}
            save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp, metadata=meta)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    net.requires_grad_(False).eval()
    _NET_MEMO[key] = net
    return net


class DigitsExtractor(Extractor):
    """``ddpm-digits``: uint8 [N, C, H, W] -> 64-d ``features`` and 10 ``logits`` of the digits CNN.

    3-channel input is averaged to grey; sizes other than 8x8 are resized to 8x8 (antialiased bilinear).
    """

    name = DIGITS_EXTRACTOR_NAME
    feature_dim = DigitsNet.feature_dim
    num_classes = DigitsNet.num_classes

    def __init__(
        self, cache_dir: str | os.PathLike | None = None, weights_path: str | os.PathLike | None = None
    ):
        super().__init__()
        src = load_or_train_digits_classifier(cache_dir, weights_path)
        self.net = DigitsNet()
        self.net.load_state_dict(src.state_dict())
        self.net.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = _preprocess(x).to(next(self.net.parameters()).device)
        with torch.autocast(device_type=x.device.type, enabled=False):
            f, logits = self.net(x)
        return {"features": f, "logits": logits}


# --------------------------------------------------------------------------------------------- torch-fidelity
def register_with_torch_fidelity() -> str:
    """Register ``ddpm-digits`` with torch-fidelity (idempotent) and return the name.

    torch-fidelity builds it as ``cls(name, features_list, **calculate_metrics_kwargs)``; the classifier
    comes from ``feature_extractor_weights_path`` if given (a ``.safetensors`` file), else from
    ``$DDPM_CACHE``. Features: ``features`` (default for fid/kid/prc) and ``logits`` (default for isc).
    """
    import torch_fidelity
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    if DIGITS_EXTRACTOR_NAME not in FEATURE_EXTRACTORS_REGISTRY:

        class DigitsFidelityExtractor(torch_fidelity.FeatureExtractorBase):
            def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
                super().__init__(name, features_list)
                w = feature_extractor_weights_path
                self.ext = DigitsExtractor(weights_path=w if str(w or "").endswith(".safetensors") else None)

            @staticmethod
            def get_provided_features_list():
                return ("features", "logits")

            @staticmethod
            def get_default_feature_layer_for_metric(metric):
                return {"isc": "logits", "fid": "features", "kid": "features", "prc": "features"}[metric]

            @staticmethod
            def can_be_compiled():
                return False

            @staticmethod
            def get_dummy_input_for_compile():
                return torch.zeros(1, 3, 8, 8, dtype=torch.uint8)

            def forward(self, x):
                out = self.ext(x)
                return tuple(out[k] for k in self.features_list)

        DigitsFidelityExtractor.__qualname__ = "DigitsFidelityExtractor"
        torch_fidelity.register_feature_extractor(DIGITS_EXTRACTOR_NAME, DigitsFidelityExtractor)
    return DIGITS_EXTRACTOR_NAME


# ------------------------------------------------------------------------------------------------- quality
def digits_train_ref_stats(extractor: DigitsExtractor | None = None) -> RefStats:
    """Feature statistics of the 1437 train digits under the digits extractor (computed on the fly, ~0.1
    s)."""
    extractor = extractor or DigitsExtractor()
    x, _ = digits_split("train")
    feats, _ = extract_all(x, extractor, device="cpu", need_logits=False)
    mu, sigma = stats_from_features(feats)
    n = feats.shape[0]
    return RefStats(
        mu, sigma, n=n, id=f"digits-8-train-{DIGITS_EXTRACTOR_NAME}-n{n}", extractor=DIGITS_EXTRACTOR_NAME
    )


def digits_quality(samples, *, extractor: DigitsExtractor | None = None, ref: RefStats | None = None) -> dict:
    """Scores of digit samples (uint8 ``[N,1,8,8]`` / ``[N,8,8]``; use :func:`to_uint8` on sampler output):

    * ``fid``: FID in the classifier's 64-d feature space against the digits TRAIN split (lower is better);
    * ``confidence``: mean max softmax probability (real digits ~0.99);
    * ``class_entropy``: entropy in bits of the histogram of predicted classes (max ``log2(10)`` = 3.32
      when all ten digits are equally frequent; low means mode collapse);
    * ``n``: number of samples.

    Scores depend on n (FID is biased upwards for small n): compare against :func:`digits_reference_scores`
    at the same n.
    """
    extractor = extractor or DigitsExtractor()
    ref = ref or digits_train_ref_stats(extractor)
    x = to_nchw_uint8(samples)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"digits_quality needs at least 2 samples, got {n}")
    feats, logits = extract_all(x, extractor, device="cpu")
    mu, sigma = stats_from_features(feats)
    p = torch.from_numpy(logits).softmax(dim=1)
    hist = torch.bincount(p.argmax(dim=1), minlength=10).double() / n
    nz = hist[hist > 0]
    return {
        "fid": frechet_distance(mu, sigma, ref.mu, ref.sigma),
        "confidence": float(p.max(dim=1).values.mean()),
        "class_entropy": float(-(nz * nz.log2()).sum()),
        "n": int(n),
    }


def _blurred_noise(n: int, g: torch.Generator) -> torch.Tensor:
    z = torch.randn(n, 1, 8, 8, generator=g)
    k1 = torch.tensor([0.25, 0.5, 0.25])
    k = (k1[:, None] * k1[None, :]).view(1, 1, 3, 3)
    for _ in range(2):
        z = F.conv2d(F.pad(z, (1, 1, 1, 1), mode="replicate"), k)
    lo = z.amin(dim=(1, 2, 3), keepdim=True)
    hi = z.amax(dim=(1, 2, 3), keepdim=True)
    return ((z - lo) / (hi - lo + 1e-12) * 255.0).round().to(torch.uint8)


def digits_reference_scores(
    n: int | None = None, seed: int = 0, *, extractor: DigitsExtractor | None = None
) -> dict:
    """:func:`digits_quality` of reference sets, for scale next to a model's score:

    * ``real_test``: real held-out TEST digits (at most the 181 test images: ``n`` is capped, see its ``n``
      field);
    * ``uniform_noise``: ``n`` images of i.i.d. uniform 0..255 pixels;
    * ``blurred_noise``: ``n`` Gaussian-noise images blurred twice with a 3x3 binomial kernel, min-max scaled
      (blob-like, closer to digit statistics than white noise).

    ``n`` defaults to the test-set size. Deterministic given ``seed``.
    """
    extractor = extractor or DigitsExtractor()
    ref = digits_train_ref_stats(extractor)
    xt, _ = digits_split("test")
    n = xt.shape[0] if n is None else int(n)
    g = torch.Generator().manual_seed(seed)
    n_real = min(n, xt.shape[0])
    real = xt[torch.randperm(xt.shape[0], generator=g)[:n_real]]
    uniform = torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    blurred = _blurred_noise(n, g)
    return {
        "real_test": digits_quality(real, extractor=extractor, ref=ref),
        "uniform_noise": digits_quality(uniform, extractor=extractor, ref=ref),
        "blurred_noise": digits_quality(blurred, extractor=extractor, ref=ref),
    }
