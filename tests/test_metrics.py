"""ddpm.services.metrics: float64 FID/IS, RefStats files, streaming metric, torch-fidelity agreement, digits extractor.

Offline: the only network is the digits CNN, trained once per session into a temporary cache dir (seconds).
The Inception network is never constructed here.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from ddpm.core.data import model_to_uint8
from ddpm.core.data.digits import digits_split, digits_split_indices
from ddpm.services.metrics import (
    RefStats,
    StreamingFIDIS,
    build_ref_stats,
    compute_fid_is,
    compute_with_torch_fidelity,
    digits_quality,
    digits_reference_scores,
    frechet_distance,
    get_extractor,
    inception_score,
    load_or_build,
    metric_key,
    ref_stats_path,
    stats_from_features,
    to_nchw_uint8,
)
from ddpm.services.metrics.digits_classifier import CLASSIFIER_VERSION
from ddpm.services.metrics.digits_score import digits_train_ref_stats


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("ddpm_cache")


@pytest.fixture(scope="session")
def ext(cache_dir):
    return get_extractor("digits", cache_dir=cache_dir)


@pytest.fixture(scope="session")
def train_ref(ext):
    return digits_train_ref_stats(ext)


def _noisy(x: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x.float() + sigma * torch.randn(x.shape, generator=g)).round().clamp(0, 255).to(torch.uint8)


# ------------------------------------------------------------------------------------------------ math
def test_frechet_distance_closed_form_diagonal():
    rng = np.random.default_rng(0)
    d = 7
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    v1, v2 = rng.uniform(0.1, 3.0, size=d), rng.uniform(0.1, 3.0, size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    got = frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2))
    assert isinstance(got, float)
    assert got == pytest.approx(expected, rel=1e-10)



@pytest.mark.parametrize("n", [3, 12, 47])
def test_fewer_samples_than_dimensions_use_the_exact_low_rank_trace(n):
    """n < d: tr sqrtm(sigma1 sigma2) from the n x n matrix F sigma2 F^T (F from the features, or from sigma1's
    leading eigenvectors) equals scipy's d x d sqrtm; n >= d keeps the sqrtm path (no factor)."""
    import scipy.linalg

    from ddpm.services.metrics.fid import low_rank_factor

    rng = np.random.default_rng(n)
    d = 48
    ref = rng.normal(size=(500, d)) @ rng.normal(size=(d, d)) / np.sqrt(d)
    mu2, sigma2 = stats_from_features(ref)
    x = rng.normal(size=(n, d)) * 1.3 + 0.2
    mu1, sigma1 = stats_from_features(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns that sigma1 sigma2 is singular (rank n - 1 < d)
        tr = np.trace(scipy.linalg.sqrtm(sigma1 @ sigma2)).real
    expected = float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * tr)
    from_features = frechet_distance(mu1, sigma1, mu2, sigma2, factor1=low_rank_factor(x))
    from_sigma = frechet_distance(mu1, sigma1, mu2, sigma2, factor1=low_rank_factor(sigma=sigma1, n=n))
    assert from_features == pytest.approx(expected, rel=1e-7)
    assert from_sigma == pytest.approx(expected, rel=1e-7)
    assert low_rank_factor(x).shape == (n, d) and low_rank_factor(sigma=sigma1, n=n).shape == (n - 1, d)
    assert low_rank_factor(rng.normal(size=(d, d))) is None and low_rank_factor(sigma=sigma2, n=500) is None
    with pytest.raises(ValueError, match="factor1"):
        frechet_distance(mu1, sigma1, mu2, sigma2, factor1=np.ones((d, d)))

def test_fid_of_a_set_with_itself_is_zero_and_finite():
    f = np.random.default_rng(1).normal(size=(400, 32)) @ np.random.default_rng(2).normal(size=(32, 32))
    mu, sigma = stats_from_features(f)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    fid = frechet_distance(mu, sigma, mu, sigma)
    assert math.isfinite(fid) and abs(fid) < 1e-6


