"""The quality measures beside FID: the second digits extractor, unbiased KID, FID extrapolated to infinite n,
the class mix, and the one verdict rule. Checked against closed forms and independent float64 computations."""

from __future__ import annotations

import numpy as np
import pytest

from ddpm.services.metrics.classmix import class_histogram, class_kl, class_weights, kid_and_class_mix, weighted_stats
from ddpm.services.metrics.fid import frechet_distance
from ddpm.services.metrics.kid import fid_infinity, kid, mmd2_unbiased
from ddpm.services.metrics.pooled import (
    EXTRACTOR_DEPENDENT,
    OPPOSITE,
    REPRODUCED,
    UNRESOLVED,
    draws_interval,
    verdict,
    verdict_interval,
)
from ddpm.services.metrics.refstats import stats_from_features


# --- KID -------------------------------------------------------------------------------------------------------
def _mmd2_loops(x, y, w=None):
    """Unbiased MMD^2 with the cubic kernel, written out pair by pair (an independent float64 reference)."""
    d = x.shape[1]

    def k(a, b):
        return (float(np.dot(a, b)) / d + 1.0) ** 3

    m, n = len(x), len(y)
    w = np.full(n, 1.0 / n) if w is None else np.asarray(w, float) / np.sum(w)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    num = sum(w[i] * w[j] * k(y[i], y[j]) for i in range(n) for j in range(n) if i != j)
    den = sum(w[i] * w[j] for i in range(n) for j in range(n) if i != j)
    xy = sum(w[j] * k(x[i], y[j]) for i in range(m) for j in range(n)) / m
    return xx + num / den - 2 * xy


def test_kid_matches_a_pairwise_float64_computation():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 3)), rng.normal(0.5, 1.2, size=(15, 3))
    ref = _mmd2_loops(x, y)
    assert mmd2_unbiased(x, y) == pytest.approx(ref, rel=1e-10)
    # one subset holding every point of the smaller side, and all of the larger: the full estimate
    x2 = rng.normal(size=(15, 3))
    assert kid(x2, y, num_subsets=3, subset_size=100)["kid"] == pytest.approx(_mmd2_loops(x2, y), rel=1e-10)
    w = rng.uniform(0.1, 2.0, size=15)
    assert mmd2_unbiased(x, y, weights_y=w) == pytest.approx(_mmd2_loops(x, y, w), rel=1e-10)
    # weights that keep only some points equal the unweighted estimate on those points
    keep = np.arange(15) < 9
    assert mmd2_unbiased(x, y, weights_y=keep.astype(float)) == pytest.approx(mmd2_unbiased(x, y[keep]), rel=1e-10)


def test_kid_averages_the_estimate_over_random_subsets():
    """Subsets smaller than the sets: the mean (and std) of the unbiased estimate on each subset pair, the pairs
    drawn in turn from ``default_rng(seed)`` (x then y), with the weights renormalised within a y subset."""
    rng = np.random.default_rng(7)
    x, y, w = rng.normal(size=(20, 3)), rng.normal(0.3, 1.0, size=(25, 3)), rng.uniform(0.2, 1.0, size=25)
    for weights in (None, w):
        draw = np.random.default_rng(3)
        vals = []
        for _ in range(6):
            ix, iy = draw.choice(20, 8, replace=False), draw.choice(25, 8, replace=False)
            vals.append(_mmd2_loops(x[ix], y[iy], None if weights is None else weights[iy]))
        out = kid(x, y, weights_y=weights, num_subsets=6, subset_size=8, seed=3)
        assert out["kid"] == pytest.approx(np.mean(vals), rel=1e-9)
        assert out["kid_std"] == pytest.approx(np.std(vals), rel=1e-9)
        assert out["kid_subset_size"] == 8 and out["kid_subsets"] == 6


def test_kid_is_unbiased_where_fid_is_not():
    rng = np.random.default_rng(1)
    d, n = 8, 100
    kids, fids = [], []
    for _ in range(30):  # two independent draws of one distribution
        a, b = rng.normal(size=(n, d)), rng.normal(size=(n, d))
        kids.append(kid(a, b, num_subsets=5, subset_size=n)["kid"])
        fids.append(frechet_distance(*stats_from_features(a), *stats_from_features(b)))
    kids = np.asarray(kids)
    se = kids.std(ddof=1) / np.sqrt(kids.size)
    assert abs(kids.mean()) < 3 * se  # ~0: unbiased
    assert np.mean(fids) > 10 * np.std(fids) / np.sqrt(len(fids))  # FID's bias: clearly positive
    shifted = kid(rng.normal(size=(n, d)), rng.normal(0.5, 1.0, size=(n, d)), num_subsets=5)
    assert shifted["kid"] > 10 * se and shifted["kid_std"] >= 0.0


