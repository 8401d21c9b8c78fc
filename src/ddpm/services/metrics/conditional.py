"""Scores of a class-conditional digits model's samples (beyond the paper): did each image get its class?

* ``class_accuracy``: the share of images that the project's digits classifier (extractor A,
  :class:`ddpm.services.metrics.digits_classifier.DigitsExtractor`) assigns to the class they were sampled for;
* ``fid_class_<c>``: the FID, in that classifier's feature space, of the images sampled for class ``c`` against
  the train digits of class ``c`` (only for classes with at least 2 images);
* ``fid_balanced``: the FID of all the images against the train split reweighted to equal classes (the
  reference a balanced set of labels aims at);
* ``confidence``: the mean probability the classifier gives the requested class.
"""

from __future__ import annotations

import numpy as np
import torch

from ddpm.core.data.digits import digits_split
from ddpm.services.metrics.classmix import weighted_stats
from ddpm.services.metrics.digits_classifier import DigitsExtractor
from ddpm.services.metrics.features import extract_all, to_nchw_uint8
from ddpm.services.metrics.fid import fid_of_features


def class_scores(samples, labels, extractor: DigitsExtractor | None = None) -> dict[str, float]:
    """The scores above for uint8 digit ``samples`` (``[N, 1, 8, 8]``, ``[N, 8, 8]`` or ``[N, 8, 8, 3]``) sampled
    for ``labels`` (``[N]`` ints in 0..9)."""
    extractor = extractor or DigitsExtractor()
    x = to_nchw_uint8(samples)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"{y.shape[0]} labels for {x.shape[0]} images")
    feats, logits = extract_all(x, extractor, device="cpu")
    feats, logits = np.asarray(feats, np.float64), torch.as_tensor(np.asarray(logits, np.float64))
    probs = logits.softmax(dim=1).numpy()
    out = {
        "class_accuracy": float((probs.argmax(axis=1) == y).mean()),
        "class_confidence": float(probs[np.arange(y.shape[0]), y].mean()),
    }
    ref_x, ref_y = digits_split("train")
    ref_feats, _ = extract_all(ref_x, extractor, device="cpu")
    ref_feats, ref_y = np.asarray(ref_feats, np.float64), ref_y.numpy()
    for c in sorted(set(y.tolist())):
        mine = feats[y == c]
        if mine.shape[0] >= 2:
            ref_mu, ref_sigma = weighted_stats(ref_feats[ref_y == c], np.ones(int((ref_y == c).sum())))
            out[f"fid_class_{c}"] = fid_of_features(mine, ref_mu, ref_sigma)
    if feats.shape[0] >= 2:  # a covariance needs two images (labels=3 num_samples=1 is a fair request)
        counts = np.bincount(ref_y, minlength=10).astype(np.float64)
        ref_mu, ref_sigma = weighted_stats(ref_feats, 1.0 / counts[ref_y])
        out["fid_balanced"] = fid_of_features(feats, ref_mu, ref_sigma)
    return out