def test_fid_small_n_and_collapsed_sets_never_nan(ext, train_ref):
    x, _ = digits_split("train")
    with pytest.warns(UserWarning, match="singular"):
        r = compute_fid_is(x[:10], train_ref, ext)
    assert math.isfinite(r["fid_10"]) and r["fid_10"] > 0
    collapsed = x[:1].repeat(50, 1, 1, 1)  # zero covariance
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = compute_fid_is(collapsed, train_ref, ext)
    assert math.isfinite(r["fid_50"]) and r["fid_50"] > 0
    assert r["is_50"] == pytest.approx(1.0, abs=1e-9)  # identical images: IS 1


def test_nonfinite_inputs_and_too_few_samples_raise(ext, train_ref):
    mu, sigma = np.zeros(3), np.eye(3)
    with pytest.raises(ValueError):
        frechet_distance(mu, sigma, mu + np.nan, sigma)
    with pytest.raises(ValueError, match="at least 2"):
        stats_from_features(np.ones((1, 3)))
    x, _ = digits_split("train")
    with pytest.raises(ValueError, match="at least 2"):
        compute_fid_is(x[:1], train_ref, ext)


def test_inception_score_limits():
    # identical predictions -> IS 1
    same = np.tile(np.random.default_rng(0).normal(size=(1, 10)), (200, 1))
    assert inception_score(same)[0] == pytest.approx(1.0)
    # confident and uniform over 10 classes -> IS = 10 (each split holds every class equally, no shuffle)
    logits = 30.0 * np.eye(10)[np.arange(1000) % 10]
    mean, std = inception_score(logits, splits=10, shuffle_seed=None)
    assert mean == pytest.approx(10.0, rel=1e-6) and std < 1e-6
    assert inception_score(logits, splits=1)[0] == pytest.approx(10.0, rel=1e-6)


