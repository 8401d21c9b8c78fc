"""Feature extraction, the bottom of the metrics stack: the extractor interface, the uint8 image layouts it
accepts, and the features of a whole image set.

Extractors map uint8 images ``[N, 3, H, W]`` (0..255) to ``{"features": [N, D], "logits": [N, K]}``. The two
implementations are :class:`ddpm.services.metrics.inception.InceptionExtractor` (``inception-v3-compat``, for
paper-comparable numbers) and :class:`ddpm.services.metrics.digits_classifier.DigitsExtractor` (``ddpm-digits``,
offline); :func:`ddpm.services.metrics.extractors.get_extractor` picks one by name.

Model outputs in [-1, 1] are quantised with :func:`ddpm.core.data.model_to_uint8` first, exactly as saved samples
would be.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

__all__ = ["Extractor", "default_cache_dir", "extract_all", "iter_uint8_batches", "to_nchw_uint8"]


def default_cache_dir() -> Path:
    """Where the metrics cache their files (digits classifier, reference statistics): ``$DDPM_CACHE`` if
    set, else ``~/.cache/ddpm``."""
    env = os.environ.get("DDPM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ddpm"


def to_nchw_uint8(images) -> torch.Tensor:
    """uint8 tensor ``[N, C, H, W]`` from a uint8 tensor/array ``[N,C,H,W]``, ``[N,H,W,C]`` or ``[N,H,W]``.

    Layout rule: 4-d inputs with 1 or 3 entries on axis 1 are NCHW; otherwise, with 1 or 3 on the last
    axis, NHWC (the ADM ``arr_0`` convention). Non-uint8 input is refused: quantise with
    :func:`ddpm.core.data.model_to_uint8` first.
    """
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if not torch.is_tensor(x):
        raise TypeError(f"expected a uint8 tensor or numpy array, got {type(images).__name__}")
    if x.dtype != torch.uint8:
        raise TypeError(
            f"images must be uint8 in 0..255, got {x.dtype}; quantise model outputs in [-1, 1] with "
            "ddpm.core.data.model_to_uint8 first"
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


def iter_uint8_batches(images, batch_size: int) -> Iterator[torch.Tensor]:
    """uint8 NCHW batches of at most ``batch_size`` from a tensor/array or an iterable of batches (or of
    ``(images, labels)`` tuples, or of dicts with ``"images"``/``"image"``)."""
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


class Extractor(nn.Module):
    """Interface: ``forward(uint8 [N, C, H, W]) -> {"features": [N, D] float, "logits": [N, K] float}``.

    Subclasses set ``name`` (used in file names and checked against :class:`~ddpm.services.metrics.refstats.RefStats`),
    ``feature_dim`` and ``num_classes``. Extractors are frozen and always run in float32 whatever the
    training precision.
    """

    name: str = "extractor"
    feature_dim: int = 0
    num_classes: int = 0

    def device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")


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
    for x in iter_uint8_batches(images, batch_size):
        out = extractor(x.to(device))
        feats.append(out["features"].detach().to("cpu", torch.float64))
        if need_logits:
            logits.append(out["logits"].detach().to("cpu", torch.float64))
    if not feats:
        raise ValueError("FID needs at least 2 images, got 0")
    f = torch.cat(feats).numpy()
    return f, (torch.cat(logits).numpy() if need_logits else None)