# --- FID at infinite n ---------------------------------------------------------------------------------------
def test_fid_infinity_recovers_the_closed_form_of_two_gaussians():
    """Samples of N(0, I) against the exact N(mu2, sigma2), 16-d: FID at n=400 is biased upwards by about its
    own size; the extrapolation to infinite n lands on the closed form within its noise."""
    d = 16
    mu2, var2 = np.full(d, 0.1), np.linspace(0.8, 1.2, d)
    sigma2 = np.diag(var2)
    true = float(mu2 @ mu2 + d + var2.sum() - 2 * np.sqrt(var2).sum())  # closed form for commuting covariances
    errs_inf, errs_n = [], []
    for seed in range(8):
        x = np.random.default_rng(seed).normal(size=(400, d))
        errs_inf.append(fid_infinity(x, mu2, sigma2, seed=seed)["fid_inf"] - true)
        errs_n.append(frechet_distance(*stats_from_features(x), mu2, sigma2) - true)
    se_inf = np.std(errs_inf, ddof=1) / np.sqrt(len(errs_inf))
    assert np.mean(errs_n) > 0.5 * true  # the bias at n=400
    assert abs(np.mean(errs_inf)) < 0.25 * np.mean(errs_n)
    assert abs(np.mean(errs_inf)) < 3 * se_inf


def test_fid_infinity_refuses_too_few_samples():
    with pytest.raises(ValueError, match="more samples"):
        fid_infinity(np.zeros((10, 8)), np.zeros(8), np.eye(8))


# --- class mix -----------------------------------------------------------------------------------------------
def _onehot_logits(classes, k=3):
    lg = np.zeros((len(classes), k))
    lg[np.arange(len(classes)), classes] = 5.0
    return lg


def test_class_kl_and_weights_against_closed_forms():
    p, q = np.array([0.5, 0.25, 0.25]), np.array([0.25, 0.25, 0.5])
    assert class_kl(p, q) == pytest.approx(0.5 * np.log(2) + 0.25 * np.log(0.5))
    assert class_kl(q, q) == 0.0 and class_kl(np.array([0.5, 0.5, 0.0]), np.array([1.0, 0.0, 0.0])) == np.inf
    ref_logits = _onehot_logits([0, 0, 0, 1, 2, 2])
    np.testing.assert_allclose(class_histogram(ref_logits), [0.5, 1 / 6, 1 / 3])
    w = class_weights(ref_logits, p)
    np.testing.assert_allclose([w[:3].sum(), w[3], w[4:].sum()], p)  # the reweighted reference has the mix p
    f = np.random.default_rng(3).normal(size=(6, 2))
    mu, sigma = weighted_stats(f, np.ones(6))
    mu0, sigma0 = stats_from_features(f)
    np.testing.assert_allclose(mu, mu0)
    np.testing.assert_allclose(sigma, sigma0)


def test_reweighting_takes_the_class_mix_out_of_fid_and_kid():
    """A sample drawn from the reference's own class clusters but with a skewed mix: FID and KID see the mix,
    their class-mix versions do not."""
    rng = np.random.default_rng(4)
    centres = np.eye(4)[:3] * 6.0

    def draw(counts):
        cls = np.repeat(np.arange(3), counts)
        return centres[cls] + rng.normal(size=(len(cls), 4)), _onehot_logits(cls)

    ref_f, ref_lg = draw([300, 300, 300])
    smp_f, smp_lg = draw([300, 100, 50])
    out = kid_and_class_mix(smp_f, smp_lg, ref_f, ref_lg)
    fid = frechet_distance(*stats_from_features(smp_f), *stats_from_features(ref_f))
    assert out["class_kl"] == pytest.approx(class_kl(np.array([300, 100, 50]) / 450, np.full(3, 1 / 3)))
    assert out["fid_classmix"] < 0.05 * fid
    assert out["kid_classmix"] < 0.05 * out["kid"]
    assert out["kid"] > 0


# --- the verdict rule ----------------------------------------------------------------------------------------
def test_draws_interval_is_a_t_interval_over_the_sets():
    lo, hi = draws_interval([1.0, 2.0, 3.0], level=0.95)
    half = 4.302652729911275 * 1.0 / np.sqrt(3)  # t_{0.975, 2} * sd / sqrt(3)
    assert (lo, hi) == pytest.approx((2.0 - half, 2.0 + half))
    assert draws_interval([1.0]) == (-np.inf, np.inf)
    # the verdict interval covers both the between-draw and the within-draw interval
    assert verdict_interval([1.0, 2.0, 3.0], (1.5, 9.0)) == pytest.approx((2.0 - half, 9.0))


