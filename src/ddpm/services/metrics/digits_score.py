"""The digits quality score: how much a model's 8x8 digit samples look like digits, with a scale.

* :func:`digits_quality`: feature-space FID and KID vs the train split, the class mix (KL of the predicted
  classes from the train split's, FID and KID against the train split reweighted to the sample's classes), mean
  confidence and class entropy of a batch of samples under one digits classifier (default extractor A,
  :class:`ddpm.services.metrics.digits_classifier.DigitsExtractor`);
* :func:`digits_scores`: :func:`digits_quality` under both extractors, ``{"digits": A, "digits_b": B}``
  (:data:`DIGITS_SCORERS`), and :func:`flat_digits_scores`, the same as ``digits/fid``, ``digits_b/fid``...
  keys (train.py's ``metrics.json``, sample.py's);
* :func:`digits_reference_scores`: the same scores for real held-out digits and for noise, to give a
  model's number a scale;
* :func:`against_real`: seed sets of samples against the real held-out digits at the same n, under both
  extractors, with the verdict rule (the README's quickstart table).

Digit images are uint8 ``round(v * 255 / 16)`` of the 0..16 sklearn values, one channel
(:func:`ddpm.core.data.digits.load_digits_uint8`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ddpm.core.data.digits import digits_split
from ddpm.services.metrics.classmix import kid_and_class_mix
from ddpm.services.metrics.digits_classifier import DIGITS_EXTRACTOR_NAME, DigitsExtractor, DigitsExtractorB
from ddpm.services.metrics.features import extract_all, to_nchw_uint8
from ddpm.services.metrics.fid import fid_of_features
from ddpm.services.metrics.kid import fid_infinity
from ddpm.services.metrics.refstats import RefStats, build_ref_stats

__all__ = ["DIGITS_SCORERS", "against_real", "digits_quality", "digits_reference_features", "digits_reference_scores",
           "digits_scores", "digits_train_ref_stats", "flat_digits_scores", "image_confidences", "scores_from_logits"]

# the key prefix of each digits extractor's scores -> its class: "digits" is extractor A (the project's original,
# ddpm-digits), "digits_b" the independently trained extractor B (ddpm-digits-b)
DIGITS_SCORERS: dict[str, type[DigitsExtractor]] = {"digits": DigitsExtractor, "digits_b": DigitsExtractorB}


def digits_train_ref_stats(extractor: DigitsExtractor | None = None) -> RefStats:
    """Feature statistics of the 1437 train digits under the digits extractor (computed on the fly, ~0.1
    s)."""
    x, _ = digits_split("train")
    return build_ref_stats(
        x, extractor or DigitsExtractor(), id=f"digits-8-train-{DIGITS_EXTRACTOR_NAME}-n{x.shape[0]}", device="cpu"
    )


def digits_reference_features(extractor: DigitsExtractor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(features, logits)`` float64 of the 1437 train digits under ``extractor`` (default A)."""
    x, _ = digits_split("train")
    feats, logits = extract_all(x, extractor or DigitsExtractor(), device="cpu")
    return np.asarray(feats, np.float64), np.asarray(logits, np.float64)