def test_inception_score_matches_openai_formula():
    logits = np.random.default_rng(3).normal(scale=3.0, size=(500, 10))
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    scores = []
    for k in range(10):  # OpenAI inception_score.py, unshuffled
        part = p[k * 50 : (k + 1) * 50]
        kl = part * (np.log(part) - np.log(np.mean(part, 0, keepdims=True)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    mean, std = inception_score(logits, splits=10, shuffle_seed=None)
    assert mean == pytest.approx(np.mean(scores), rel=1e-10)
    assert std == pytest.approx(np.std(scores), rel=1e-8)


def test_metric_key():
    assert metric_key("fid", 50000) == "fid_50k"
    assert metric_key("fid", 5000) == "fid_5k"
    assert metric_key("is", 1797) == "is_1797"
    assert metric_key("fid", 2500) == "fid_2500"
    with pytest.raises(ValueError):
        metric_key("fid", 0)


def test_layouts_and_model_to_uint8():
    u = torch.randint(0, 256, (5, 3, 4, 6), dtype=torch.uint8)
    assert torch.equal(to_nchw_uint8(u.permute(0, 2, 3, 1).numpy()), u)
    assert to_nchw_uint8(u[:, 0]).shape == (5, 1, 4, 6)
    with pytest.raises(TypeError, match="model_to_uint8"):
        to_nchw_uint8(u.float())
    # the data scaling x/127.5 - 1 is inverted exactly, for every level
    levels = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(model_to_uint8(levels.float() / 127.5 - 1.0), levels)
    clipped = model_to_uint8(torch.tensor([-3.0, 3.0, 0.999, 1.004, -1.004]))
    assert torch.equal(clipped, torch.tensor([0, 255, 255, 255, 0], dtype=torch.uint8))
    assert model_to_uint8(u) is u  # already quantised: unchanged
    assert torch.equal(model_to_uint8(np.array([-1.0, 1.0])), torch.tensor([0, 255], dtype=torch.uint8))


# ---------------------------------------------------------------------------------------- digits extractor
def test_digits_split_rule():
    tr, va, te = digits_split_indices()
    assert (len(tr), len(va), len(te)) == (1437, 179, 181)
    allidx = torch.cat([tr, va, te])
    assert torch.equal(allidx.sort().values, torch.arange(1797))
    expected = torch.randperm(1797, generator=torch.Generator().manual_seed(0))
    assert torch.equal(allidx, expected)


def test_digits_classifier_cached_and_accurate(ext, cache_dir):
    assert (cache_dir / f"{CLASSIFIER_VERSION}.safetensors").is_file()
    x, y = digits_split("test")
    out = ext(x)
    assert out["features"].shape == (181, ext.feature_dim) and out["logits"].shape == (181, 10)
    acc = (out["logits"].argmax(1) == y).double().mean().item()
    assert acc > 0.95
    # 3-channel and upsampled inputs are accepted
    x3 = x.expand(-1, 3, -1, -1)
    assert torch.allclose(ext(x3)["logits"], out["logits"], atol=1e-4)
    big = torch.nn.functional.interpolate(x.float(), scale_factor=4, mode="nearest").to(torch.uint8)
    assert (ext(big)["logits"].argmax(1) == y).double().mean().item() > 0.9


def test_fid_zero_for_identical_and_monotone_in_noise(ext, train_ref):
    x, _ = digits_split("train")
    r = compute_fid_is(x, train_ref, ext)
    assert abs(r["fid_1437"]) < 1e-6
    assert r["n_samples"] == 1437 and r["extractor"] == "ddpm-digits" and r["ref_id"] == train_ref.id
    assert {"is_1437", "is_1437_std"} <= r.keys()
    x = x[:400]
    fids = [compute_fid_is(_noisy(x, s), train_ref, ext)["fid_400"] for s in (0.0, 20.0, 60.0, 150.0)]
    assert 0 < fids[0] < fids[1] < fids[2] < fids[3], fids


def test_ref_extractor_mismatch_is_refused(ext, train_ref):
    other = RefStats(train_ref.mu, train_ref.sigma, n=1, id="x", extractor="inception-v3-compat")
    with pytest.raises(ValueError, match="computed with"):
        compute_fid_is(digits_split("test")[0], other, ext)


def test_agrees_with_torch_fidelity(ext, cache_dir, monkeypatch):
    monkeypatch.setenv("DDPM_CACHE", str(cache_dir))
    samples = _noisy(digits_split("train")[0][:300], 40.0)
    ref_images = torch.cat([digits_split("val")[0], digits_split("test")[0]])
    ref = build_ref_stats(ref_images, ext, id="digits-valtest")
    ours = compute_fid_is(samples, ref, ext)
    inception_weights = cache_dir / "inception.pth"  # a globally configured Inception path is ignored here
    tf = compute_with_torch_fidelity(
        samples, ref_images, feature_extractor="ddpm-digits", weights_path=inception_weights, cuda=False
    )
    assert tf["extractor"] == "ddpm-digits" and tf["n_samples"] == 300
    assert tf["fid"] == pytest.approx(ours["fid_300"], rel=1e-3)
    assert tf["is"] == pytest.approx(ours["is_300"], rel=1e-3)
    assert tf["is_std"] == pytest.approx(ours["is_300_std"], rel=1e-2, abs=1e-4)


def test_streaming_metric_equals_batch(ext, train_ref):
    samples = _noisy(digits_split("train")[0][:300], 30.0, seed=1)
    batch = compute_fid_is(samples, train_ref, ext)
    m = StreamingFIDIS(ext, train_ref)
    for chunk in samples.split(70):
        m.update(chunk)
    stream = m.compute()
    assert stream.keys() == batch.keys()
    assert stream["fid_300"] == pytest.approx(batch["fid_300"], rel=1e-6)
    assert stream["is_300"] == pytest.approx(batch["is_300"], rel=1e-9)
    assert stream["n_samples"] == 300
    m.reset()
    m.update(samples[:150].permute(0, 2, 3, 1))  # NHWC accepted too
    m.update(samples[150:])
    assert m.compute()["fid_300"] == pytest.approx(batch["fid_300"], rel=1e-6)
    assert not any(k.startswith("_extractor") for k in m.state_dict())  # extractor not saved in checkpoints
    # per-rank states reduce with their dist_reduce_fx (what DDP sync does): two "ranks" merged == one pass
    r0, r1 = StreamingFIDIS(ext, train_ref), StreamingFIDIS(ext, train_ref)
    r0.update(samples[:100])
    r1.update(samples[100:])
    r0.merge_state(r1)
    merged = r0.compute()
    assert merged["fid_300"] == pytest.approx(batch["fid_300"], rel=1e-6)
    # IS splits depend on sample order, and the merge/gather order of the logits is by rank...
    assert merged["is_300"] == pytest.approx(batch["is_300"], abs=3 * batch["is_300_std"])
    # ...unless each image comes with its index: the training callback's interleaved shares (rank r takes
    # r, r + world, ...) then give exactly the one-process IS
    r0, r1 = StreamingFIDIS(ext, train_ref), StreamingFIDIS(ext, train_ref)
    r0.update(samples[0::2], index=torch.arange(0, 300, 2))
    r1.update(samples[1::2], index=torch.arange(1, 300, 2))
    r0.merge_state(r1)
    merged = r0.compute()
    assert merged["is_300"] == pytest.approx(batch["is_300"], rel=1e-9)
    assert merged["is_300_std"] == pytest.approx(batch["is_300_std"], rel=1e-9)
    assert merged["fid_300"] == pytest.approx(batch["fid_300"], rel=1e-6)
    with pytest.raises(ValueError, match="entries"):
        r0.update(samples[:3], index=[0, 1])
    # a module-wide dtype cast (e.g. bf16-true precision) leaves the float64 statistics alone
    m.reset()
    m.half()
    m.update(samples)
    assert m.compute()["fid_300"] == pytest.approx(batch["fid_300"], rel=1e-6)


def test_get_extractor_inception_missing_weights_is_clear(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("DDPM_CACHE", str(cache_dir))
    with pytest.raises(FileNotFoundError, match="^fid.inception_weights=.*callbacks.fid.metric.inception_weights"):
        get_extractor("inception", weights_path=tmp_path / "missing.pth")
    # a command whose key is spelt otherwise (build_refstats: inception_weights=PATH) is named as it takes it
    with pytest.raises(FileNotFoundError, match=r"^inception_weights=\S*missing.pth: file not found \(expected a copy"):
        get_extractor("inception", weights_path=tmp_path / "missing.pth", weights_key="inception_weights")
    assert get_extractor("digits", weights_path=tmp_path / "inception.pth").name == "ddpm-digits"
    with pytest.raises(ValueError, match=r"^fid\.feature_extractor='vgg' is not valid: expected inception \| digits "
                                         r"\| digits-b \(or auto: the dataset's\)"):
        get_extractor("vgg")
    with pytest.raises(ValueError, match=r"^feature_extractor='vgg' is not valid: expected inception \| digits \| "
                                         r"digits-b$"):  # build_refstats spells it so, and has no auto
        get_extractor("vgg", name_key="feature_extractor")


# ------------------------------------------------------------------------------------------------ refstats
def test_refstats_round_trip_and_pickle_refusal(tmp_path, train_ref):
    path = ref_stats_path(tmp_path, "digits", 8, "train", train_ref.extractor, train_ref.n)
    assert path.name == "digits-8-train-ddpm-digits-n1437.npz"
    train_ref.save(path)
    with np.load(path, allow_pickle=False) as z:
        assert {"mu", "sigma", "n", "id", "extractor", "sha"} <= set(z.files)
        assert z["mu"].dtype == np.float64
    back = RefStats.load(path)
    assert np.array_equal(back.mu, train_ref.mu) and np.array_equal(back.sigma, train_ref.sigma)
    assert (back.n, back.id, back.extractor, back.sha) == (
        train_ref.n,
        train_ref.id,
        train_ref.extractor,
        train_ref.sha,
    )
    assert not list(tmp_path.glob("*.tmp*"))
    with pytest.raises(ValueError, match="computed with"):
        RefStats.load(path, extractor="inception-v3-compat")

    evil = tmp_path / "evil.npz"
    np.savez(evil, mu=np.zeros(2), sigma=np.eye(2), id=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        RefStats.load(evil)

    tampered = tmp_path / "tampered.npz"
    np.savez(tampered, mu=np.ones(2), sigma=np.eye(2), n=5, id="t", extractor="e", sha="0" * 64)
    with pytest.raises(ValueError, match="checksum"):
        RefStats.load(tampered)

    ttur = tmp_path / "fid_stats_cifar10_train.npz"
    np.savez(ttur, mu=np.ones(2, np.float32), sigma=np.eye(2))
    plain = RefStats.load(ttur, extractor="inception-v3-compat")
    assert plain.extractor == "inception-v3-compat" and plain.n == -1 and plain.mu.dtype == np.float64


def test_load_or_build_builds_once(tmp_path, ext):
    x = digits_split("val")[0]
    calls = []

    def build():
        calls.append(1)
        return build_ref_stats(x, ext, id="val")

    p = tmp_path / "sub" / "val.npz"
    a = load_or_build(p, build, extractor="ddpm-digits")
    b = load_or_build(p, build, extractor="ddpm-digits")
    assert len(calls) == 1 and a.sha == b.sha and p.is_file()


def test_refstats_command_digits(tmp_path, cache_dir, monkeypatch, ext):
    from ddpm.commands.build_refstats import build_refstats
    from ddpm.core.config import compose

    monkeypatch.setenv("DDPM_CACHE", str(cache_dir))
    path = build_refstats(compose("build_refstats", ["data=digits", "split=train", "feature_extractor=digits",
                                                     f"out_dir={tmp_path}"]))
    assert path.name == "digits-8-train-ddpm-digits-n1437.npz"
    stats = RefStats.load(path)
    assert stats.n == 1437 and stats.id == path.stem
    assert abs(compute_fid_is(digits_split("train")[0], stats, ext)["fid_1437"]) < 1e-6


# ------------------------------------------------------------------------------------------ digits quality
def test_digits_quality_separates_real_from_noise(ext):
    ref = digits_reference_scores(seed=0, extractor=ext)
    real, uni, blur = ref["real_test"], ref["uniform_noise"], ref["blurred_noise"]
    assert real["n"] == uni["n"] == blur["n"] == 181
    assert real["fid"] < uni["fid"] / 5 and real["fid"] < blur["fid"] / 5, ref
    assert real["confidence"] > 0.9
    assert uni["confidence"] < real["confidence"] and blur["confidence"] < real["confidence"]
    assert 3.0 < real["class_entropy"] <= math.log2(10) + 1e-9


def test_digits_quality_on_sampler_output(ext):
    x, _ = digits_split("test")
    model_space = x.float() / 127.5 - 1.0  # what a sampler returns, [-1, 1]
    u = model_to_uint8(model_space)
    assert torch.equal(u, x)
    ref = digits_train_ref_stats(ext)
    q = digits_quality(u[:, 0], extractor=ext, ref=ref)  # [N, 8, 8] accepted
    assert q == digits_quality(x, extractor=ext, ref=ref)
    assert q["confidence"] > 0.9


def test_refstats_command_folder_and_batch_iterables(tmp_path, cache_dir, monkeypatch, ext):
    """An image folder is read by the data layer's reader (ddpm.core.data.folder), all of it with no held-out
    fractions."""
    from PIL import Image

    from ddpm.commands.build_refstats import build_refstats
    from ddpm.core.config import compose

    monkeypatch.setenv("DDPM_CACHE", str(cache_dir))
    x = digits_split("val")[0][:12]
    root = tmp_path / "imgs"
    (root / "a" / "b").mkdir(parents=True)
    for i, im in enumerate(x[:, 0].numpy()):
        sub = root / "a" / "b" if i % 2 else root
        Image.fromarray(im).save(sub / f"{i:06d}.png")
    path = build_refstats(compose("build_refstats", [
        "data=image_folder", f"data.root={root}", "data.resolution=8", "data.name=mydigits", "data.val_fraction=0",
        "data.test_fraction=0", "data.num_workers=0", "feature_extractor=digits", f"out_dir={tmp_path / 'out'}"]))
    assert path.name == "mydigits-8-train-ddpm-digits-n12.npz"
    stats = RefStats.load(path, extractor="ddpm-digits")
    # same images as an iterable of (images, labels) batches: identical statistics
    direct = build_ref_stats(((b, None) for b in x.split(5)), ext, id="direct")
    assert np.allclose(stats.mu, direct.mu, atol=1e-5)  # order-independent statistics
    assert np.allclose(stats.sigma, direct.sigma, atol=1e-5)
