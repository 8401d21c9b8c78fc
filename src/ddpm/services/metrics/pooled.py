"""FID/IS pooled over several seed sets, the spread across the sets, and paired comparisons between two
sample sources that share seeds (two samplers on one model, two Table 2 rows): the one implementation behind
the frontier (:mod:`ddpm.commands.frontier`) and the Table 2 report (:mod:`ddpm.commands.report`).

Why: an FID on a few hundred images moves by a third between seed sets (on the quickstart model the 1000-step
chain's FID on three sets of 500 ranged from 12 to 21 in one study), so a single set decides nothing. Each set
is featurised once; the pooled figure is the FID/IS of all sets' features together, the per-set figures show
the spread.

Paired comparisons: image ``i`` of set ``k`` comes from the same seed in both sources, so their difference per
set is paired, and a bootstrap that resamples the same image indices in both sources (:func:`paired_bootstrap`)
gives an interval for the pooled difference within this draw. :func:`verdict_interval` widens it to cover the
spread between independent draws (the seed sets: a t-interval of the per-set differences), and :func:`verdict`
is the one rule every claim goes through (the frontier, the Table 2 report, the quickstart table): a claim holds
only when every extractor's interval excludes 0 on its side; "extractor-dependent" when the extractors point
opposite ways; "not established" otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ddpm.services.metrics.features import Extractor, extract_all
from ddpm.services.metrics.fid import check_ref, fid_of_features, inception_score
from ddpm.services.metrics.refstats import RefStats

__all__ = ["SetFeatures", "featurise", "pooled_scores", "paired_bootstrap", "draws_interval", "verdict_interval",
           "verdict", "VERDICTS"]

REPRODUCED, OPPOSITE = "reproduced", "the opposite"
UNRESOLVED, EXTRACTOR_DEPENDENT = "not established", "extractor-dependent"
VERDICTS = (REPRODUCED, OPPOSITE, EXTRACTOR_DEPENDENT, UNRESOLVED)


@dataclass
class SetFeatures:
    """The extractor features (``[n, d]``, float64) and logits (``[n, classes]`` or ``None``) of one seed set."""

    features: np.ndarray
    logits: np.ndarray | None

    def __len__(self) -> int:
        return int(self.features.shape[0])


def featurise(images_nchw, extractor: Extractor, *, device="cpu", batch_size: int = 256) -> SetFeatures:
    """Features and logits of one set of uint8 images (any layout :func:`extract_all` takes)."""
    feats, logits = extract_all(images_nchw, extractor, device=device, batch_size=batch_size, need_logits=True)
    return SetFeatures(np.asarray(feats, dtype=np.float64),
                       None if logits is None else np.asarray(logits, dtype=np.float64))


def _spread(values: list[float]) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max())}


def pooled_scores(sets: Sequence[SetFeatures], ref: RefStats, extractor_name: str, *, splits: int = 10,
                  ref_features: SetFeatures | None = None) -> dict:
    """FID (against ``ref``) and IS pooled over all ``sets``, and per set.

    Returns ``{"n", "num_sets", "set_sizes", "fid", "is", "is_std", "fid_sets", "is_sets", "fid_spread",
    "is_spread"}``; ``fid`` is the FID of the union of the sets (not the mean of the per-set FIDs, which is
    biased upwards by the small-sample covariance), ``fid_spread`` the mean / std (ddof=1) / min / max of the
    per-set FIDs. IS keys are ``None`` when the extractor has no logits.

    ``ref_features``: the reference images' own features (and logits) add, pooled, ``fid_inf`` (FID extrapolated
    to infinite n, :func:`ddpm.services.metrics.kid.fid_infinity`), ``kid``/``kid_std`` and, with logits, the class mix
    ``class_kl``/``fid_classmix``/``kid_classmix`` (:func:`ddpm.services.metrics.classmix.kid_and_class_mix`), and per
    set ``kid_sets`` and ``class_kl_sets``.
    """
    if not sets:
        raise ValueError("pooled_scores needs at least one seed set")
    if any(len(s) < 2 for s in sets):
        raise ValueError(f"every seed set needs at least 2 images, got sizes {[len(s) for s in sets]}")
    check_ref(ref, extractor_name, sets[0].features.shape[1])
    allf = np.concatenate([s.features for s in sets])
    out: dict = {"n": int(allf.shape[0]), "num_sets": len(sets), "set_sizes": [len(s) for s in sets],
                 "fid": fid_of_features(allf, ref.mu, ref.sigma),
                 "fid_sets": [fid_of_features(s.features, ref.mu, ref.sigma) for s in sets]}
    out["fid_spread"] = _spread(out["fid_sets"])
    if all(s.logits is not None for s in sets):
        logits = np.concatenate([s.logits for s in sets])
        out["is"], out["is_std"] = inception_score(logits, splits=splits)
        out["is_sets"] = [inception_score(s.logits, splits=splits)[0] for s in sets]
        out["is_spread"] = _spread(out["is_sets"])
    else:
        out.update({"is": None, "is_std": None, "is_sets": None, "is_spread": None})
    if ref_features is not None:
        out.update(_unbiased(sets, ref, ref_features))
    return out


def _unbiased(sets: Sequence[SetFeatures], ref: RefStats, ref_features: SetFeatures) -> dict:
    from ddpm.services.metrics.classmix import kid_and_class_mix
    from ddpm.services.metrics.kid import fid_infinity

    whole = _concat(sets)
    out = kid_and_class_mix(whole.features, whole.logits, ref_features.features, ref_features.logits)
    per = [kid_and_class_mix(s.features, s.logits, ref_features.features, ref_features.logits) for s in sets]
    out["kid_sets"] = [p["kid"] for p in per]
    if "class_kl" in out:
        out["class_kl_sets"] = [p["class_kl"] for p in per]
    n, d = whole.features.shape
    out["fid_inf"] = fid_infinity(whole.features, ref.mu, ref.sigma)["fid_inf"] if n > 2 * d + 2 else None
    return out


def _concat(sets: Sequence[SetFeatures]) -> SetFeatures:
    logits = [s.logits for s in sets]
    return SetFeatures(np.concatenate([s.features for s in sets]),
                       None if any(x is None for x in logits) else np.concatenate(logits))


def _take(s: SetFeatures, idx: np.ndarray) -> SetFeatures:
    return SetFeatures(s.features[idx], None if s.logits is None else s.logits[idx])


def paired_bootstrap(a: Sequence[SetFeatures], b: Sequence[SetFeatures], ref: RefStats | None = None, *,
                     num_boot: int = 200, level: float = 0.95, seed: int = 0,
                     statistic: Callable[[SetFeatures], float] | None = None, scale_b: float = 1.0) -> dict:
    """The paired difference ``FID(a) - FID(b)`` of two sources sampled on the same seeds (``scale_b``: of
    ``FID(a) - scale_b * FID(b)``, e.g. ``1.1`` for "a within 10% of b").

    ``a[k]`` and ``b[k]`` must hold the same number of images, image ``i`` of both from the same seed.
    Returns ``{"per_set": [FID(a_k) - FID(b_k)], "pooled": FID(a) - FID(b) on the pooled sets, "ci": (lo, hi)}``:
    the percentile interval of the pooled difference over ``num_boot`` resamples that draw the same image
    indices (with replacement, within each set) for both sources, so the shared seed noise cancels.

    ``statistic``: another figure of a set than its FID against ``ref`` (e.g. the IS, or the mean classifier
    confidence, from ``SetFeatures.logits``); the differences, pooling and resampling are the same.
    """
    if statistic is None:
        if ref is None:
            raise ValueError("paired_bootstrap needs ref (the FID's reference statistics) or a statistic")
        statistic = lambda s: fid_of_features(s.features, ref.mu, ref.sigma)  # noqa: E731
    if len(a) != len(b) or any(len(x) != len(y) for x, y in zip(a, b)):
        raise ValueError("a paired comparison needs the same seed sets in both sources: "
                         f"sizes {[len(x) for x in a]} against {[len(y) for y in b]}")
    per_set = [float(statistic(x) - scale_b * statistic(y)) for x, y in zip(a, b)]
    fa, fb = _concat(a), _concat(b)
    pooled = statistic(fa) - scale_b * statistic(fb)
    rng = np.random.default_rng(seed)
    offsets = np.cumsum([0] + [len(x) for x in a])
    diffs = []
    for _ in range(int(num_boot)):
        idx = np.concatenate([lo + rng.integers(0, hi - lo, hi - lo) for lo, hi in zip(offsets, offsets[1:])])
        diffs.append(statistic(_take(fa, idx)) - scale_b * statistic(_take(fb, idx)))
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(diffs, [tail, 100 - tail]) if diffs else (float("nan"), float("nan"))
    return {"per_set": per_set, "pooled": float(pooled), "ci": (float(lo), float(hi)), "level": level,
            "num_boot": int(num_boot)}


def draws_interval(per_set: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The ``level`` t-interval of the mean of per-set differences: each seed set is an independent draw, so this
    is the spread between draws. Fewer than 2 sets: ``(-inf, inf)`` (one draw says nothing about the next)."""
    from scipy.stats import t

    d = np.asarray(per_set, dtype=np.float64)
    if d.size < 2:
        return (float("-inf"), float("inf"))
    half = float(t.ppf(0.5 + level / 2, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size))
    return (float(d.mean() - half), float(d.mean() + half))


