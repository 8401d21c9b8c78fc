"""Tests of ddpm.core.diffusion math against closed forms and independent computations (CPU, fast)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from ddpm.core.diffusion import (
    GaussianDiffusion,
    LossType,
    MeanType,
    VarType,
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    get_beta_schedule,
    mean_flat,
    normal_kl,
)
from ddpm.core.diffusion.schedules import schedule_name

LN2 = math.log(2.0)


def _schedule64(betas: np.ndarray) -> dict[str, np.ndarray]:
    """Independent float64 recomputation of the schedule quantities (paper notation, code indices)."""
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    return {"betas": betas, "alphas": alphas, "abar": abar, "abar_prev": abar_prev}


# ----------------------------------------------------------------------------- schedules
def test_linear_schedule_matches_paper_numbers():
    betas = get_beta_schedule("linear", 1000)
    assert betas.dtype == np.float64 and betas.shape == (1000,)
    assert betas[0] == pytest.approx(1e-4, rel=1e-12) and betas[-1] == pytest.approx(0.02, rel=1e-12)
    assert np.allclose(np.diff(betas), (0.02 - 1e-4) / 999, rtol=1e-9)
    s = _schedule64(betas)
    assert s["abar"][-1] == pytest.approx(4.0358e-5, rel=1e-4)  # reference §1
    tilde = betas * (1 - s["abar_prev"]) / (1 - s["abar"])
    assert tilde[1] == pytest.approx(5.4532e-5, rel=1e-4)
    d = GaussianDiffusion(betas)
    assert d.posterior_variance_np[1] == pytest.approx(5.4532e-5, rel=1e-4)
    assert d.posterior_variance_np[0] == 0.0
    # clipped log-variance: index 0 replaced by index 1
    assert d.posterior_log_variance_clipped[0].item() == pytest.approx(math.log(tilde[1]), rel=1e-6)
    assert d.posterior_log_variance_clipped[1].item() == pytest.approx(-9.8167, abs=1e-4)


def test_cosine_and_quad_schedules():
    cos = get_beta_schedule("cosine", 1000)
    assert cos.dtype == np.float64
    assert np.all(np.diff(cos) >= 0) and cos.max() <= 0.999 and cos.min() > 0
    abar = np.cumprod(1 - cos)
    # abar(u) = cos^2(((u+0.008)/1.008) pi/2) / cos^2(0.008/1.008 pi/2) at u = 0.5 (before any capping)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert abar[499] == pytest.approx(f(0.5) / f(0.0), rel=1e-9)
    quad = get_beta_schedule("quad", 1000)
    assert quad[0] == pytest.approx(1e-4) and quad[-1] == pytest.approx(0.02)
    assert np.allclose(np.diff(np.sqrt(quad)), (math.sqrt(0.02) - math.sqrt(1e-4)) / 999)
    assert np.all(quad <= get_beta_schedule("linear", 1000) + 1e-15)  # convex: below the chord


@pytest.mark.parametrize("name", ["linear", "cosine", "quad"])
@pytest.mark.parametrize("T", [1, 2, 10, 37, 4000])
def test_schedules_any_T(name, T):
    betas = get_beta_schedule(name, T)
    assert betas.shape == (T,) and betas.dtype == np.float64
    assert np.all(betas > 0) and np.all(betas < 1)
    if name == "linear" and T > 20:
        assert betas[-1] == pytest.approx(0.02 * 1000 / T)
    GaussianDiffusion(betas)  # builds


def test_unknown_schedule_lists_valid_names():
    with pytest.raises(ValueError, match="linear.*cosine.*quad"):
        get_beta_schedule("sigmoid", 100)


# ----------------------------------------------------------------------------- posterior = Bayes' rule
@pytest.mark.parametrize("k", [1, 2, 10, 250, 999])
def test_posterior_is_bayes_rule(k):
    betas = get_beta_schedule("linear", 1000)
    s = _schedule64(betas)
    d = GaussianDiffusion(betas)
    x0, xt = 0.37, -0.81  # scalar data and a value of x at code index k (paper x_{k+1})
    # prior over x at code index k-1 (paper x_k) given x0, times the likelihood q(x_{k+1}|x_k) in x_k
    m0, v0 = math.sqrt(s["abar_prev"][k]) * x0, 1.0 - s["abar_prev"][k]
    a, b = s["alphas"][k], s["betas"][k]
    post_var = 1.0 / (1.0 / v0 + a / b)
    post_mean = post_var * (m0 / v0 + math.sqrt(a) * xt / b)
    mean, var, logvar = d.q_posterior_mean_variance(
        torch.tensor([[x0]]), torch.tensor([[xt]]), torch.tensor([k])
    )
    assert mean.item() == pytest.approx(post_mean, rel=1e-5, abs=1e-6)
    assert var.item() == pytest.approx(post_var, rel=1e-5)
    assert logvar.item() == pytest.approx(math.log(post_var), abs=1e-5)
    if k in (10, 250):  # and by brute-force numerical integration of the unnormalised posterior on a grid
        sd = math.sqrt(post_var)
        grid = np.linspace(post_mean - 12 * sd, post_mean + 12 * sd, 200001)
        logp = -0.5 * (grid - m0) ** 2 / v0 - 0.5 * (xt - math.sqrt(a) * grid) ** 2 / b
        w = np.exp(logp - logp.max())
        w /= w.sum()
        gm = (w * grid).sum()
        assert mean.item() == pytest.approx(gm, abs=1e-5)
        assert var.item() == pytest.approx((w * (grid - gm) ** 2).sum(), rel=1e-4)


def test_q_sample_and_q_mean_variance():
    d = GaussianDiffusion.from_config("linear", 1000)
    s = _schedule64(d.betas_np)
    x0 = torch.rand(3, 2, 4, 4, dtype=torch.float64) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 500, 999])
    ab = torch.tensor(s["abar"][t.numpy()]).view(3, 1, 1, 1)  # float64
    xt = d.q_sample(x0.float(), t, noise.float())
    assert torch.allclose(xt.double(), ab.sqrt() * x0 + (1 - ab).sqrt() * noise, atol=1e-6)
    mean, var, logvar = d.q_mean_variance(x0.float(), t)
    assert torch.allclose(mean.double(), ab.sqrt() * x0, atol=1e-6)
    assert torch.allclose(var.double(), (1 - ab).expand_as(x0), rtol=1e-6)
    assert torch.allclose(logvar.double(), torch.log(1 - ab).expand_as(x0), rtol=1e-6)


# ----------------------------------------------------------------------------- KL and decoder
def test_normal_kl():
    torch.manual_seed(0)
    m1, m2 = torch.randn(1000, dtype=torch.float64), torch.randn(1000, dtype=torch.float64)
    lv1, lv2 = torch.randn(1000, dtype=torch.float64) * 2, torch.randn(1000, dtype=torch.float64) * 2
    assert torch.allclose(normal_kl(m1, lv1, m1, lv1), torch.zeros(1000, dtype=torch.float64), atol=1e-12)
    kl = normal_kl(m1, lv1, m2, lv2)
    assert (kl >= 0).all()
    ref = kl_divergence(Normal(m1, (0.5 * lv1).exp()), Normal(m2, (0.5 * lv2).exp()))
    assert torch.allclose(kl, ref, rtol=1e-10, atol=1e-12)
    # scalar log-variances broadcast
    assert torch.allclose(normal_kl(m1, 0.0, m2, 0.0), 0.5 * (m1 - m2) ** 2)


def test_tanh_cdf_close_to_erf():
    z = torch.linspace(-8, 8, 20001, dtype=torch.float64)
    assert (approx_standard_normal_cdf(z) - 0.5 * (1 + torch.erf(z / math.sqrt(2)))).abs().max() < 2e-4


@pytest.mark.parametrize("mean", [-1.2, -0.9961, -0.3, 0.0, 0.41, 1.0])
@pytest.mark.parametrize("sigma", [0.00738, 0.05, 0.7])
def test_decoder_bins_sum_to_one(mean, sigma):
    x = torch.arange(256, dtype=torch.float64) / 127.5 - 1.0
    logp = discretized_gaussian_log_likelihood(
        x, means=torch.full_like(x, mean), log_scales=torch.full_like(x, math.log(sigma))
    )
    p = logp.exp()
    assert (logp <= 1e-9).all()
    assert p.sum().item() == pytest.approx(1.0, abs=1e-3)
    # among the interior bins, the one containing the mean is the most probable
    if abs(mean) < 1 - 1 / 255:
        assert abs(x[1:-1][p[1:-1].argmax()].item() - mean) <= 1 / 255 + 1e-9


def test_decoder_edges_are_open_ended():
    x = torch.tensor([-1.0, 1.0])
    logp = discretized_gaussian_log_likelihood(x, means=torch.tensor([-3.0, 3.0]), log_scales=torch.zeros(2))
    # P(X < -1 + 1/255) for X ~ N(-3, 1): the whole lower tail belongs to the edge bin
    expected = math.log(0.5 * (1 + math.erf((2 + 1 / 255) / math.sqrt(2))))
    assert torch.allclose(logp, torch.full((2,), expected), atol=3e-4)
    # an interior pixel far from the mean gets the 1e-12 floor
    far = discretized_gaussian_log_likelihood(
        torch.tensor([0.0]), means=torch.tensor([0.9]), log_scales=torch.tensor([math.log(0.0074)])
    )
    assert far.item() == pytest.approx(math.log(1e-12), rel=1e-6)


# ----------------------------------------------------------------------------- parameterisations
def test_eps_x0_mu_round_trip_and_equivalent_means():
    torch.manual_seed(1)
    d = GaussianDiffusion.from_config("linear", 1000)
    x0 = torch.rand(6, 3, 4, 4) * 2 - 1
    eps = torch.randn_like(x0)
    t = torch.tensor([0, 1, 10, 300, 700, 999])
    xt = d.q_sample(x0, t, eps)
    assert torch.allclose(d.predict_xstart_from_eps(xt, t, eps), x0, atol=2e-3)
    assert torch.allclose(d.predict_eps_from_xstart(xt, t, x0), eps, atol=2e-3)
    mu, _, _ = d.q_posterior_mean_variance(x0, xt, t)
    assert torch.allclose(d.predict_xstart_from_xprev(xt, t, mu), x0, atol=2e-3)

    # the same prediction expressed as eps, x0 or mu gives the same p_theta mean
    eps_hat = eps + 0.3 * torch.randn_like(eps)
    x0_hat = d.predict_xstart_from_eps(xt, t, eps_hat)
    mu_hat, _, _ = d.q_posterior_mean_variance(x0_hat, xt, t)
    outs = {}
    for mt, out in [("eps", eps_hat), ("x0", x0_hat), ("mu", mu_hat)]:
        dm = GaussianDiffusion(d.betas_np, mean_type=mt)
        outs[mt] = dm.p_mean_variance(None, xt, t, clip_denoised=False, model_output=out)
    for mt in ("x0", "mu"):
        assert torch.allclose(outs[mt]["mean"], outs["eps"]["mean"], atol=2e-4)
        assert torch.allclose(outs[mt]["pred_xstart"], outs["eps"]["pred_xstart"], atol=5e-2)
    # Paper Eq. 11: mu = (x_t - beta/sqrt(1-abar) eps) / sqrt(alpha)
    s = _schedule64(d.betas_np)
    b = torch.tensor(s["betas"][t.numpy()], dtype=torch.float32).view(-1, 1, 1, 1)
    ab = torch.tensor(s["abar"][t.numpy()], dtype=torch.float32).view(-1, 1, 1, 1)
    eq11 = (xt - b / (1 - ab).sqrt() * eps_hat) / (1 - b).sqrt()
    assert torch.allclose(outs["eps"]["mean"], eq11, atol=1e-4)


def test_clip_denoised_clamps_pred_xstart():
    d = GaussianDiffusion.from_config("linear", 100, mean_type="x0")
    xt = torch.zeros(2, 1, 2, 2)
    out = d.p_mean_variance(lambda x, t: torch.full_like(x, 3.0), xt, torch.tensor([5, 50]))
    assert out["pred_xstart"].max().item() == 1.0
    out = d.p_mean_variance(
        lambda x, t: torch.full_like(x, 3.0), xt, torch.tensor([5, 50]), clip_denoised=False
    )
    assert out["pred_xstart"].max().item() == 3.0


# ----------------------------------------------------------------------------- variances
def test_fixed_variances():
    betas = get_beta_schedule("linear", 1000)
    s = _schedule64(betas)
    tilde = betas * (1 - s["abar_prev"]) / (1 - s["abar"])
    x = torch.zeros(3, 1, 2, 2)
    t = torch.tensor([0, 1, 500])
    f = lambda x, t: torch.zeros_like(x)  # noqa: E731
    large = GaussianDiffusion(betas, var_type="fixed_large").p_mean_variance(f, x, t)
    small = GaussianDiffusion(betas, var_type=VarType.FIXED_SMALL).p_mean_variance(f, x, t)
    exp_large = np.array([tilde[1], betas[1], betas[500]])
    exp_small_log = np.log([tilde[1], tilde[1], tilde[500]])
    assert np.allclose(large["variance"][:, 0, 0, 0].numpy(), exp_large, rtol=1e-6)
    assert np.allclose(large["log_variance"][:, 0, 0, 0].numpy(), np.log(exp_large), rtol=1e-6)
    assert np.allclose(small["variance"][:, 0, 0, 0].numpy(), [0.0, tilde[1], tilde[500]], rtol=1e-6)
    assert np.allclose(small["log_variance"][:, 0, 0, 0].numpy(), exp_small_log, rtol=1e-6)
    assert large["variance"].shape == x.shape


def test_learned_and_learned_range_variances():
    betas = get_beta_schedule("linear", 1000)
    s = _schedule64(betas)
    tilde = betas * (1 - s["abar_prev"]) / (1 - s["abar"])
    log_tilde_clipped = np.log(np.concatenate([[tilde[1]], tilde[1:]]))
    x = torch.zeros(4, 2, 3, 3)
    t = torch.tensor([0, 1, 100, 999])
    v = torch.tensor([-1.0, 1.0, 0.0, 0.5]).view(4, 1, 1, 1).expand(4, 2, 3, 3)
    out = torch.cat([torch.zeros_like(x), v], dim=1)

    d = GaussianDiffusion(betas, var_type="learned", loss_type="kl")
    r = d.p_mean_variance(None, x, t, model_output=out)
    assert torch.equal(r["log_variance"], v) and torch.allclose(r["variance"], v.exp())
    assert r["mean"].shape == x.shape

    d = GaussianDiffusion(betas, var_type="learned_range", loss_type="hybrid")
    r = d.p_mean_variance(None, x, t, model_output=out)
    frac = (np.array([-1.0, 1.0, 0.0, 0.5]) + 1) / 2
    tn = t.numpy()
    expected = frac * np.log(betas[tn]) + (1 - frac) * log_tilde_clipped[tn]
    assert np.allclose(r["log_variance"][:, :, 0, 0].numpy(), expected[:, None], rtol=1e-5)
    assert torch.allclose(r["variance"], r["log_variance"].exp())
    with pytest.raises(ValueError, match="channels|shape"):
        d.p_mean_variance(None, x, t, model_output=torch.zeros_like(x))


def test_objective_validation_and_string_args():
    with pytest.raises(ValueError):
        GaussianDiffusion.from_config(var_type="learned", loss_type="mse")
    with pytest.raises(ValueError):
        GaussianDiffusion.from_config(var_type="fixed_small", loss_type="hybrid")
    d = GaussianDiffusion.from_config("cosine", 50, mean_type="mu", var_type="fixed_small", loss_type="kl")
    assert d.mean_type is MeanType.MU and d.var_type is VarType.FIXED_SMALL and d.loss_type is LossType.KL
    assert d.num_timesteps == 50


# ----------------------------------------------------------------------------- bound terms
def test_exact_posterior_mean_model_has_zero_kl():
    torch.manual_seed(2)
    betas = get_beta_schedule("linear", 1000)
    x0 = (torch.randint(0, 256, (5, 3, 4, 4)) / 127.5 - 1).float()
    t = torch.tensor([1, 2, 50, 500, 999])
    xt_ = GaussianDiffusion(betas).q_sample(x0, t)
    for var_type, zero in [("fixed_small", True), ("fixed_large", False)]:
        d = GaussianDiffusion(betas, mean_type="mu", var_type=var_type, loss_type="kl")

        def model(x, tt, d=d):
            return d.q_posterior_mean_variance(x0, x, tt)[0]

        vb = d.vb_terms_bpd(model, x0, xt_, t, clip_denoised=False)["output"]
        if zero:
            assert vb.abs().max().item() < 1e-5
        else:  # the variance mismatch beta vs beta-tilde costs something at small t (beta ~ beta-tilde later)
            assert (vb[:3] > 1e-4).all() and (vb >= 0).all()


@pytest.mark.parametrize("t_code", [0, 1, 7, 60, 99])
def test_kl_loss_is_weighted_eps_mse(t_code):
    """loss_type=kl with eps / fixed_large is Paper Eq. 12 (+ the variance-mismatch constant) in bits/dim."""
    torch.manual_seed(3)
    T = 100
    betas = get_beta_schedule("linear", T)
    s = _schedule64(betas)
    d = GaussianDiffusion(betas, mean_type="eps", var_type="fixed_large", loss_type="kl")
    N = 4
    x0 = (torch.randint(0, 256, (N, 3, 4, 4)) / 127.5 - 1).to(torch.float64)
    noise = torch.randn_like(x0)

    def model(x, tt):
        return (0.5 * x + 0.1).float()

    t = torch.full((N,), t_code)
    terms = d.training_losses(model, x0.float(), t, noise=noise.float())
    assert set(terms) >= {"loss", "vb"} and terms["loss"].shape == (N,)
    assert torch.equal(terms["loss"], terms["vb"])

    b, a, ab = s["betas"][t_code], s["alphas"][t_code], s["abar"][t_code]
    xt = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * noise
    eps_hat = 0.5 * xt + 0.1
    if t_code > 0:
        tilde = b * (1 - s["abar_prev"][t_code]) / (1 - ab)
        sigma2 = b  # fixed_large for t > 0
        w = b**2 / (2 * sigma2 * a * (1 - ab))
        const = 0.5 * (-1 + math.log(sigma2) - math.log(tilde) + tilde / sigma2)
        expected = (const + w * ((noise - eps_hat) ** 2).mean(dim=(1, 2, 3))) / LN2
    else:
        tilde1 = betas[1] * (1 - s["abar"][0]) / (1 - s["abar"][1])
        mean = (xt - b / math.sqrt(1 - ab) * eps_hat) / math.sqrt(a)
        z = lambda v: (v - mean) / math.sqrt(tilde1)  # noqa: E731
        cdf = lambda u: 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u**3)))  # noqa: E731
        p = torch.where(
            x0 < -0.999,
            cdf(z(x0 + 1 / 255)),
            torch.where(x0 > 0.999, 1 - cdf(z(x0 - 1 / 255)), cdf(z(x0 + 1 / 255)) - cdf(z(x0 - 1 / 255))),
        )
        expected = -torch.log(p.clamp(min=1e-12)).mean(dim=(1, 2, 3)) / LN2
    assert torch.allclose(terms["loss"].double(), expected, rtol=2e-3, atol=1e-5)


@pytest.mark.parametrize("var_type", ["fixed_large", "fixed_small"])
def test_eq12_weights_are_the_losses_weights(var_type):
    """Paper Eq. 12: for an eps-network with fixed variance sigma_t^2, L_{t-1} = const + beta_t^2 / (2 sigma_t^2
    alpha_t (1 - abar_t)) ||eps - eps_hat||^2. The implementation's kl loss (bits/dim) is read at eps errors 0, 1 and
    2 (the same shift on every pixel): it is affine in the squared error with exactly that slope (times 1/ln 2),
    float64 here. The closed form itself also matches the reference values this test has carried for the linear
    T=1000 schedule (rtol 0.06: a coarse second check of the formula)."""
    betas = get_beta_schedule("linear", 1000)
    s = _schedule64(betas)
    tilde = betas * (1 - s["abar_prev"]) / (1 - s["abar"])
    sigma2 = betas if var_type == "fixed_large" else tilde
    ks = np.array([1, 10, 100, 500, 999])
    w = betas[ks] ** 2 / (2 * sigma2[ks] * s["alphas"][ks] * (1 - s["abar"][ks]))
    reference = {"fixed_large": [0.273, 0.068, 0.010, 0.0055, 0.0102], "fixed_small": [0.600, 0.079, 0.010, 0.0055,
                                                                                     0.0102]}[var_type]  # fmt: skip
    assert np.allclose(w, reference, rtol=0.06)

    d = GaussianDiffusion(betas, mean_type="eps", var_type=var_type, loss_type="kl")
    torch.manual_seed(0)
    x0 = torch.rand(len(ks), 3, 4, 4) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor(ks)

    def loss(err: float) -> np.ndarray:
        return d.training_losses(lambda x, tt: noise + err, x0, t, noise=noise)["loss"].double().numpy()

    l0, l1, l2 = loss(0.0), loss(1.0), loss(2.0)
    np.testing.assert_allclose((l1 - l0) * LN2, w, rtol=2e-3)
    np.testing.assert_allclose(l2 - l0, 4 * (l1 - l0), rtol=2e-3)  # affine in the squared error


@pytest.mark.parametrize("mean_type", ["eps", "x0", "mu"])
def test_mse_loss_targets(mean_type):
    torch.manual_seed(4)
    d = GaussianDiffusion.from_config("linear", 100, mean_type=mean_type, var_type="fixed_small")
    x0 = torch.rand(3, 2, 4, 4) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 40, 99])
    xt = d.q_sample(x0, t, noise)
    target = {"eps": noise, "x0": x0, "mu": d.q_posterior_mean_variance(x0, xt, t)[0]}[mean_type]
    seen = []

    def model(x, tt):
        seen.append(tt.clone())
        return target + 0.1 * x  # error 0.1 * x_t

    terms = d.training_losses(model, x0, t, noise=noise)
    assert set(terms) == {"loss", "mse"}
    assert torch.allclose(terms["loss"], mean_flat((0.1 * xt) ** 2), rtol=1e-4)
    assert torch.equal(seen[0], t)


def test_hybrid_vb_trains_only_variance_channels():
    torch.manual_seed(5)
    T = 200
    d = GaussianDiffusion.from_config("linear", T, var_type="learned_range", loss_type="hybrid")
    a = torch.tensor(0.3, requires_grad=True)
    b = torch.tensor(0.2, requires_grad=True)
    x0 = torch.rand(4, 1, 4, 4) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 3, 100, 199])

    def model(x, tt):
        return torch.cat([a * x, b * torch.ones_like(x)], dim=1)

    terms = d.training_losses(model, x0, t, noise=noise)
    assert set(terms) == {"loss", "mse", "vb"}
    assert torch.allclose(terms["loss"], terms["mse"] + terms["vb"])
    terms["vb"].sum().backward()
    assert a.grad is None or a.grad.item() == 0.0
    assert b.grad.abs().item() > 0
    # vb is the KL-loss term rescaled by T/1000
    dk = GaussianDiffusion.from_config("linear", T, var_type="learned_range", loss_type="kl")
    with torch.no_grad():
        vb_kl = dk.training_losses(model, x0, t, noise=noise)["vb"]
    assert torch.allclose(terms["vb"].detach(), vb_kl * T / 1000, rtol=1e-5)
    # with loss_type=kl the mean channels do get a gradient
    a.grad = None
    dk.training_losses(model, x0, t, noise=noise)["loss"].sum().backward()
    assert a.grad.abs().item() > 0


# ----------------------------------------------------------------------------- bits/dim
def test_prior_bpd_reference_numbers():
    d = GaussianDiffusion.from_config("linear", 1000)
    p = d.prior_bpd(torch.stack([torch.zeros(3, 2, 2), torch.ones(3, 2, 2)]))
    assert p[0].item() == pytest.approx(5.9e-10, rel=0.05)
    assert p[1].item() == pytest.approx(2.9e-5, rel=0.05)


def test_bpd_by_hand_tiny_case():
    """T = 3, one 1x1x2 image, explicit eps-model: recompute prior + KLs + decoder independently."""
    betas = np.array([0.05, 0.3, 0.8])
    s = _schedule64(betas)
    T = 3
    d = GaussianDiffusion(betas, mean_type="eps", var_type="fixed_large", loss_type="kl")
    x0 = torch.tensor([[[[-1.0, 52 / 127.5 - 1]]]])  # [1, 1, 1, 2]
    gen = torch.Generator().manual_seed(0)
    noises = [torch.randn(1, 1, 1, 2, generator=gen) for _ in range(T)]
    it = iter(noises)

    def model(x, tt):
        return 0.5 * x - 0.2

    res = d.calc_bpd_loop(model, x0, clip_denoised=False, noise_fn=lambda shape: next(it))

    x = x0.double().flatten()
    tilde = betas * (1 - s["abar_prev"]) / (1 - s["abar"])
    # prior
    ab_T = s["abar"][-1]
    prior = kl_divergence(Normal(math.sqrt(ab_T) * x, math.sqrt(1 - ab_T)), Normal(0.0, 1.0)).mean() / LN2
    terms = {}
    for j, k in enumerate(range(T - 1, -1, -1)):  # loop order of calc_bpd_loop: t = T-1 .. 0
        eps = noises[j].double().flatten()
        b, a, ab = betas[k], s["alphas"][k], s["abar"][k]
        xt = math.sqrt(ab) * x + math.sqrt(1 - ab) * eps
        eps_hat = 0.5 * xt - 0.2
        model_mean = (xt - b / math.sqrt(1 - ab) * eps_hat) / math.sqrt(a)
        if k > 0:
            m0, v0 = math.sqrt(s["abar_prev"][k]) * x, 1 - s["abar_prev"][k]
            pv = 1 / (1 / v0 + a / b)
            pm = pv * (m0 / v0 + math.sqrt(a) * xt / b)
            terms[k] = kl_divergence(Normal(pm, math.sqrt(pv)), Normal(model_mean, math.sqrt(b))).mean() / LN2
        else:
            sd = math.sqrt(tilde[1])  # fixed_large at t = 0 uses beta-tilde_1
            # pixel 0 is -1: open bin (-inf, -1 + 1/255]; pixel 1 interior: exact erf CDF
            # (the code's tanh approximation differs by < 2e-4 in probability)
            n = Normal(model_mean, sd)
            p0 = n.cdf(x[0] + 1 / 255)[0]
            p1 = n.cdf(x[1] + 1 / 255)[1] - n.cdf(x[1] - 1 / 255)[1]
            terms[0] = -(torch.log(p0) + torch.log(p1)) / 2 / LN2
    assert res["vb"].shape == (1, T) and res["prior_bpd"].shape == (1,)
    for k in range(T):
        assert res["vb"][0, k].item() == pytest.approx(terms[k].item(), rel=2e-3, abs=1e-5), k
    assert res["prior_bpd"][0].item() == pytest.approx(prior.item(), rel=1e-6)
    total = prior + sum(terms.values())
    assert res["total_bpd"][0].item() == pytest.approx(total.item(), rel=2e-3)


def test_calc_bpd_loop_one_forward_per_t_and_t_batch():
    from ddpm.core.diffusion import SeededNoise

    T = 10
    d = GaussianDiffusion.from_config("linear", T, loss_type="mse")
    x0 = (torch.randint(0, 256, (3, 1, 4, 4)) / 127.5 - 1).float()
    calls, sizes, progress = [], [], []

    def model(x, tt):
        calls.append(tt.clone())
        sizes.append(x.shape[0])
        return 0.9 * x

    r1 = d.calc_bpd_loop(model, x0, noise_fn=SeededNoise([1, 2, 3]), progress=lambda i, n: progress.append(i))
    assert len(calls) == T and all(n == 3 for n in sizes) and progress[-1] == T
    assert [c[0].item() for c in calls] == list(range(T - 1, -1, -1))
    for key, shape in [("vb", (3, T)), ("xstart_mse", (3, T)), ("mse", (3, T)), ("total_bpd", (3,))]:
        assert res_shape(r1[key]) == shape
    assert torch.allclose(r1["total_bpd"], r1["prior_bpd"] + r1["vb"].sum(1))
    calls.clear()
    sizes.clear()
    r4 = d.calc_bpd_loop(model, x0, noise_fn=SeededNoise([1, 2, 3]), t_batch=4)
    assert len(calls) == 3 and sizes == [12, 12, 6]
    for key in ("vb", "xstart_mse", "mse", "total_bpd"):
        assert torch.allclose(r1[key], r4[key], atol=1e-6), key


def res_shape(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(x.shape)


# ----------------------------------------------------------------------------- contracts and edges
# Written from the mutation run (bench/results/mutation_diffusion.md): each test names the behaviour a surviving
# mutant changed, and checks it against a closed form, the documented contract or a second call path.
@pytest.mark.parametrize("betas,match", [
    (np.full((2, 5), 0.1), r"betas must be a non-empty 1-D array, got shape \(2, 5\)"),
    (np.array([]), r"betas must be a non-empty 1-D array, got shape \(0,\)"),
    (np.array([0.1, 0.0, 0.2]), r"^betas must lie in \(0, 1\) \(beta = 1 makes abar 0"),
    (np.array([0.1, 1.0]), r"^betas must lie in \(0, 1\)"),
    (np.array([0.1, 1.5]), r"^betas must lie in \(0, 1\)"),
])
def test_bad_betas_are_refused_with_the_reason(betas, match):
    with pytest.raises(ValueError, match=match):
        GaussianDiffusion(betas)


def test_bad_timestep_map_and_schedule_length_name_the_shape():
    with pytest.raises(ValueError, match=r"^timestep_map must have shape \(4,\), got \(3,\)"):
        GaussianDiffusion(np.full(4, 0.1), timestep_map=[0, 1, 2])
    for T in (0, 2.5, -3):
        with pytest.raises(ValueError, match=rf"^num_timesteps must be a positive integer, got {T!r}"):
            get_beta_schedule("linear", T)


def test_float32_betas_give_float64_schedules_and_no_checkpoint_state():
    """The schedule is computed in float64 whatever the input dtype (float32 betas would lose the ~1e-9 terms
    of the bound), its buffers are not saved in checkpoints (a model loads with any T), and alphas_cumprod_prev
    is [1, abar_0 .. abar_{T-2}]."""
    b32 = get_beta_schedule("linear", 50).astype(np.float32)
    d = GaussianDiffusion(b32)
    s = _schedule64(b32.astype(np.float64))
    assert d.betas_np.dtype == np.float64 and d.alphas_cumprod_np.dtype == np.float64
    np.testing.assert_array_equal(d.alphas_cumprod_np, s["abar"])
    np.testing.assert_array_equal(d.alphas_cumprod_prev_np, s["abar_prev"])
    assert d.state_dict() == {}
    assert d.timestep_map.dtype == torch.long and torch.equal(d.timestep_map, torch.arange(50))


def test_two_step_chain_uses_its_own_posterior_variance_at_t0():
    """fixed_small's log variance at t = 0 is log beta-tilde_1 (improved-diffusion's clipping), also for T = 2."""
    betas = np.array([0.1, 0.3])
    s = _schedule64(betas)
    tilde1 = betas[1] * (1 - s["abar"][0]) / (1 - s["abar"][1])
    d = GaussianDiffusion(betas, var_type="fixed_small")
    x = torch.zeros(1, 1, 2, 2)
    lv = d.p_mean_variance(lambda x, t: torch.zeros_like(x), x, torch.tensor([0]))["log_variance"]
    assert float(lv.flatten()[0]) == pytest.approx(math.log(tilde1), rel=1e-6)


def test_from_config_defaults_are_the_papers():
    d = GaussianDiffusion.from_config()
    assert d.num_timesteps == 1000 and np.array_equal(d.betas_np, get_beta_schedule("linear", 1000))


def test_an_int_or_0_dim_t_means_that_t_for_every_example():
    d = GaussianDiffusion.from_config("linear", 100)
    x0 = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    noise = torch.randn_like(x0)
    ref = d.q_sample(x0, torch.full((3,), 40), noise)
    assert torch.equal(d.q_sample(x0, 40, noise), ref) and torch.equal(d.q_sample(x0, torch.tensor(40), noise), ref)
    ab = float(d.alphas_cumprod_np[40])
    torch.testing.assert_close(ref, math.sqrt(ab) * x0 + math.sqrt(1 - ab) * noise)


def test_p_mean_variance_and_vb_terms_return_their_documented_parts():
    """p_mean_variance returns the raw network output beside the mean / variance; vb_terms_bpd returns the mean and
    log variance of the same p(x_{t-1} | x_t), clips x0 by default (the official default), and its errors name
    what is missing or the expected channels."""
    d = GaussianDiffusion.from_config("linear", 20, "x0", "fixed_large", "kl")
    x0 = torch.rand(2, 1, 4, 4) * 2 - 1
    xt = d.q_sample(x0, torch.tensor([5, 5]), torch.randn_like(x0))

    def far(x, t):  # predicts x0 far outside [-1, 1]: clipping changes the mean
        return 3 * torch.ones_like(x)

    out = d.p_mean_variance(far, xt, torch.tensor([5, 5]))
    assert torch.equal(out["model_output"], 3 * torch.ones_like(xt))
    vb = d.vb_terms_bpd(far, x0, xt, torch.tensor([5, 5]))
    torch.testing.assert_close(vb["mean"], out["mean"])
    torch.testing.assert_close(vb["log_variance"], out["log_variance"])
    unclipped = d.vb_terms_bpd(far, x0, xt, torch.tensor([5, 5]), clip_denoised=False)
    assert (vb["output"] - unclipped["output"]).abs().max() > 1e-3
    assert (vb["mean"] - unclipped["mean"]).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"^p_mean_variance needs model_fn or model_output$"):
        d.p_mean_variance(None, xt, torch.tensor([5, 5]))
    learned = GaussianDiffusion.from_config("linear", 20, "eps", "learned_range", "hybrid")
    with pytest.raises(ValueError, match=r"\[N=2, 2, \.\.\.\] for var_type=learned_range"):
        learned.p_mean_variance(lambda x, t: x, xt, torch.tensor([5, 5]))
    with pytest.raises(ValueError, match=r"^model output has 1 channels, expected 2 for var_type=learned_range"):
        learned.training_losses(lambda x, t: x, x0, torch.tensor([5, 5]))


def test_training_losses_draw_their_noise_from_the_global_rng_and_report_the_mse_term():
    """Without ``noise`` the loss uses torch.randn_like(x_0) from the global RNG (the training step seeds it per
    batch); hybrid reports its MSE part as ``mse`` (loss = mse + vb)."""
    d = GaussianDiffusion.from_config("linear", 20, "eps", "learned_range", "hybrid")
    x0 = torch.rand(3, 1, 4, 4) * 2 - 1
    t = torch.tensor([0, 7, 19])

    def model(x, tt):
        return torch.cat([0.5 * x, torch.zeros_like(x)], dim=1)

    torch.manual_seed(11)
    terms = d.training_losses(model, x0, t)
    torch.manual_seed(11)
    noise = torch.randn_like(x0)
    again = d.training_losses(model, x0, t, noise=noise)
    assert torch.equal(terms["loss"], again["loss"])
    xt = d.q_sample(x0, t, noise)
    torch.testing.assert_close(terms["mse"], mean_flat((noise - 0.5 * xt) ** 2))
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"])
    # the true bound (kl) reports the same eps MSE beside it, as a diagnostic (train/mse)
    kl = GaussianDiffusion.from_config("linear", 20, "eps", "fixed_large", "kl")
    kl_terms = kl.training_losses(lambda x, tt: 0.5 * x, x0, t, noise=noise)
    torch.testing.assert_close(kl_terms["mse"], mean_flat((noise - 0.5 * xt) ** 2))
    assert torch.equal(kl_terms["loss"], kl_terms["vb"])


def test_prior_bpd_keeps_the_input_dtype():
    d = GaussianDiffusion.from_config("linear", 1000)
    x = torch.rand(2, 3, 4, 4) * 2 - 1
    assert d.prior_bpd(x).dtype == torch.float32 and d.prior_bpd(x.double()).dtype == torch.float64


def test_mean_flat_reduces_every_dim_but_the_batch():
    x = torch.arange(24.0).view(2, 3, 4)
    torch.testing.assert_close(mean_flat(x), torch.tensor([5.5, 17.5]))
    torch.testing.assert_close(mean_flat(x.view(2, 12)), torch.tensor([5.5, 17.5]))
    v = torch.tensor([1.0, 2.0])
    assert torch.equal(mean_flat(v), v)  # already one value per example


def test_normal_kl_takes_python_scalars_exactly_and_needs_one_tensor():
    """Scalars are taken in the tensor's dtype: float64 KL with scalar 0.1 / 0.3 matches the closed form to 1e-12
    (a float32 scalar would be off by ~1e-9)."""
    m1 = torch.tensor([0.25, -0.5], dtype=torch.float64)
    lv1 = torch.tensor([0.2, -0.1], dtype=torch.float64)
    kl = normal_kl(m1, lv1, 0.1, 0.3)
    expected = [0.5 * (-1 + 0.3 - a + math.exp(a - 0.3) + (m - 0.1) ** 2 * math.exp(-0.3))
                for m, a in ((0.25, 0.2), (-0.5, -0.1))]  # fmt: skip
    assert kl.dtype == torch.float64
    np.testing.assert_allclose(kl.numpy(), expected, rtol=1e-13, atol=0)
    with pytest.raises(TypeError, match=r"^normal_kl needs at least one tensor argument$"):
        normal_kl(0.0, 0.0, 1.0, 1.0)


def test_schedule_name_recognises_exactly_the_named_schedules():
    for name in ("linear", "cosine", "quad"):
        assert schedule_name(get_beta_schedule(name, 37)) == name
        assert schedule_name(list(get_beta_schedule(name, 1))) in ("linear", "cosine", "quad")
    nudged = get_beta_schedule("linear", 37).copy()
    nudged[3] *= 1 + 1e-12
    assert schedule_name(nudged) is None
    assert schedule_name(np.full((2, 3), 0.1)) is None and schedule_name([]) is None
    assert schedule_name(get_beta_schedule("cosine", 1)) == schedule_name(get_beta_schedule("cosine", 1).tolist())


@pytest.mark.parametrize("objective,match", [
    (("eps", "learned_range", "mse"), r"loss_type=mse cannot train var_type=learned_range .* Valid: loss_type=mse "
                                      r"with var_type in \['fixed_large', 'fixed_small'\], or loss_type in "
                                      r"\['kl', 'hybrid'\] with var_type in \['learned', 'learned_range'\]\."),
    (("eps", "fixed_small", "hybrid"), r"^objective: loss_type=hybrid needs a learned variance, got "
                                       r"var_type=fixed_small\. Valid var_type for hybrid: \['learned', "
                                       r"'learned_range'\]"),
])
def test_invalid_objectives_list_the_valid_combinations(objective, match):
    with pytest.raises(ValueError, match=match):
        GaussianDiffusion.from_config("linear", 10, *objective)
