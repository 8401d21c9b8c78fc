"""The pooled-FID code shared by the frontier and the Table 2 report: pooled against per-set figures, the
paired bootstrap, and the verdict rule on synthetic per-set numbers."""

from __future__ import annotations

import numpy as np
import pytest

from ddpm.services.metrics.fid import frechet_distance
from ddpm.services.metrics.pooled import (
    OPPOSITE,
    REPRODUCED,
    UNRESOLVED,
    SetFeatures,
    paired_bootstrap,
    pooled_scores,
    verdict,
    verdict_interval,
)
from ddpm.services.metrics.refstats import RefStats, stats_from_features


def _ref(d=4):
    return RefStats(mu=np.zeros(d), sigma=np.eye(d), n=10_000, id="test", extractor="test")


def _sets(rng, shift, k=3, n=400, d=4, classes=5):
    return [SetFeatures(rng.normal(shift, 1.0, (n, d)), rng.normal(0, 2.0, (n, classes))) for _ in range(k)]


def test_pooled_fid_is_the_fid_of_the_union_and_per_set_figures_bracket_it():
    rng = np.random.default_rng(0)
    sets = _sets(rng, 0.5)
    out = pooled_scores(sets, _ref(), "test", splits=2)
    union = np.concatenate([s.features for s in sets])
    mu, sigma = stats_from_features(union)
    assert out["fid"] == pytest.approx(frechet_distance(mu, sigma, np.zeros(4), np.eye(4)), rel=1e-12)
    assert out["n"] == 1200 and out["num_sets"] == 3 and out["set_sizes"] == [400] * 3
    for s, f in zip(sets, out["fid_sets"]):
        m, c = stats_from_features(s.features)
        assert f == pytest.approx(frechet_distance(m, c, np.zeros(4), np.eye(4)), rel=1e-12)
    spread = out["fid_spread"]
    assert spread["min"] <= spread["mean"] <= spread["max"] and spread["std"] > 0
    # the closed form: a mean shift of 0.5 in 4 dims is 4 * 0.25 = 1.0 (+ small-sample covariance terms)
    assert out["fid"] == pytest.approx(1.0, abs=0.15)
    assert out["is"] is not None and len(out["is_sets"]) == 3


def test_pooled_scores_refuses_a_wrong_extractor_and_tiny_sets():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="computed with"):
        pooled_scores(_sets(rng, 0.0), _ref(), "other")
    with pytest.raises(ValueError, match="at least 2"):
        pooled_scores([SetFeatures(np.zeros((1, 4)), None)], _ref(), "test")


def test_paired_bootstrap_separates_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(1)
    base = _sets(rng, 0.0, n=300)
    # b: the same "seeds" (shared noise) with a shift; c: the same seeds with tiny independent noise
    far = [SetFeatures(s.features + 0.6, None) for s in base]
    near = [SetFeatures(s.features + rng.normal(0, 0.01, s.features.shape), None) for s in base]
    d = paired_bootstrap(base, far, _ref(), num_boot=100)
    assert all(x < 0 for x in d["per_set"]) and d["ci"][1] < 0 and d["pooled"] < 0
    reading = {"one extractor": (d["pooled"], verdict_interval(d["per_set"], d["ci"]))}
    assert verdict(reading, -1) == REPRODUCED
    assert verdict(reading, +1) == OPPOSITE
    n = paired_bootstrap(base, near, _ref(), num_boot=100)
    assert n["ci"][0] < 0.05 and n["ci"][1] > -0.05 and abs(n["pooled"]) < 0.05
    assert verdict({"one extractor": (n["pooled"], verdict_interval(n["per_set"], n["ci"]))}, -1) == UNRESOLVED
    with pytest.raises(ValueError, match="same seed sets"):
        paired_bootstrap(base, base[:2], _ref())


def test_paired_bootstrap_of_another_statistic():
    """``statistic``: the same pairing for a figure other than the FID (the report's IS and digits confidence)."""
    rng = np.random.default_rng(2)
    a = _sets(rng, 0.0, k=2, n=200)
    b = [SetFeatures(s.features - 0.3, s.logits) for s in a]  # the same seeds, shifted by 0.3 in every dim

    def mean0(s):
        return float(s.features[:, 0].mean())

    d = paired_bootstrap(a, b, statistic=mean0, num_boot=30)
    assert d["per_set"] == pytest.approx([0.3, 0.3]) and d["pooled"] == pytest.approx(0.3)
    assert d["ci"] == pytest.approx((0.3, 0.3))  # a paired shift has no resampling noise at all
    assert verdict({"x": (d["pooled"], verdict_interval(d["per_set"], d["ci"]))}, +1) == REPRODUCED
    scaled = paired_bootstrap(a, b, statistic=mean0, num_boot=5, scale_b=1.1)  # "a within 10% of b"
    assert scaled["per_set"] == pytest.approx([mean0(x) - 1.1 * mean0(y) for x, y in zip(a, b)])
    with pytest.raises(ValueError, match="needs ref"):
        paired_bootstrap(a, b)


def test_pooled_scores_with_the_reference_features_add_kid_fid_inf_and_the_class_mix():
    from ddpm.services.metrics.classmix import kid_and_class_mix

    rng = np.random.default_rng(5)
    sets = _sets(rng, 0.2, k=2, n=150)
    ref_f = SetFeatures(rng.normal(0, 1.0, (300, 4)), rng.normal(0, 2.0, (300, 5)))
    out = pooled_scores(sets, _ref(), "test", splits=2, ref_features=ref_f)
    whole = kid_and_class_mix(np.concatenate([s.features for s in sets]), np.concatenate([s.logits for s in sets]),
                              ref_f.features, ref_f.logits)
    assert out["kid"] == whole["kid"] and out["class_kl"] == whole["class_kl"]
    assert len(out["kid_sets"]) == 2 and len(out["class_kl_sets"]) == 2
    # the shift of 0.2 in 4 dims: FID between the distributions 0.16; the pooled FID of 300 images lies above it
    assert abs(out["fid_inf"] - 0.16) < abs(out["fid"] - 0.16) + 0.05
    assert "kid" not in pooled_scores(sets, _ref(), "test", splits=2)
