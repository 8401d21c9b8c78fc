"""Samplers, respacing and seeded noise, checked on 1-D Gaussian data with its exact denoiser (CPU, fast).

For data x_0 ~ N(m, s^2) the optimal eps-predictor is linear in x_t, so every sampler step is an affine map
plus Gaussian noise, and the exact distribution of its output follows from a scalar float64 recursion.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpm.core.diffusion import (
    SAMPLERS,
    GaussianDiffusion,
    SeededNoise,
    dpm_solver,
    dpm_solver_timesteps,
    final_sample,
    respace,
    space_timesteps,
)
from ddpm.core.seeds import image_seed, image_seeds

M, S = 0.3, 0.2  # data distribution N(M, S^2): small enough that clipping to [-1, 1] never matters
N = 4000


pytestmark = pytest.mark.usefixtures("one_thread")


def ddim_sample(diffusion, model_fn, shape, *, eta=0.0, **kw):
    """DDIM on every index of ``diffusion`` (a respaced one: its kept steps)."""
    return SAMPLERS["ddim"].sample(diffusion, model_fn, shape, steps=diffusion.num_timesteps, eta=eta, **kw)


def gaussian_eps_model(original: GaussianDiffusion):
    """E[eps | x_t] for x_0 ~ N(M, S^2), indexed by the ORIGINAL timestep (what timestep_map passes)."""
    abar = torch.tensor(original.alphas_cumprod_np)

    def model(x, t):
        ab = abar[t].view(-1, *([1] * (x.ndim - 1)))
        return (torch.sqrt(1 - ab) / (ab * S**2 + 1 - ab) * (x - torch.sqrt(ab) * M)).to(x.dtype)

    return model


def _affine_eps(ab: float) -> tuple[float, float]:
    """eps_hat = g * (x - sqrt(ab) M); returns (k0, c0) with x0_hat = k0 x + c0."""
    g = math.sqrt(1 - ab) / (ab * S**2 + 1 - ab)
    return (1 - math.sqrt(1 - ab) * g) / math.sqrt(ab), math.sqrt(1 - ab) * g * M


def exact_ancestral_moments(betas: np.ndarray, var_type: str, t_start: int, mean0: float, var0: float):
    """Mean/variance after ancestral sampling from x ~ N(mean0, var0) at code index t_start down to 0."""
    abar = np.cumprod(1 - betas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    tilde = betas * (1 - abar_prev) / (1 - abar)
    E, V = mean0, var0
    for k in range(t_start, -1, -1):
        k0, c0 = _affine_eps(abar[k])
        coef1 = betas[k] * math.sqrt(abar_prev[k]) / (1 - abar[k])
        coef2 = (1 - abar_prev[k]) * math.sqrt(1 - betas[k]) / (1 - abar[k])
        A, B = coef1 * k0 + coef2, coef1 * c0
        sigma2 = 0.0 if k == 0 else (betas[k] if var_type == "fixed_large" else tilde[k])
        E, V = A * E + B, A * A * V + sigma2
    return E, V


@pytest.mark.parametrize("var_type", ["fixed_large", "fixed_small"])
def test_ancestral_recovers_gaussian_data(var_type):
    d = GaussianDiffusion.from_config("linear", 100, var_type=var_type)
    x = SAMPLERS["ancestral"].sample(
        d, gaussian_eps_model(d), (N, 1), generator=torch.Generator().manual_seed(0), clip_denoised=False
    )
    assert x.shape == (N, 1)
    mean, std = x.mean().item(), x.std().item()
    assert mean == pytest.approx(M, abs=0.03) and std == pytest.approx(S, abs=0.05)
    E, V = exact_ancestral_moments(d.betas_np, var_type, 99, 0.0, 1.0)
    assert mean == pytest.approx(E, abs=0.01) and std == pytest.approx(math.sqrt(V), abs=0.01)


def test_ancestral_from_intermediate_t_and_progressive():
    d = GaussianDiffusion.from_config("linear", 100, var_type="fixed_small")
    g = torch.Generator().manual_seed(1)
    x0 = M + S * torch.randn(N, 1, generator=g)
    t_start = 49
    xt = d.q_sample(x0, torch.full((N,), t_start), torch.randn(N, 1, generator=g))
    steps, prog = [], []
    for out in SAMPLERS["ancestral"].run(
        d,
        gaussian_eps_model(d),
        (N, 1),
        generator=torch.Generator().manual_seed(2),
        clip_denoised=False,
        x_start_t=xt,
        t_start=t_start,
        progress=lambda i, n: prog.append((i, n)),
    ):
        steps.append(out)
    assert [s["t"] for s in steps] == list(range(t_start, -1, -1))
    assert prog[-1] == (t_start + 1, t_start + 1)
    assert set(steps[0]) >= {"sample", "pred_xstart"}
    x = steps[-1]["sample"]
    ab = d.alphas_cumprod_np[t_start]
    E, V = exact_ancestral_moments(d.betas_np, "fixed_small", t_start, math.sqrt(ab) * M, ab * S**2 + 1 - ab)
    assert x.mean().item() == pytest.approx(E, abs=0.01)
    assert x.std().item() == pytest.approx(math.sqrt(V), abs=0.01)
    # .sample returns the last progressive sample
    x2 = SAMPLERS["ancestral"].sample(
        d,
        gaussian_eps_model(d),
        (N, 1),
        generator=torch.Generator().manual_seed(2),
        clip_denoised=False,
        x_start_t=xt,
        t_start=t_start,
    )
    assert torch.equal(x, x2)


def test_last_step_is_noise_free_mean():
    d = GaussianDiffusion.from_config("linear", 10, mean_type="x0", var_type="fixed_large")
    # an x0-model that always predicts 0.25: the final step (t=0) must return exactly that mean, no noise
    x = SAMPLERS["ancestral"].sample(d, lambda x, t: torch.full_like(x, 0.25), (64, 1, 2, 2))
    assert torch.allclose(x, torch.full_like(x, 0.25), atol=1e-6)


# ----------------------------------------------------------------------------- DDIM
def test_ddim_eta0_deterministic_and_exact_on_respaced():
    d = GaussianDiffusion.from_config("linear", 1000)
    kept = space_timesteps(1000, "ddim20")
    r = respace(d, kept)
    model = gaussian_eps_model(d)  # indexed by original t: only right if timestep_map is used
    seen = set()

    def recording(x, t):
        seen.update(t.tolist())
        return model(x, t)

    xT = torch.randn(N, 1, generator=torch.Generator().manual_seed(3))
    a = ddim_sample(r, recording, (N, 1), x_start_t=xT, generator=torch.Generator().manual_seed(4))
    b = ddim_sample(r, recording, (N, 1), x_start_t=xT, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert seen == set(kept)
    # the ddim spacing on the full chain respaces to the same kept steps
    assert torch.equal(a, SAMPLERS["ddim"].sample(d, model, (N, 1), steps=20, x_start_t=xT))
    # exact deterministic affine map on the kept steps (float64, independent of the respace code)
    abar = d.alphas_cumprod_np[kept]
    E, V = 0.0, 1.0
    for j in range(len(kept) - 1, -1, -1):
        ab, abp = abar[j], (abar[j - 1] if j > 0 else 1.0)
        k0, c0 = _affine_eps(ab)
        g = math.sqrt(1 - ab) / (ab * S**2 + 1 - ab)
        A = math.sqrt(abp) * k0 + math.sqrt(1 - abp) * g
        B = math.sqrt(abp) * c0 - math.sqrt(1 - abp) * g * math.sqrt(ab) * M
        E, V = A * E + B, A * A * V
    # the map is affine, x_0 = sqrt(V) x_T + E, so the sample stats follow from those of x_T
    assert a.mean().item() == pytest.approx(E + math.sqrt(V) * xT.mean().item(), abs=1e-3)
    assert a.std().item() == pytest.approx(math.sqrt(V) * xT.std().item(), rel=1e-3)
    assert a.mean().item() == pytest.approx(M, abs=0.03)


def test_ddim_eta1_equals_ancestral_fixed_small():
    d = GaussianDiffusion.from_config("linear", 50, var_type="fixed_small")
    model = gaussian_eps_model(d)
    a = ddim_sample(d, model, (256, 1), eta=1.0, noise=SeededNoise(range(256)), clip_denoised=False)
    b = SAMPLERS["ancestral"].sample(d, model, (256, 1), noise=SeededNoise(range(256)), clip_denoised=False)
    assert torch.allclose(a, b, atol=1e-4)
    c = ddim_sample(d, model, (256, 1), eta=0.0, noise=SeededNoise(range(256)), clip_denoised=False)
    assert not torch.allclose(a, c, atol=1e-2)


# ----------------------------------------------------------------------------- DPM-Solver++
def test_dpm_solver_timesteps():
    d = GaussianDiffusion.from_config("linear", 1000)
    lam = 0.5 * np.log(d.alphas_cumprod_np / (1 - d.alphas_cumprod_np))
    for steps in (2, 10, 20, 30):  # distinct after rounding: each is the index nearest its lambda target
        ts = dpm_solver_timesteps(d, steps)
        targets = np.linspace(lam[999], lam[0], steps)
        assert len(ts) == steps and ts[0] == 999 and ts[-1] == 0
        assert all(abs(lam[t] - g) <= 0.5 * max(lam[t - 1] - lam[t], lam[t] - lam[t + 1]) + 1e-9
                   for t, g in zip(ts[1:-1], targets[1:-1]))  # fmt: skip
    assert dpm_solver_timesteps(d, 10) == [999, 886, 757, 603, 410, 202, 73, 22, 5, 0]
    for steps in (50, 250, 999, 1000):  # crowded near t = 0: kept distinct, within [0, 999]
        ts = dpm_solver_timesteps(d, steps)
        assert len(ts) == steps and ts[0] == 999 and ts[-1] == 0 and all(a > b for a, b in zip(ts, ts[1:]))
    assert dpm_solver_timesteps(d, 250)[-10:] == list(range(9, -1, -1))
    small = GaussianDiffusion.from_config("linear", 10)
    assert dpm_solver_timesteps(small, None) == dpm_solver_timesteps(small, 50) == list(range(9, -1, -1))
    ts = dpm_solver_timesteps(d, 5, t_start=500)
    assert len(ts) == 5 and ts[0] == 500 and ts[-1] == 0
    assert dpm_solver_timesteps(d, 1) == [999] and dpm_solver_timesteps(d, 1, t_start=7) == [7]
    with pytest.raises(ValueError):
        dpm_solver_timesteps(d, 0)
    with pytest.raises(ValueError):
        dpm_solver_timesteps(d, 5, t_start=1000)


def _exact_flow_gaussian(d: GaussianDiffusion, xT: torch.Tensor, t_last: int) -> torch.Tensor:
    """For data N(M, S^2) the probability-flow ODE keeps z = (x_t - alpha M) / sqrt(alpha^2 S^2 + sigma^2) fixed;
    DPM-Solver++ returns the data prediction at its last evaluation ``t_last`` of that exact x, i.e.
    M + alpha S^2 / sqrt(alpha^2 S^2 + sigma^2) z at t_last (float64)."""
    aT, a = d.alphas_cumprod_np[-1], d.alphas_cumprod_np[t_last]
    z = (xT.double() - math.sqrt(aT) * M) / math.sqrt(aT * S**2 + 1 - aT)
    return M + math.sqrt(a) * S**2 / math.sqrt(a * S**2 + 1 - a) * z


def test_dpm_solver_follows_the_exact_ode_on_gaussian_data():
    """Gaussian data has a closed-form probability-flow map; DPM-Solver++ lands on it with the error falling ~4x
    per doubling of the steps (second order), with one network evaluation per step at exactly its timesteps."""
    d = GaussianDiffusion.from_config("linear", 1000)
    model = gaussian_eps_model(d)
    seen: list[list[int]] = []

    def recording(x, t):
        seen.append(sorted(set(t.tolist())))
        return model(x, t)

    xT = torch.randn(N, 1, generator=torch.Generator().manual_seed(3))

    def err(steps: int) -> float:
        seen.clear()
        x = SAMPLERS["dpm_solver"].sample(d, recording, (N, 1), steps=steps, x_start_t=xT, clip_denoised=False)
        ts = dpm_solver_timesteps(d, steps)
        assert seen == [[t] for t in ts]  # one evaluation per step, in order, original t
        return (x.double() - _exact_flow_gaussian(d, xT, ts[-1])).abs().max().item()

    e = [err(n) for n in (20, 40, 80)]
    assert e[0] < 0.02 and e[1] < e[0] / 3 and e[2] < e[1] / 3, e
    # with 10 evaluations the distribution is already close: std within 3% of the exact map's (0.2 S)
    x = SAMPLERS["dpm_solver"].sample(d, model, (N, 1), steps=10, x_start_t=xT, clip_denoised=False)
    exact = _exact_flow_gaussian(d, xT, 0)
    assert x.mean().item() == pytest.approx(exact.mean().item(), abs=0.002)
    assert x.std().item() == pytest.approx(exact.std().item(), rel=0.03)
    # deterministic, and only x_T is drawn: the same seeds give the same images
    a = SAMPLERS["dpm_solver"].sample(d, model, (64, 1), steps=10, noise=SeededNoise(range(64)))
    assert torch.equal(a, SAMPLERS["dpm_solver"].sample(d, model, (64, 1), steps=10, noise=SeededNoise(range(64))))
    x_T = SeededNoise(range(64)).randn(1)
    assert torch.equal(a, SAMPLERS["dpm_solver"].sample(d, model, (64, 1), steps=10, x_start_t=x_T))


def test_dpm_solver_progressive_and_t_start():
    d = GaussianDiffusion.from_config("linear", 100)
    model = gaussian_eps_model(d)
    xt = torch.randn(16, 1, generator=torch.Generator().manual_seed(0))
    prog = []
    steps = list(SAMPLERS["dpm_solver"].run(d, model, (16, 1), steps=7, x_start_t=xt, t_start=60,
                                               progress=lambda i, n: prog.append((i, n))))  # fmt: skip
    ts = dpm_solver_timesteps(d, 7, t_start=60)
    assert [s["t"] for s in steps] == ts and len(ts) == 7 and ts[0] == 60 and ts[-1] == 0
    assert prog == [(i, 7) for i in range(1, 8)]
    assert torch.equal(steps[-1]["sample"], steps[-1]["pred_xstart"])  # the last step returns x0-hat
    final = SAMPLERS["dpm_solver"].sample(d, model, (16, 1), steps=7, x_start_t=xt, t_start=60)
    assert torch.equal(final, steps[-1]["sample"])
    same = final_sample(dpm_solver(d, model, xt, ts))
    assert torch.equal(final, same)
    with pytest.raises(ValueError, match="a jump up must follow at least one evaluation"):
        final_sample(dpm_solver(d, model, xt, [10, 20]))
    with pytest.raises(ValueError, match="without repeats"):
        final_sample(dpm_solver(d, model, xt, [20, 10, 10, 0]))


@pytest.mark.parametrize("clip", [True, False])
def test_dpm_solver_same_chain_for_every_mean_type(clip):
    """An x0-, a mu- and a learned-variance eps-network that encode the same denoiser as an eps-network give
    the same DPM-Solver++ chain: x0 is taken as p_mean_variance's pred_xstart (mu-tilde inverted for mu; the
    variance channels ignored)."""
    d_eps = GaussianDiffusion.from_config("linear", 100, "eps", "fixed_large", "mse")

    def eps(x, t):  # nonlinear, large enough that clipping is active
        return torch.tanh(2 * x) * (1 + t.view(-1, 1, 1, 1) / 50) + 0.2 * torch.sin(3 * x)

    def x0_net(x, t):
        return d_eps.predict_xstart_from_eps(x, t, eps(x, t))

    def mu_net(x, t):
        return d_eps.q_posterior_mean_variance(x0_net(x, t), x, t)[0]

    def learned_net(x, t):
        return torch.cat([eps(x, t), torch.randn_like(x)], dim=1)

    nets = {("eps", "fixed_large", "mse"): eps, ("x0", "fixed_large", "mse"): x0_net,
            ("mu", "fixed_small", "mse"): mu_net, ("eps", "learned_range", "hybrid"): learned_net}  # fmt: skip
    shape = (8, 2, 3, 3)
    out = {
        k: SAMPLERS["dpm_solver"].sample(GaussianDiffusion.from_config("linear", 100, *k), fn, shape, steps=12,
                             noise=SeededNoise(range(8)), clip_denoised=clip)  # fmt: skip
        for k, fn in nets.items()
    }
    ref = out[("eps", "fixed_large", "mse")]
    if clip:
        assert ref.abs().max() <= 1.0
    for k, x in out.items():
        torch.testing.assert_close(x, ref, atol=1e-4, rtol=1e-4, msg=str(k))  # unclipped, x grows to ~80
    other = SAMPLERS["dpm_solver"].sample(d_eps, eps, shape, steps=12, noise=SeededNoise(range(8)),
                                          clip_denoised=not clip)
    assert not torch.allclose(ref, other, atol=1e-3)


# ----------------------------------------------------------------------------- respacing
def test_respace_all_steps_is_identity():
    d = GaussianDiffusion.from_config("cosine", 200, mean_type="mu", var_type="fixed_small", loss_type="kl")
    r = respace(d, range(200))
    assert np.allclose(r.betas_np, d.betas_np, rtol=1e-10, atol=1e-15)
    assert np.array_equal(r.timestep_map_np, np.arange(200))
    assert (r.mean_type, r.var_type, r.loss_type) == (d.mean_type, d.var_type, d.loss_type)


def test_respaced_alphas_cumprod_and_nested_map():
    d = GaussianDiffusion.from_config("linear", 1000)
    kept = space_timesteps(1000, 50)
    r = respace(d, kept)
    assert r.num_timesteps == 50 and r.betas_np.dtype == np.float64
    assert np.allclose(r.alphas_cumprod_np, d.alphas_cumprod_np[kept], rtol=1e-12)
    assert np.array_equal(r.timestep_map_np, kept)
    assert torch.equal(r.timestep_map, torch.tensor(kept))
    r2 = respace(r, [0, 10, 49])
    assert list(r2.timestep_map_np) == [kept[0], kept[10], kept[49]]
    assert np.allclose(r2.alphas_cumprod_np, d.alphas_cumprod_np[r2.timestep_map_np], rtol=1e-12)
    with pytest.raises(ValueError):
        respace(d, [0, 1000])


def test_space_timesteps_semantics():
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(1000, "ddim1000") == list(range(1000))
    s10 = space_timesteps(1000, 10)
    assert len(s10) == 10 and s10[0] == 0 and s10[-1] == 999
    assert space_timesteps(1000, "10") == s10
    # improved-diffusion docstring example: 300 steps, sections [10, 15, 20]
    s = space_timesteps(300, "10,15,20")
    assert len(s) == 45 and {0, 99, 100, 199, 200, 299} <= set(s)
    assert len([x for x in s if x < 100]) == 10 and len([x for x in s if 100 <= x < 200]) == 15
    assert space_timesteps(300, [10, 15, 20]) == s
    with pytest.raises(ValueError):
        space_timesteps(1000, "ddim999")  # no integer stride gives exactly 999 steps
    with pytest.raises(ValueError):
        space_timesteps(10, 11)


# ----------------------------------------------------------------------------- seeded noise
def test_seeded_noise_rows_depend_only_on_own_seed():
    a = SeededNoise([11, 22, 33]).randn(2, 3)
    b = SeededNoise([22]).randn((2, 3))
    assert a.shape == (3, 2, 3) and torch.equal(a[1], b[0])
    assert not torch.equal(a[0], a[1])


def test_image_seeds():
    s = image_seeds(7, 0, 10)
    assert s == image_seeds(7, 0, 10) and s[5:] == image_seeds(7, 5, 10)
    assert len(set(s)) == 10 and all(0 <= x < 2**63 for x in s)
    assert image_seeds(8, 0, 10) != s and image_seed(7, 3) == s[3]
    # pinned value: the mapping must never change silently (it addresses released sample dumps)
    assert image_seed(0, 0) == 2812178212566171247 and image_seed(2024, 12345) == 2125531968122727528


@pytest.mark.parametrize("sampler", ["ancestral", "ddim_eta1", "dpm_solver"])
def test_samples_independent_of_batch(sampler):
    d = GaussianDiffusion.from_config("linear", 20, var_type="fixed_large")
    seeds = image_seeds(123, 0, 5)

    def model(x, t):  # per-example, nonlinear
        return torch.tanh(x) * (1 + t.view(-1, 1, 1, 1) / 20)

    def run(ss):
        if sampler == "ancestral":
            return SAMPLERS["ancestral"].sample(d, model, (len(ss), 2, 3, 3), noise=SeededNoise(ss))
        if sampler == "dpm_solver":
            return SAMPLERS["dpm_solver"].sample(d, model, (len(ss), 2, 3, 3), steps=8, noise=SeededNoise(ss))
        return ddim_sample(d, model, (len(ss), 2, 3, 3), eta=1.0, noise=SeededNoise(ss))

    batch = run(seeds)
    singles = torch.cat([run([s]) for s in seeds])
    assert torch.allclose(batch, singles, atol=1e-6)
    # a different companion image does not change image 0; a different seed does
    assert torch.allclose(run([seeds[0], 999])[0], batch[0], atol=1e-6)
    assert not torch.allclose(run([seeds[1]])[0], batch[0], atol=1e-3)
    with pytest.raises(ValueError, match="seeds"):
        SAMPLERS["ancestral"].sample(d, model, (3, 2, 3, 3), noise=SeededNoise(seeds))


# ----------------------------------------------------------------------------- contracts and edges
# Written from the mutation run (bench/results/mutation_diffusion.md): boundaries, messages and dtypes a surviving
# mutant changed, each checked against the documented contract or a second call path.
def test_ancestral_from_t_start_0_and_a_float64_x_t():
    """t_start = 0 is one (noise-free) step; a float64 x_t is sampled in float32, as the float32 chain would."""
    d = GaussianDiffusion.from_config("linear", 20, "x0", "fixed_large", "mse")
    xt = torch.randn(4, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = SAMPLERS["ancestral"].sample(d, lambda x, t: torch.full_like(x, 0.25), (4, 1), x_start_t=xt, t_start=0)
    assert x.dtype == torch.float32 and torch.allclose(x, torch.full_like(x, 0.25))
    model = gaussian_eps_model(d)
    a = SAMPLERS["ancestral"].sample(d, model, (4, 1), x_start_t=xt, t_start=9, noise=SeededNoise(range(4)),
                                     device="cpu")
    b = SAMPLERS["ancestral"].sample(d, model, (4, 1), x_start_t=xt.float(), t_start=9, noise=SeededNoise(range(4)))
    assert a.dtype == torch.float32 and torch.equal(a, b)
    with pytest.raises(ValueError, match=r"^t_start must be in \[0, 19\], got 20$"):
        SAMPLERS["ancestral"].sample(d, model, (4, 1), t_start=20)
    with pytest.raises(ValueError, match=r"^x_start_t has shape \(4, 1\), expected \(3, 1\)$"):
        SAMPLERS["ancestral"].sample(d, model, (3, 1), x_start_t=xt, t_start=5)
    with pytest.raises(ValueError, match=r"^SeededNoise has 4 seeds but the batch has 3 images$"):
        SAMPLERS["ancestral"].sample(d, model, (3, 1), noise=SeededNoise(range(4)))


@pytest.mark.parametrize("T,sections,expected", [
    (10, [2, 2, 2], [0, 3, 4, 6, 7, 9]),  # sizes 4, 3, 3 (the remainder goes to the first); strides 3, 2, 2
    (10, [1, 1], [0, 5]),  # one step per section: its start
    (10, [5, 5], list(range(10))),  # a section may keep every step
    (1, "ddim1", [0]),
])
def test_space_timesteps_sections_by_hand(T, sections, expected):
    """improved-diffusion's space_timesteps: T split into equal sections (the first ones one longer when T does
    not divide), each strided evenly from its start to its end (both kept)."""
    assert space_timesteps(T, sections) == expected


def test_space_timesteps_and_respace_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"^cannot create exactly 6 steps with an integer stride from T=10$"):
        space_timesteps(10, "ddim6")
    with pytest.raises(ValueError, match=r"^cannot create exactly 1 steps"):  # improved-diffusion's rule: only T=1
        space_timesteps(10, "ddim1")
    with pytest.raises(ValueError, match=r"^cannot divide section of 5 steps into 6$"):
        space_timesteps(10, [6, 1])
    d = GaussianDiffusion.from_config("linear", 10)
    with pytest.raises(ValueError, match=r"^use_timesteps is empty$"):
        respace(d, [])
    for bad in ([-1, 5], [0, 5, 10]):
        with pytest.raises(ValueError, match=r"^use_timesteps must lie in \[0, 9\]$"):
            respace(d, bad)


def test_seeded_noise_dtype_repr_and_errors():
    noise = SeededNoise([5, 6, 7, 8])
    x = noise.randn(3, dtype=torch.float64)
    assert x.dtype == torch.float64
    torch.testing.assert_close(x[1], torch.randn(3, generator=torch.Generator().manual_seed(6), dtype=torch.float64))
    assert repr(SeededNoise([5, 6, 7, 8])) == "SeededNoise(n=4, seeds=[5, 6, 7]..., device=cpu)"
    assert repr(SeededNoise([5, 6, 7])) == "SeededNoise(n=3, seeds=[5, 6, 7], device=cpu)"
    with pytest.raises(ValueError, match=r"^SeededNoise needs at least one seed$"):
        SeededNoise([])
