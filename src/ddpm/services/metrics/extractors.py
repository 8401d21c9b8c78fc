"""The feature extractors by name: ``get_extractor("inception" | "digits" | "digits-b")``."""

from __future__ import annotations

import os

import torch

from ddpm.services.metrics.digits_classifier import DigitsExtractor, DigitsExtractorB
from ddpm.services.metrics.features import Extractor
from ddpm.services.metrics.inception import InceptionExtractor

__all__ = ["get_extractor"]


def get_extractor(
    name: str,
    *,
    weights_path: str | os.PathLike | None = None,
    weights_key: str | None = None,
    name_key: str = "fid.feature_extractor",
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
) -> Extractor:
    """``"inception"``/``"inception-v3-compat"``, ``"digits"``/``"ddpm-digits"`` (digits extractor A) or
    ``"digits-b"``/``"ddpm-digits-b"`` (digits extractor B, :class:`DigitsExtractorB`).

    ``weights_path``: local Inception weights (config ``inception_weights``). It only applies to Inception,
    so a globally configured ``inception_weights`` is harmless with the digits extractor; the one exception
    is a ``.safetensors`` path, which the digits extractor takes as an explicit classifier file.
    ``weights_key``, ``name_key``: the options that gave ``weights_path`` and ``name``, as the calling command spells
    them (for messages).
    ``cache_dir``: digits classifier cache (default ``$DDPM_CACHE`` or ``~/.cache/ddpm``).
    """
    key = name.lower()
    if key in ("inception", "inception-v3-compat", "inception_v3"):
        ext: Extractor = InceptionExtractor(weights_path, weights_key)
    elif key in ("digits", "ddpm-digits", "digits-b", "ddpm-digits-b"):
        digits_weights = weights_path if str(weights_path or "").endswith(".safetensors") else None
        cls = DigitsExtractorB if key.endswith("-b") else DigitsExtractor
        ext = cls(cache_dir=cache_dir, weights_path=digits_weights)
    else:
        auto = " (or auto: the dataset's)" if name_key.startswith("fid.") else ""  # the fid group resolves auto
        raise ValueError(f"{name_key}={name!r} is not valid: expected inception | digits | digits-b{auto}")
    if device is not None:
        ext = ext.to(device)
    return ext.eval()