@pytest.mark.parametrize(("readings", "expected"), [
    ({"A": (-1.0, (-2.0, -0.5)), "B": (-3.0, (-5.0, -0.1))}, REPRODUCED),            # both agree, both exclude 0
    ({"A": (1.0, (0.5, 2.0)), "B": (3.0, (0.1, 5.0))}, OPPOSITE),                   # both agree the other way
    ({"A": (-1.0, (-2.0, -0.5)), "B": (2.0, (0.5, 3.0))}, EXTRACTOR_DEPENDENT),     # they disagree
    ({"A": (-1.0, (-2.0, -0.5)), "B": (0.4, (-1.0, 2.0))}, EXTRACTOR_DEPENDENT),    # B leans the other way
    ({"A": (-1.0, (-2.0, -0.5)), "B": (-0.4, (-1.0, 0.2))}, UNRESOLVED),            # B straddles 0
    ({"A": (-0.2, (-1.8, 0.6)), "B": (-0.4, (-1.0, 0.2))}, UNRESOLVED),             # both straddle
    ({"A": (-1.0, (-2.0, -0.5))}, REPRODUCED),                                     # one extractor (Inception)
    ({"A": (-1.0, (-np.inf, np.inf))}, UNRESOLVED),                                # one seed set: no draw spread
    ({}, UNRESOLVED),
])
def test_verdict_rule(readings, expected):
    assert verdict(readings, -1) == expected


def test_verdict_needs_a_sign():
    with pytest.raises(ValueError, match="expected_sign"):
        verdict({"A": (1.0, (0.5, 2.0))}, 0)


# --- the second digits extractor -----------------------------------------------------------------------------
def test_extractor_b_is_accurate_cached_and_not_extractor_a(tmp_path):
    import torch

    from ddpm.core.data.digits import digits_split
    from ddpm.services.metrics import get_extractor
    from ddpm.services.metrics.digits_classifier import CLASSIFIER_B_VERSION, DigitsExtractor, classifier_metadata

    meta = classifier_metadata(variant="b")
    assert meta["version"] == CLASSIFIER_B_VERSION
    assert float(meta["acc_val"]) >= 0.95 and float(meta["acc_test"]) >= 0.95  # held out
    b = get_extractor("digits-b")
    assert b.name == "ddpm-digits-b" and b.feature_dim == 32
    x, y = digits_split("test")
    out = b(x)
    assert out["features"].shape == (x.shape[0], 32)
    assert float((out["logits"].argmax(1) == y).double().mean()) == pytest.approx(float(meta["acc_test"]), abs=1e-4)
    # a different network: its features are not a copy of A's (A's are 64-d)
    assert DigitsExtractor()(x)["features"].shape[1] == 64
    assert not torch.equal(get_extractor("digits")(x)["logits"], out["logits"])


@pytest.mark.slow
def test_extractor_b_training_is_deterministic():
    import torch

    from ddpm.services.metrics.digits_classifier import train_digits_classifier_b

    (n1, acc1), (n2, acc2) = train_digits_classifier_b(), train_digits_classifier_b()
    assert acc1 == acc2
    assert all(torch.equal(a, b) for a, b in zip(n1.state_dict().values(), n2.state_dict().values()))


def test_digits_scores_name_both_extractors_and_keep_a_unchanged():
    from ddpm.core.data.digits import digits_split
    from ddpm.services.metrics.digits_score import digits_quality, flat_digits_scores

    x, _ = digits_split("val")
    flat = flat_digits_scores(x[:120])
    q = digits_quality(x[:120])
    assert {k: flat[f"digits/{k}"] for k in q} == pytest.approx({k: float(v) for k, v in q.items()})
    for prefix in ("digits", "digits_b"):
        assert {"fid", "kid", "kid_std", "class_kl", "fid_classmix", "kid_classmix", "confidence",
                "class_entropy", "n"} <= {k.split("/")[1] for k in flat if k.startswith(prefix + "/")}
    assert flat["digits/fid"] != flat["digits_b/fid"]
    assert 0 <= flat["digits_b/class_kl"] < 0.2  # real digits: near the reference's class mix