def digits_quality(samples, *, extractor: DigitsExtractor | None = None, ref: RefStats | None = None) -> dict:
    """Scores of digit samples (uint8 ``[N,1,8,8]`` / ``[N,8,8]``; quantise sampler output with
    :func:`ddpm.core.data.model_to_uint8`) under ``extractor`` (default A, ``DigitsExtractorB()`` for B):

    * ``fid``: FID in the classifier's feature space against the digits TRAIN split (lower is better);
    * ``kid``, ``kid_std``: unbiased KID against the train split and its std over subsets
      (:func:`ddpm.services.metrics.kid.kid`; about 0 for real digits at any n, where FID is not);
    * ``fid_inf``: FID extrapolated to infinite n (:func:`ddpm.services.metrics.kid.fid_infinity`; only when n exceeds
      twice the feature dimension);
    * ``class_kl``: KL (nats) of the predicted-class histogram from the train split's;
    * ``fid_classmix``, ``kid_classmix``: FID and KID against the train split reweighted to the sample's
      predicted-class mix (:mod:`ddpm.services.metrics.classmix`): within-class quality alone;
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
    ref_feats, ref_logits = digits_reference_features(extractor)
    feats = np.asarray(feats, np.float64)
    mix = kid_and_class_mix(feats, np.asarray(logits, np.float64), ref_feats, ref_logits)
    if n > 2 * feats.shape[1] + 2:  # enough images for subsets of full-rank covariance
        mix["fid_inf"] = fid_infinity(feats, ref.mu, ref.sigma)["fid_inf"]
    return {"fid": digits_fid(feats, ref), **scores_from_logits(logits), "n": int(n), **mix}


def digits_fid(feats, ref: RefStats) -> float:
    """The FID of digits features ``[N, D]`` (from :func:`extract_all` under the extractor of ``ref``) against
    ``ref``: :func:`digits_quality`'s ``fid`` alone, for scoring many subsets of images extracted once."""
    return fid_of_features(feats, ref.mu, ref.sigma)


def digits_scores(samples) -> dict[str, dict]:
    """:func:`digits_quality` under each extractor of :data:`DIGITS_SCORERS`: ``{"digits": {...}, "digits_b":
    {...}}`` (extractor A's dict is exactly ``digits_quality(samples)``)."""
    return {prefix: digits_quality(samples, extractor=cls()) for prefix, cls in DIGITS_SCORERS.items()}


def flat_digits_scores(samples) -> dict[str, float]:
    """:func:`digits_scores` as flat float keys: ``digits/fid``, ``digits/kid``..., ``digits_b/fid``..."""
    return {f"{prefix}/{k}": float(v) for prefix, q in digits_scores(samples).items() for k, v in q.items()}


def image_confidences(logits) -> np.ndarray:
    """Each image's max softmax probability under the digits classifier (``logits``: ``[N, 10]``)."""
    return torch.as_tensor(np.asarray(logits)).softmax(dim=1).max(dim=1).values.double().numpy()


def scores_from_logits(logits) -> dict:
    """``confidence`` (the mean of :func:`image_confidences`) and ``class_entropy`` (bits, of the histogram
    of predicted classes) of the digits classifier's ``logits`` ``[N, 10]`` (see :func:`digits_quality`)."""
    logits = torch.as_tensor(np.asarray(logits))
    hist = torch.bincount(logits.argmax(dim=1), minlength=10).double() / logits.shape[0]
    nz = hist[hist > 0]
    return {"confidence": float(image_confidences(logits).mean()), "class_entropy": float(-(nz * nz.log2()).sum())}


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


