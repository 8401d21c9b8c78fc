"""Evaluation metrics, in one-way layers (each module imports only the ones above it in this list):

* :mod:`~ddpm.services.metrics.features`: the extractor interface, uint8 image layouts, features of an image set;
* :mod:`~ddpm.services.metrics.inception` (TF-Inception port) and :mod:`~ddpm.services.metrics.digits_classifier` (the two
  offline digits CNNs, A ``ddpm-digits`` and B ``ddpm-digits-b``, trained apart): the extractors;
  :mod:`~ddpm.services.metrics.extractors`: ``get_extractor(name)``;
* :mod:`~ddpm.services.metrics.refstats`: reference statistics (``mu``/``sigma`` npz + metadata): computed, cached,
  loaded;
* :mod:`~ddpm.services.metrics.fid`: the float64 FID/IS math and the FID/IS of an image set;
* :mod:`~ddpm.services.metrics.kid` (unbiased KID, FID extrapolated to infinite n) and :mod:`~ddpm.services.metrics.classmix`
  (the class mix: KL of the predicted classes, the reference reweighted to a sample's classes);
* on top: :mod:`~ddpm.services.metrics.streaming` (the training callback's DDP metric), :mod:`~ddpm.services.metrics.fidelity`
  (the torch-fidelity path), :mod:`~ddpm.services.metrics.digits_score` (the digits quality score) and
  :mod:`~ddpm.services.metrics.samples` (the FID/IS of a sample set as the applications report it);
* beside them: :mod:`~ddpm.services.metrics.pooled` (seed sets scored together, paired comparisons, and the one verdict
  rule every claim goes through) and
  :mod:`~ddpm.services.metrics.records` (what a run directory's metric files say, for the report and the model card).

``python -m ddpm.build_refstats`` pre-computes reference statistics. Nothing here downloads at
import; the Inception network is only built when asked for. The digits split and the quantisation of
model outputs (``model_to_uint8``) belong to the data layer (:mod:`ddpm.core.data`).
"""

from ddpm.services.metrics.digits_classifier import DigitsExtractor, DigitsExtractorB
from ddpm.services.metrics.digits_score import digits_quality, digits_reference_scores, digits_scores
from ddpm.services.metrics.extractors import get_extractor
from ddpm.services.metrics.features import Extractor, extract_all, to_nchw_uint8
from ddpm.services.metrics.fid import compute_fid_is, fid_is_from_stats, frechet_distance, inception_score, metric_key
from ddpm.services.metrics.fidelity import compute_with_torch_fidelity, register_with_torch_fidelity
from ddpm.services.metrics.inception import InceptionExtractor
from ddpm.services.metrics.kid import fid_infinity, kid
from ddpm.services.metrics.refstats import (
    RefStats,
    build_ref_stats,
    load_or_build,
    ref_stats_path,
    reference_stats,
    stats_from_features,
)
from ddpm.services.metrics.streaming import StreamingFIDIS

__all__ = [
    "DigitsExtractor",
    "DigitsExtractorB",
    "Extractor",
    "InceptionExtractor",
    "RefStats",
    "StreamingFIDIS",
    "build_ref_stats",
    "compute_fid_is",
    "compute_with_torch_fidelity",
    "digits_quality",
    "digits_reference_scores",
    "digits_scores",
    "extract_all",
    "fid_infinity",
    "fid_is_from_stats",
    "frechet_distance",
    "get_extractor",
    "inception_score",
    "kid",
    "load_or_build",
    "metric_key",
    "ref_stats_path",
    "reference_stats",
    "register_with_torch_fidelity",
    "stats_from_features",
    "to_nchw_uint8",
]