# --- the quickstart table's claim, restated from stored seed sets ---------------------------------------------
@pytest.mark.slow  # over 5 s on 2 cores: the fast tier stays under 3 minutes
def test_quickstart_vs_real_restates_from_stored_sets_with_both_extractors(tmp_path, capsys):
    """bench/quickstart_vs_real.py on sample.py-style output directories: both extractors' numbers per draw, the
    real digits at the same n, and the verdict rule's outcome; noisy digits are established as worse."""
    import runpy
    import sys
    from pathlib import Path

    from ddpm.core.data.digits import digits_split
    from ddpm.services.metrics.digits_classifier import DigitsExtractorB
    from ddpm.services.metrics.digits_score import against_real, digits_quality, digits_scores

    real = digits_split("train")[0].numpy()  # [N, 1, 8, 8]
    dirs, sets = [], []
    for k in range(3):
        rng = np.random.default_rng(k)
        x = real[rng.choice(len(real), 60, replace=False)].astype(float) + rng.normal(0, 70, (60, 1, 8, 8))
        x = np.clip(x, 0, 255).round().astype(np.uint8)
        d = tmp_path / f"n60_seed{k}"
        d.mkdir()
        np.savez(d / "samples.npz", np.repeat(x.transpose(0, 2, 3, 1), 3, axis=-1))  # sample.py's layout
        dirs.append(d)
        sets.append(x)
    out = tmp_path / "table.md"
    root = Path(__file__).resolve().parents[1]
    argv = sys.argv
    sys.argv = ["quickstart_vs_real.py", *map(str, dirs), "--out", str(out)]
    try:
        runpy.run_path(str(root / "bench" / "quickstart_vs_real.py"), run_name="__main__")
    finally:
        sys.argv = argv
    text = out.read_text()
    q_a, q_b = digits_quality(sets[1]), digits_quality(sets[1], extractor=DigitsExtractorB())
    assert f"| n60_seed1 | {q_a['fid']:.2f} | {q_b['fid']:.2f} | {q_a['kid']:.3g} | {q_b['kid']:.3g} |" in text
    assert "| real held-out digits (n=60) |" in text
    assert 'Verdict on "the samples score worse than real digits": **reproduced**' in text
    res = against_real(sets)
    assert res["verdict"] == "reproduced" and all(d["interval"][0] > 0 for d in res["diff"].values())
    with pytest.raises(ValueError, match="one size"):
        against_real([sets[0], sets[1][:30]])
    # real digits at n=60, draw to draw, beside the samples' median: the noisy samples are far above every subset
    row = next(ln for ln in text.splitlines() if ln.startswith("| A | "))
    real_med, rank, samples_med = row.split(" | ")[1:4]
    a_fids = [q["digits"]["fid"] for q in res["sets"]]
    assert samples_med.startswith(f"{np.median(a_fids):.2f} (") and float(samples_med.split()[0]) > 1.5 * float(
        real_med.split()[0])
    assert rank.endswith("of 50 subsets lower")
    pooled = digits_scores(np.concatenate(sets))  # the three draws as one sample of 180
    assert (f"All 3 draws as one sample (180 images): FID A {pooled['digits']['fid']:.2f} / B "
            f"{pooled['digits_b']['fid']:.2f}. Per draw on average: confidence A "
            f"{np.mean([q['digits']['confidence'] for q in res['sets']]):.3f}") in text


@pytest.mark.slow  # both extractors on 7 subsets: over 5 s on 2 cores
def test_real_draws_are_subsets_of_the_held_out_digits():
    """real_draws(n): FIDs of random n-subsets of the 360 held-out digits; at n=360 every subset is the whole pool,
    so every draw scores the same, digits_quality's figure for that pool; smaller draws score higher (FID's bias)."""
    import torch

    from ddpm.core.data.digits import digits_split
    from ddpm.services.metrics.digits_classifier import DigitsExtractorB
    from ddpm.services.metrics.digits_score import digits_quality, real_draws

    pool = torch.cat([digits_split("val")[0], digits_split("test")[0]])
    whole = real_draws(360, draws=2)
    assert whole["digits"]["fids"][0] == pytest.approx(digits_quality(pool)["fid"], rel=1e-9)
    assert whole["digits_b"]["fids"][1] == pytest.approx(digits_quality(pool, extractor=DigitsExtractorB())["fid"],
                                                         rel=1e-9)
    small = real_draws(90, draws=5, seed=1)
    for prefix in ("digits", "digits_b"):
        d = small[prefix]
        assert len(set(d["fids"])) == 5 and d["min"] <= d["median"] <= d["max"]
        assert d["min"] > whole[prefix]["median"]
    assert real_draws(90, draws=5, seed=1) == small  # depends on (n, draws, seed) only
    for key in ("confidence", "class_entropy"):  # each subset's own score, recomputed from its images
        assert whole["digits"][key]["values"][0] == pytest.approx(digits_quality(pool)[key], rel=1e-9)
        first = torch.randperm(360, generator=torch.Generator().manual_seed(1 * 100_003 + 0))[:90]
        assert small["digits_b"][key]["values"][0] == pytest.approx(
            digits_quality(pool[first], extractor=DigitsExtractorB())[key], rel=1e-9)
        d = small["digits"][key]
        assert d["min"] <= d["median"] <= d["max"] and len(d["values"]) == 5
    with pytest.raises(ValueError, match="2 <= n <= 360"):
        real_draws(361)