def verdict_interval(per_set: Sequence[float], ci: Sequence[float] | None, level: float = 0.95
                     ) -> tuple[float, float]:
    """The interval a verdict rests on: the hull of the within-draw bootstrap interval ``ci`` (resampling images,
    :func:`paired_bootstrap`) and :func:`draws_interval` (between seed sets), so it covers both."""
    lo, hi = draws_interval(per_set, level)
    if ci is not None and np.all(np.isfinite(ci)):
        lo, hi = min(lo, float(ci[0])), max(hi, float(ci[1]))
    return (lo, hi)


def verdict(readings: Mapping[str, tuple[float, Sequence[float]]], expected_sign: int) -> str:
    """The one verdict rule: ``readings`` maps each extractor to ``(estimate, (lo, hi))`` of a difference whose
    claimed sign is ``expected_sign`` (``-1``: "a lower than b"); the interval should be :func:`verdict_interval`.

    * ``reproduced`` / ``the opposite``: every extractor's interval excludes 0, all on the claimed side / all on
      the other side;
    * ``extractor-dependent``: one extractor's interval excludes 0 and another's estimate lies on the other side
      of 0 (they disagree on the direction);
    * ``not established``: otherwise (an interval straddles 0, a tie, no readings).
    """
    if expected_sign not in (-1, 1):
        raise ValueError(f"expected_sign must be -1 or 1, got {expected_sign}")
    sides, signs = [], []
    for est, (lo, hi) in readings.values():
        sides.append(1 if lo > 0 else -1 if hi < 0 else 0)
        signs.append(int(np.sign(est)) if np.isfinite(est) else 0)
    if sides and all(x == sides[0] != 0 for x in sides):
        return REPRODUCED if sides[0] == expected_sign else OPPOSITE
    if any(side != 0 and -side in signs for side in sides):
        return EXTRACTOR_DEPENDENT
    return UNRESOLVED
