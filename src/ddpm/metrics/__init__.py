"""Evaluation metrics: FID / IS with float64 statistics, reference stats files, and an offline digits
extractor.

* :mod:`ddpm.metrics.fid`: extractors (``get_extractor("inception" | "digits")``), :func:`frechet_distance`,
  :func:`inception_score`, :func:`compute_fid_is`, :class:`StreamingFIDIS` (torchmetrics, DDP),
  :func:`compute_with_torch_fidelity`, :func:`to_uint8`.
* :mod:`ddpm.metrics.refstats`: :class:`RefStats` (``mu``/``sigma`` npz + metadata), naming and building.
* :mod:`ddpm.metrics.digits`: the 8x8 digits split rule, CNN extractor ``ddpm-digits`` and quality score.

Nothing here downloads at import; the Inception network is only built when asked for.
"""

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "digits": ["DigitsExtractor", "digits_quality", "digits_reference_scores", "digits_split_indices",
               "register_with_torch_fidelity"],
    "fid": ["Extractor", "InceptionExtractor", "StreamingFIDIS", "compute_fid_is",
            "compute_with_torch_fidelity", "fid_is_from_stats", "frechet_distance", "get_extractor",
            "inception_score", "metric_key",
            "stats_from_features", "to_nchw_uint8", "to_uint8"],
    "refstats": ["RefStats", "build_from_batches", "build_ref_stats", "load_or_build", "ref_stats_path"],
}  # fmt: skip
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}


def __getattr__(name: str):
    # lazy: `python -m ddpm.metrics.refstats` must not find its own module pre-imported by the package
    if name in _WHERE:
        value = getattr(importlib.import_module(f"ddpm.metrics.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ddpm.metrics' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_WHERE))


if TYPE_CHECKING:
    from ddpm.metrics.digits import (
        DigitsExtractor,
        digits_quality,
        digits_reference_scores,
        digits_split_indices,
        register_with_torch_fidelity,
    )
    from ddpm.metrics.fid import (
        Extractor,
        InceptionExtractor,
        StreamingFIDIS,
        compute_fid_is,
        compute_with_torch_fidelity,
        fid_is_from_stats,
        frechet_distance,
        get_extractor,
        inception_score,
        metric_key,
        stats_from_features,
        to_nchw_uint8,
        to_uint8,
    )
    from ddpm.metrics.refstats import (
        RefStats,
        build_from_batches,
        build_ref_stats,
        load_or_build,
        ref_stats_path,
    )

__all__ = [
    "DigitsExtractor",
    "Extractor",
    "InceptionExtractor",
    "RefStats",
    "StreamingFIDIS",
    "build_from_batches",
    "build_ref_stats",
    "compute_fid_is",
    "compute_with_torch_fidelity",
    "digits_quality",
    "digits_reference_scores",
    "digits_split_indices",
    "fid_is_from_stats",
    "frechet_distance",
    "get_extractor",
    "inception_score",
    "load_or_build",
    "metric_key",
    "ref_stats_path",
    "register_with_torch_fidelity",
    "stats_from_features",
    "to_nchw_uint8",
    "to_uint8",
]
