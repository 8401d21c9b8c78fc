"""FID / IS of a set of samples, as the applications report them (``sample.py compute_fid=true``, the
frontier, the Table 2 evaluation): the extractor chosen for the data, the reference statistics of the data
(built once and cached, or an explicit file), and metric keys that carry the sample count and the sampler
(``fid_50k``, ``fid_5k_ddim100``), so a cheap figure is never mistaken for the paper's protocol.

Settings come from the ``fid`` config group (:class:`ddpm.core.config.FIDConfig`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddpm.services.metrics.inception import InceptionExtractor


def extractor_name(feature_extractor: str, data_name: str | None = None, ref_stats: str | None = None) -> str:
    """Resolve ``feature_extractor=auto``: the extractor of an explicit ``ref_stats`` file, else the
    dataset's (``digits`` for the 8x8 digits, ``inception`` for everything else)."""
    if feature_extractor != "auto":
        return feature_extractor
    if ref_stats:
        from ddpm.services.metrics.refstats import RefStats

        return RefStats.load(ref_stats).extractor
    return "digits" if data_name == "digits" else "inception"


def load_extractor(fid_cfg: Any, data_name: str | None, device):
    """The feature extractor of ``fid_cfg`` for this data, loaded (so missing Inception weights fail here,
    before any image is sampled)."""
    from ddpm.services.metrics.extractors import get_extractor

    name = extractor_name(fid_cfg.feature_extractor, data_name, fid_cfg.ref_stats)
    return get_extractor(name, weights_path=fid_cfg.inception_weights, device=device)


def all_extractors(fid_cfg: Any, extractor, ref, datamodule, cache_dir: str | Path | None, device) -> list[tuple]:
    """Every extractor a sample set of this data is scored with: ``[(extractor, ref, ref_features)]``, the
    configured one first; when that is digits extractor A and the reference comes from the data, digits extractor
    B follows (the same reference split). ``ref_features``: the reference images' features and logits
    (:class:`ddpm.services.metrics.pooled.SetFeatures`, for KID and the class mix), ``None`` without a datamodule (an
    explicit ``fid.ref_stats`` file)."""
    from ddpm.services.metrics.digits_classifier import DIGITS_EXTRACTOR_NAME, DigitsExtractorB
    from ddpm.services.metrics.pooled import featurise

    out = [(extractor, ref)]
    if extractor.name == DIGITS_EXTRACTOR_NAME and datamodule is not None:
        b = DigitsExtractorB().to(device)
        out.append((b, reference_for(fid_cfg, b, datamodule, cache_dir, device)))
    if datamodule is None:
        return [(e, r, None) for e, r in out]
    images = torch.cat(list(datamodule.iter_uint8(fid_cfg.ref_split)))
    return [(e, r, featurise(images, e, device=device)) for e, r in out]


def fid_key(name: str, n: int, label: str) -> str:
    """``fid_50k``, ``is_5k_ddim100``: the metric, the sample count and (unless the full chain) the sampler."""
    from ddpm.services.metrics.fid import metric_key

    return metric_key(name, n) + (f"_{label}" if label else "")


def reference_for(fid_cfg: Any, extractor, datamodule, cache_dir: str | Path | None, device):
    """The reference statistics: ``fid_cfg.ref_stats`` when given, else those of ``datamodule``'s
    ``fid_cfg.ref_split`` (built once, cached under ``cache_dir/refstats``)."""
    from ddpm.services.metrics.refstats import RefStats, reference_stats

    if fid_cfg.ref_stats:
        return RefStats.load(fid_cfg.ref_stats, extractor=extractor.name)
    cache = Path(cache_dir) / "refstats" if cache_dir else None
    ref, _ = reference_stats(datamodule, fid_cfg.ref_split, extractor, cache_dir=cache, device=device)
    return ref


def score_samples(images_nchw: np.ndarray, *, fid_cfg: Any, extractor, datamodule, label: str = "",
                  backend: str = "ddpm", cache_dir: str | Path | None = None, device="cpu") -> dict:
    """FID and IS of uint8 ``[N, C, H, W]`` samples; keys like ``fid_50k`` / ``fid_5k_ddim100``.

    ``backend``: ``ddpm`` (float64 statistics against the cached reference statistics), ``torch-fidelity``,
    or ``both`` (torch-fidelity's keys then end in ``_torch_fidelity``). With the digits extractor the digits score
    of both extractors is added (``digits/fid``, ``digits/kid``, ``digits/class_kl``... for A, ``digits_b/...``
    for B: :func:`ddpm.services.metrics.digits_score.flat_digits_scores`, against the train split).
    """
    from ddpm.services.metrics.fid import compute_fid_is
    from ddpm.services.metrics.fidelity import compute_with_torch_fidelity

    n = images_nchw.shape[0]
    splits = int(fid_cfg.is_splits)
    ref = reference_for(fid_cfg, extractor, datamodule, cache_dir, device)
    if n != 50000 and extractor.name == InceptionExtractor.name:  # the paper's scale; the digits CNN has none
        warnings.warn(f"FID/IS from {n} samples (key {fid_key('fid', n, label)}): not comparable with the "
                      "paper's 50k figure", stacklevel=2)
    out: dict[str, Any] = {"fid_extractor": extractor.name, "ref_id": ref.id, "ref_sha": ref.sha, "ref_n": ref.n,
                           "ref_split": fid_cfg.ref_split}
    if backend in ("ddpm", "both"):
        res = compute_fid_is(images_nchw, ref, extractor, splits=splits, device=device)
        for name in ("fid", "is"):
            out[fid_key(name, n, label)] = res[fid_key(name, n, "")]
        out[fid_key("is", n, label) + "_std"] = res[fid_key("is", n, "") + "_std"]
        out["is_splits"] = res["is_splits"]
    if backend in ("torch-fidelity", "both"):
        if datamodule is None:
            raise ValueError("fid_backend=torch-fidelity compares with the real images: it needs data=NAME")
        real = torch.cat(list(datamodule.iter_uint8(fid_cfg.ref_split)))
        tf = compute_with_torch_fidelity(
            images_nchw, real, feature_extractor=extractor.name, weights_path=fid_cfg.inception_weights,
            isc_splits=splits, cuda=torch.device(device).type == "cuda",
        )
        sfx = "_torch_fidelity" if backend == "both" else ""
        out[fid_key("fid", n, label) + sfx] = tf["fid"]
        out[fid_key("is", n, label) + sfx] = tf["is"]
        out[fid_key("is", n, label) + "_std" + sfx] = tf["is_std"]
    out["fid_library"] = "ddpm.services.metrics (float64)" if backend == "ddpm" else backend
    from ddpm.services.metrics.digits_classifier import DIGITS_EXTRACTOR_NAME

    if extractor.name == DIGITS_EXTRACTOR_NAME:  # every digits score: both extractors, KID and the class mix
        from ddpm.services.metrics.digits_score import flat_digits_scores

        out.update(flat_digits_scores(images_nchw))
    return out