def against_real(sets, *, level: float = 0.95) -> dict:
    """Seed sets of digit samples (uint8, each ``[n, 1, 8, 8]`` or ``[n, 8, 8]``, one set per independent draw)
    against the real held-out TEST digits at the same n (the first n of a fixed shuffle, as
    :func:`digits_reference_scores`), under both extractors (:data:`DIGITS_SCORERS`).

    Returns ``{"n", "real": {prefix: scores}, "sets": [{prefix: scores}], "diff": {prefix: {"per_set",
    "mean", "interval"}}, "verdict"}``: ``per_set`` is FID(set k) - FID(real) under that extractor, ``interval``
    the ``level`` t-interval of their mean (the spread between draws: :func:`ddpm.services.metrics.pooled.draws_interval`),
    and ``verdict`` :func:`ddpm.services.metrics.pooled.verdict` of the claim "the samples score worse than real digits"
    (sign +1): ``reproduced`` only when both extractors' intervals lie above 0.
    """
    from ddpm.services.metrics.pooled import draws_interval, verdict

    sets = [to_nchw_uint8(s) for s in sets]
    sizes = {s.shape[0] for s in sets}
    if not sets or len(sizes) != 1:
        raise ValueError(f"against_real needs seed sets of one size, got sizes {sorted(sizes)}")
    n = sizes.pop()
    xt, _ = digits_split("test")
    if n > xt.shape[0]:
        raise ValueError(f"against_real compares at the real test set's size or below: n={n} > {xt.shape[0]}")
    real = xt[torch.randperm(xt.shape[0], generator=torch.Generator().manual_seed(0))[:n]]
    out: dict = {"n": int(n), "real": {}, "sets": [{} for _ in sets], "diff": {}}
    for prefix, cls in DIGITS_SCORERS.items():
        ext = cls()
        ref = digits_train_ref_stats(ext)
        out["real"][prefix] = digits_quality(real, extractor=ext, ref=ref)
        for k, s in enumerate(sets):
            out["sets"][k][prefix] = digits_quality(s, extractor=ext, ref=ref)
        per_set = [q[prefix]["fid"] - out["real"][prefix]["fid"] for q in out["sets"]]
        out["diff"][prefix] = {"per_set": per_set, "mean": float(np.mean(per_set)),
                               "interval": draws_interval(per_set, level)}
    out["verdict"] = verdict({k: (d["mean"], d["interval"]) for k, d in out["diff"].items()}, +1)
    return out


def held_out_digits() -> torch.Tensor:
    """The 360 digits no model trains on (the val and test splits), uint8 ``[360, 1, 8, 8]``."""
    return torch.cat([digits_split("val")[0], digits_split("test")[0]])


def real_draws(n: int, draws: int = 50, *, seed: int = 0) -> dict:
    """What real digits score at ``n``, draw to draw: the FID (against the train split) of ``draws`` random
    ``n``-subsets of :func:`held_out_digits`, under both extractors (features extracted once per extractor).

    The test split's own first ``n`` (:func:`against_real`'s "real") is one such draw. At the quickstart's n=181
    it is a lucky one (below all but a few of these subsets on both extractors: bench/results/quickstart_real_*),
    so a model's draws are held to the median here, not to that one figure. The subsets share images (the pool
    is 360), so their range understates the spread of independent draws; their median is the reference.

    Returns ``{prefix: {"fids": [...], "median", "min", "max", "confidence": {...}, "class_entropy": {...}}}``, the
    last two with the subsets' ``values``, ``median``, ``min`` and ``max`` (:func:`scores_from_logits`: a class
    entropy at n is biased low by the draw's class mix, as the samples' is); subset ``k`` is the first ``n`` of a
    permutation seeded ``(seed, k)``, so the figures depend on nothing else.
    """
    pool = held_out_digits()
    if not 2 <= n <= pool.shape[0]:
        raise ValueError(f"real_draws needs 2 <= n <= {pool.shape[0]} (the held-out digits), got n={n}")
    subsets = [torch.randperm(pool.shape[0], generator=torch.Generator().manual_seed(seed * 100_003 + k))[:n]
               for k in range(draws)]
    out = {}
    for prefix, cls in DIGITS_SCORERS.items():
        ext = cls()
        ref = digits_train_ref_stats(ext)
        feats, logits = (np.asarray(a, np.float64) for a in extract_all(pool, ext, device="cpu"))
        fids = [digits_fid(feats[idx.numpy()], ref) for idx in subsets]
        out[prefix] = {"fids": fids, "median": float(np.median(fids)), "min": min(fids), "max": max(fids)}
        per_subset = [scores_from_logits(logits[idx.numpy()]) for idx in subsets]
        for key in ("confidence", "class_entropy"):
            values = [q[key] for q in per_subset]
            out[prefix][key] = {"values": values, "median": float(np.median(values)), "min": min(values),
                                "max": max(values)}
    return out
