"""Evaluation metrics, in one-way layers (each module imports only the ones above it in this list):

* :mod:`~ddpm.metrics.features`: the extractor interface, uint8 image layouts, features of an image set;
* :mod:`~ddpm.metrics.inception` (TF-Inception port) and :mod:`~ddpm.metrics.digits_classifier` (the two
  offline digits CNNs, A ``ddpm-digits`` and B ``ddpm-digits-b``, trained apart): the extractors;
  :mod:`~ddpm.metrics.extractors`: ``get_extractor(name)``;
* :mod:`~ddpm.metrics.refstats`: reference statistics (``mu``/``sigma`` npz + metadata): computed, cached,
  loaded;
* :mod:`~ddpm.metrics.fid`: the float64 FID/IS math and the FID/IS of an image set;
* :mod:`~ddpm.metrics.kid` (unbiased KID, FID extrapolated to infinite n) and :mod:`~ddpm.metrics.classmix`
  (the class mix: KL of the predicted classes, the reference reweighted to a sample's classes);
* on top: :mod:`~ddpm.metrics.streaming` (the training callback's DDP metric), :mod:`~ddpm.metrics.fidelity`
  (the torch-fidelity path), :mod:`~ddpm.metrics.digits_score` (the digits quality score) and
  :mod:`~ddpm.metrics.samples` (the FID/IS of a sample set as the applications report it);
* beside them: :mod:`~ddpm.metrics.pooled` (seed sets scored together, paired comparisons, and the one verdict
  rule every claim goes through) and
  :mod:`~ddpm.metrics.records` (what a run directory's metric files say, for the report and the model card).

``python -m ddpm.build_refstats`` pre-computes reference statistics. Nothing here downloads at
import; the Inception network is only built when asked for. The digits split and the quantisation of
model outputs (``model_to_uint8``) belong to the data layer (:mod:`ddpm.data`).
"""

from ddpm.metrics.digits_classifier import DigitsExtractor, DigitsExtractorB
from ddpm.metrics.digits_score import digits_quality, digits_reference_scores, digits_scores
from ddpm.metrics.extractors import get_extractor
from ddpm.metrics.features import Extractor, extract_all, to_nchw_uint8
from ddpm.metrics.fid import compute_fid_is, fid_is_from_stats, frechet_distance, inception_score, metric_key
from ddpm.metrics.fidelity import compute_with_torch_fidelity, register_with_torch_fidelity
from ddpm.metrics.inception import InceptionExtractor
from ddpm.metrics.kid import fid_infinity, kid
from ddpm.metrics.refstats import (
    RefStats,
    build_ref_stats,
    load_or_build,
    ref_stats_path,
    reference_stats,
    stats_from_features,
)
from ddpm.metrics.streaming import StreamingFIDIS

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
