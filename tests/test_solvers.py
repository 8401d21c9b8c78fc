"""The registry's few-step samplers beyond DPM-Solver++: SDE-DPM-Solver++(2M) and Restart (their step-for-step
check against diffusers is in test_reference_samplers.py), the forward jump in closed form, Restart's evaluation
plan from its definition and its output on Gaussian data against the exact Restart process, the sampler
registry as the config sees it, and seed addressing for every registered sampler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpm.core.config import CONF_DIR, SamplerConfig, sampler_defaults
from ddpm.core.diffusion import SAMPLERS, GaussianDiffusion, SeededNoise, forward_jump, lambda_timesteps
from ddpm.core.diffusion.solvers import check_restart, dpm_solver_timesteps, restart_plan
from ddpm.services.generate import generate

T = 1000
SHAPE = (1, 4, 4)
RESTART = {"restart_t_min": 60, "restart_t_max": 300, "restart_k": 2, "restart_share": 0.4}


def toy_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    s = (t.float() / T).view(-1, 1, 1, 1)
    return 0.7 * torch.tanh(1.2 * x) * (0.6 + 0.3 * torch.cos(5 * s)) + 0.1 * torch.sin(2 * x + s)


def test_forward_jump_has_the_closed_form_mean_and_variance():
    """q(x_b | x_a) = N(sqrt(abar_b / abar_a) x_a, (1 - abar_b / abar_a) I): checked on 200k draws, and composing
    it with q(x_a | x_0) gives the marginal q(x_b | x_0)."""
    d = GaussianDiffusion.from_config("linear", T)
    a, b = 60, 300
    ratio = d.alphas_cumprod_np[b] / d.alphas_cumprod_np[a]
    x_a = torch.full((200_000, 1), 0.7, dtype=torch.float64)
    z = torch.randn(x_a.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_b = forward_jump(d, x_a, a, b, z)
    assert float(x_b.mean()) == pytest.approx(math.sqrt(ratio) * 0.7, abs=4e-3)
    assert float(x_b.var()) == pytest.approx(1 - ratio, rel=1e-2)
    assert 0.3 < ratio < 0.5  # a real jump: the mean shrinks and the variance is not small
    # q(x_b | x_0) from q(x_a | x_0) then the jump: mean sqrt(abar_b) x0, variance 1 - abar_b
    x0 = 0.5
    g = torch.Generator().manual_seed(1)
    z1, z2 = (torch.randn((200_000, 1), generator=g, dtype=torch.float64) for _ in range(2))
    xa = math.sqrt(d.alphas_cumprod_np[a]) * x0 + math.sqrt(1 - d.alphas_cumprod_np[a]) * z1
    xb = forward_jump(d, xa, a, b, z2)
    assert float(xb.mean()) == pytest.approx(math.sqrt(d.alphas_cumprod_np[b]) * x0, abs=4e-3)
    assert float(xb.var()) == pytest.approx(1 - d.alphas_cumprod_np[b], rel=1e-2)
    with pytest.raises(ValueError, match="t_from < t_to"):
        forward_jump(d, x_a, b, a, z)


@pytest.mark.parametrize("n,hi,lo", [(5, 999, 0), (4, 300, 60), (10, 300, 290), (3, 50, 50), (30, 999, 0)])
def test_lambda_timesteps_are_distinct_in_range_and_end_at_both_ends(n, hi, lo):
    d = GaussianDiffusion.from_config("linear", T)
    ts = lambda_timesteps(d, n, hi, lo)
    assert ts[0] == hi and ts[-1] == lo and all(a > b for a, b in zip(ts, ts[1:]))
    assert len(ts) == min(n, hi - lo + 1)
    if n <= 10 and n < (hi - lo) // 3:  # uniform in lambda where rounding to indices does not crowd them
        lam = 0.5 * np.log(d.alphas_cumprod_np[ts] / (1 - d.alphas_cumprod_np[ts]))
        gaps = np.diff(lam)
        assert gaps.max() < 1.5 * gaps.min()
    assert lambda_timesteps(d, 10, 999, 0) == dpm_solver_timesteps(d, 10)


def lambda_uniform_by_hand(d: GaussianDiffusion, n: int, hi: int, lo: int) -> list[int]:
    """``n`` code indices from ``hi`` to ``lo`` uniform in lambda = 0.5 log(abar / (1 - abar)): for each target the
    index of the nearest lambda, by brute force over every index (a second code path to ``lambda_timesteps``'
    interpolation and rounding; used only where the targets are far enough apart not to collide)."""
    lam = 0.5 * np.log(d.alphas_cumprod_np / (1 - d.alphas_cumprod_np))
    idx = np.arange(lo, hi + 1)
    return [int(idx[np.argmin(np.abs(lam[lo : hi + 1] - g))]) for g in np.linspace(lam[hi], lam[lo], n)]


def restart_calls_by_hand(d: GaussianDiffusion, steps: int, t_min: int, t_max: int, k: int, share: float):
    """Restart's evaluation order from its definition (Xu et al. 2023, Alg. 1, with the docstring's budget):
    ``round(share * steps) // k`` evaluations per restart pass, the rest lambda-uniform from T-1 to 0; the restarts
    happen at the first main index <= t_min and each pass runs lambda-uniform from t_max down to it (excluded)."""
    per_pass = round(share * steps) // k
    main = lambda_uniform_by_hand(d, steps - k * per_pass, d.num_timesteps - 1, 0)
    at = next(i for i, t in enumerate(main) if t <= t_min)
    restart = lambda_uniform_by_hand(d, per_pass + 1, t_max, main[at])[:-1]
    return main, at, restart


@pytest.mark.parametrize("steps", [10, 20, 50])
def test_restart_spends_exactly_steps_evaluations_at_the_planned_indices(steps):
    """The network is called exactly ``steps`` times, in the order main pass down to t_min, k restart passes from
    t_max, the rest of the main pass: the indices recomputed from the definition, not from ``restart_plan``."""
    d = GaussianDiffusion.from_config("linear", T)
    main, at, restart_ts = restart_calls_by_hand(d, steps, 60, 300, 2, 0.4)
    assert len(main) + 2 * len(restart_ts) == steps
    assert main[at] <= 60 < main[at - 1] and restart_ts[0] == 300 and restart_ts[-1] > main[at]
    assert restart_plan(d, steps, 60, 300, 2, 0.4) == (main, at, restart_ts)
    calls: list[int] = []

    def model(x, t):
        calls.append(int(t[0]))
        return toy_eps(x, t)

    SAMPLERS["restart"].sample(d, model, (2, *SHAPE), steps=steps, noise=SeededNoise([1, 2]), **RESTART)
    assert calls == main[:at] + restart_ts * 2 + main[at:]
    # the restart spacing: the main pass to its landing index, (jump, restart pass, landing) twice, the rest
    m = main[at]
    assert SAMPLERS["restart"].timesteps(d, steps, RESTART) == main[:at + 1] + (restart_ts + [m]) * 2 + main[at + 1:]


# ----------------------------------------------------------------------------- Restart on Gaussian data
M, S = 0.3, 0.2  # data N(M, S^2): the exact eps-model is affine in x_t, the probability-flow ODE has a closed form


def gaussian_eps_model(d: GaussianDiffusion):
    abar = torch.tensor(d.alphas_cumprod_np)

    def model(x, t):
        ab = abar[t].view(-1, *([1] * (x.ndim - 1)))
        return (torch.sqrt(1 - ab) / (ab * S**2 + 1 - ab) * (x - torch.sqrt(ab) * M)).to(x.dtype)

    return model


def exact_restart_gaussian(d: GaussianDiffusion, seeds: list[int], t_min: int, t_max: int, k: int) -> torch.Tensor:
    """Restart with an exact ODE solver on N(M, S^2) data, float64: the probability-flow ODE keeps
    z = (x_t - sqrt(abar_t) M) / sqrt(abar_t S^2 + 1 - abar_t) fixed, so x_T -> x_{t_min} is closed form; each
    restart is the forward jump q(x_{t_max} | x_{t_min}) with the next draw w of the image's generator, then the
    ODE back; the end is the data prediction at t = 0 (as every solver here returns). The draws in the order the
    sampler makes them: x_T, then one w per restart."""
    abar = d.alphas_cumprod_np

    def sd(t):
        return math.sqrt(abar[t] * S**2 + 1 - abar[t])

    noise = SeededNoise(seeds)
    x_T = noise.randn(1).double()
    z = (x_T - math.sqrt(abar[-1]) * M) / sd(T - 1)
    ratio = abar[t_max] / abar[t_min]
    for _ in range(k):
        x_min = math.sqrt(abar[t_min]) * M + sd(t_min) * z
        x_max = math.sqrt(ratio) * x_min + math.sqrt(1 - ratio) * noise.randn(1).double()
        z = (x_max - math.sqrt(abar[t_max]) * M) / sd(t_max)
    return M + math.sqrt(abar[0]) * S**2 / sd(0) * z


def restart_error_on_gaussian_data(steps: int) -> tuple[float, torch.Tensor]:
    """Max |Restart - exact Restart| over 2000 images (t_min snapped to the main grid as Restart does), and the
    samples."""
    d = GaussianDiffusion.from_config("linear", T)
    seeds = list(range(2000))
    x = SAMPLERS["restart"].sample(d, gaussian_eps_model(d), (len(seeds), 1), steps=steps, noise=SeededNoise(seeds),
                                   clip_denoised=False, **RESTART)
    main, at, _ = restart_calls_by_hand(d, steps, 60, 300, 2, 0.4)
    exact = exact_restart_gaussian(d, seeds, main[at], 300, 2)
    return float((x.double() - exact).abs().max()), x


def test_restart_follows_the_exact_restart_process_on_gaussian_data():
    """Restart on Gaussian data with its exact eps-model lands, image by image, on the exact Restart map (the
    closed-form ODE plus the forward jumps with the same noise), the error falling with the steps; its samples
    have the data's distribution N(M, S^2) (the ODE and the jumps both keep the marginals)."""
    (e40, _), (e80, x) = (restart_error_on_gaussian_data(n) for n in (40, 80))
    assert e40 < 0.015 and e80 < 0.004 and e80 < e40 / 3, (e40, e80)  # 0.0103, 0.0023: second order
    assert float(x.mean()) == pytest.approx(M, abs=0.015) and float(x.std()) == pytest.approx(S, rel=0.05)


def _jump_to_the_marginal_variance(d, x, t_from, t_to, z):  # sqrt(1 - abar_to) z: q(x_to | x_0)'s, not the jump's
    ratio = float(d.alphas_cumprod_np[t_to] / d.alphas_cumprod_np[t_from])
    return math.sqrt(ratio) * x + math.sqrt(1.0 - float(d.alphas_cumprod_np[t_to])) * z


def _restart_one_step_late(d, steps, t_min, t_max, k, share, _plan=restart_plan):  # restarts below t_min
    main, at, restart_ts = _plan(d, steps, t_min, t_max, k, share)
    return main, at + 1, restart_ts


def _jump_short_of_t_max(d, x, t_from, t_to, z, _jump=forward_jump):  # the pass starts at t_max, the jump lower
    return _jump(d, x, t_from, (t_from + t_to) // 2, z)


RESTART_MUTATIONS = {
    "jump_variance": ("forward_jump", _jump_to_the_marginal_variance),
    "restart_interval_low": ("restart_plan", _restart_one_step_late),
    "restart_interval_jump": ("forward_jump", _jump_short_of_t_max),
}


@pytest.mark.parametrize("mutation", sorted(RESTART_MUTATIONS))
def test_restart_gaussian_check_catches_mutations(mutation, monkeypatch):
    """The Gaussian-data check above fails for a wrong jump variance (0.0089 at 80 steps, against 0.0023) and for a
    wrong restart interval (restarting one main step below t_min: 0.011; jumping short of t_max: 0.23)."""
    from ddpm.core.diffusion import solvers

    name, fn = RESTART_MUTATIONS[mutation]
    monkeypatch.setattr(solvers, name, fn)
    err, _ = restart_error_on_gaussian_data(80)
    assert err > 0.006, err


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_is_seed_addressed(name):
    """Image i depends on (seed, i) only: the same seed gives the same image alone or in any batch, with x_T and
    every injected noise (SDE steps, restart jumps, ancestral z) drawn from its own generator."""
    d = GaussianDiffusion.from_config("linear", T, "eps", "fixed_small", "mse")
    steps = None if SAMPLERS[name].full_chain else 10
    sampler = SamplerConfig(name=name, steps=steps, params={"eta": 1.0} if name == "ddim" else {})
    if SAMPLERS[name].full_chain:
        d = GaussianDiffusion.from_config("linear", 20, "eps", "fixed_small", "mse")
        sampler = SamplerConfig(name=name, params=RESTART if name == "restart" else {})
    if name == "restart":
        sampler = SamplerConfig(name=name, steps=10, params=RESTART)
    batch = generate(toy_eps, d, [11, 12, 13], SHAPE, sampler)
    alone = generate(toy_eps, d, [12], SHAPE, sampler)
    other = generate(toy_eps, d, [99, 12], SHAPE, sampler)
    torch.testing.assert_close(batch[1:2], alone, rtol=0, atol=1e-6)
    torch.testing.assert_close(other[1:2], alone, rtol=0, atol=1e-6)
    assert not torch.allclose(batch[0], batch[1])


def test_stochastic_samplers_differ_from_the_ode_from_the_same_x_T():
    """The SDE solver and Restart inject noise after x_T (the registry says so), the ODE solver does not."""
    d = GaussianDiffusion.from_config("linear", T)
    ode = generate(toy_eps, d, [5], SHAPE, SamplerConfig(name="dpm_solver", steps=20))
    for name, params in (("dpm_solver_sde", {}), ("restart", RESTART)):
        assert SAMPLERS[name].is_stochastic(params)
        x = generate(toy_eps, d, [5], SHAPE, SamplerConfig(name=name, steps=20, params=params))
        assert (x - ode).abs().max() > 0.05
    assert not SAMPLERS["dpm_solver"].is_stochastic({})
    assert SAMPLERS["ddim"].is_stochastic({"eta": 0.5}) and not SAMPLERS["ddim"].is_stochastic({"eta": 0.0})


def test_every_registered_sampler_has_its_config_and_the_other_way_round():
    """Adding a sampler = its function, conf/sampler/NAME.yaml and its tests: each YAML names a registered
    sampler, holds a default for each of its parameters and nothing the registry does not know."""
    import yaml

    names = {p.stem for p in (CONF_DIR / "sampler").glob("*.yaml")}
    assert names == set(SAMPLERS)
    for name, spec in SAMPLERS.items():
        node = yaml.safe_load((CONF_DIR / "sampler" / f"{name}.yaml").read_text())
        assert node["name"] == name
        assert set(node) - {"name", "steps", "clip_denoised", "var_type"} == set(spec.all_params), name
        assert sampler_defaults(name) == {k: node[k] for k in spec.all_params}
        SamplerConfig.from_node(node)  # the YAML's defaults are valid


@pytest.mark.parametrize("node,match", [
    ({"name": "heun", "steps": 10}, r"sampler.name='heun' is not a sampler; valid: \['ancestral', 'respaced'"),
    ({"name": "restart", "steps": 0}, r"needs sampler.steps >= 1"),
    ({"name": "ddim", "steps": 10, "restart_k": 2}, r"sampler.restart_k is not a setting of sampler=ddim; valid: "),
    ({"name": "restart", "steps": 10, "restart_k": 1.5}, r"sampler.restart_k=1.5 must be an integer"),
    ({"name": "dpm_solver_sde", "steps": "ten"}, r"sampler.steps='ten' must be an integer"),
])
def test_bad_sampler_settings_name_the_key(node, match):
    with pytest.raises(ValueError, match=match):
        SamplerConfig.from_node(node)


@pytest.mark.parametrize("params,steps,match", [
    ({"restart_t_min": 0}, 10, r"sampler.restart_t_min=0 and sampler.restart_t_max=300 must be code indices with "
                               r"0 < restart_t_min < restart_t_max < T "),
    ({"restart_t_max": 1000}, 10, r"restart_t_max < T=1000"),
    ({"restart_t_min": 400}, 10, r"0 < restart_t_min < restart_t_max"),
    ({"restart_k": 0}, 10, r"sampler.restart_k=0 must be an integer >= 1"),
    ({"restart_share": 1.0}, 10, r"sampler.restart_share=1.0 must be in \(0, 1\)"),
    ({"restart_k": 5}, 5, r"leave 0 for the main pass"),
    ({}, 3, r"leave 1 for the main pass"),
])
def test_bad_restart_parameters_fail_before_sampling(params, steps, match):
    d = GaussianDiffusion.from_config("linear", T)
    with pytest.raises(ValueError, match=match):  # the config itself, or with the model's T
        SamplerConfig(name="restart", steps=steps, params={**RESTART, **params}).check(d)


def test_restart_defaults_come_from_its_yaml():
    s = SamplerConfig(name="restart", steps=10)
    assert s.params == sampler_defaults("restart") and set(s.params) == set(RESTART)
    assert s.describe(T) == {"name": "restart", "steps": 10, "clip_denoised": True, "var_type": None, **s.params}
    assert SamplerConfig(name="ddim", steps=10).params == {"eta": 0.0}


# ----------------------------------------------------------------------------- contracts and edges
# Written from the mutation run (bench/results/mutation_diffusion.md): boundaries, messages and the generator path
# a surviving mutant changed, each checked against the documented contract or a second call path.
def test_lambda_timesteps_edges():
    d = GaussianDiffusion.from_config("linear", T)
    assert lambda_timesteps(d, 3, 40) == lambda_timesteps(d, 3, 40, 0) and lambda_timesteps(d, 3, 40)[-1] == 0
    assert lambda_timesteps(d, 11, 300, 290) == list(range(300, 289, -1))  # exactly one per index
    assert lambda_timesteps(d, 12, 300, 290) == list(range(300, 289, -1))  # more than there are: every index
    with pytest.raises(ValueError, match=r"^need 0 <= t_lo <= t_hi < T=1000, got t_lo=0, t_hi=1000$"):
        lambda_timesteps(d, 3, 1000)
    with pytest.raises(ValueError, match=r"^steps must be >= 1, got 0$"):
        lambda_timesteps(d, 0, 10)
    assert dpm_solver_timesteps(d, 5, t_start=0) == [0]
    with pytest.raises(ValueError, match=r"^t_start must be in \[0, 999\], got 1000$"):
        dpm_solver_timesteps(d, 5, t_start=1000)


def test_explicit_timesteps_agree_with_the_spacing_or_fail():
    from ddpm.core.diffusion import dpm_solver, final_sample

    d = GaussianDiffusion.from_config("linear", 100)
    x_T = torch.randn(3, 1, generator=torch.Generator().manual_seed(0))
    a = final_sample(dpm_solver(d, toy_eps_1d, x_T, [60, 13, 0]))
    b = SAMPLERS["dpm_solver"].sample(d, toy_eps_1d, (3, 1), steps=3, t_start=60, x_start_t=x_T)
    assert SAMPLERS["dpm_solver"].timesteps(d, 3, t_start=60) == [60, 13, 0] and torch.equal(a, b)
    assert not torch.equal(a, final_sample(dpm_solver(d, toy_eps_1d, x_T, [60, 30, 0])))
    one = final_sample(dpm_solver(d, toy_eps_1d, x_T, [7]))  # one step: the x0 prediction
    torch.testing.assert_close(one, d.predict_xstart_from_eps(x_T, torch.full((3,), 7), toy_eps_1d(x_T, 7)).clamp(
        -1, 1))  # fmt: skip
    with pytest.raises(ValueError, match="without repeats"):
        final_sample(dpm_solver(d, toy_eps_1d, x_T, [60, 60, 0]))
    with pytest.raises(ValueError, match=r"code indices in \[0, 99\]"):
        final_sample(dpm_solver(d, toy_eps_1d, x_T, [100, 50, 0]))
    # the seeds reach every draw when the timesteps are given: the SDE solver equals its steps= twin
    ts = dpm_solver_timesteps(d, 6)
    noise = SeededNoise([4, 5, 6])
    x = noise.randn(1)  # x_T, then the steps' noise from the same generators
    given = final_sample(dpm_solver(d, toy_eps_1d, x, ts, sde=True, noise=noise))
    assert torch.equal(given, SAMPLERS["dpm_solver_sde"].sample(d, toy_eps_1d, (3, 1), steps=6,
                                                                noise=SeededNoise([4, 5, 6])))


def toy_eps_1d(x, t):
    s = (torch.as_tensor(t).float() / 100).reshape(-1, *([1] * (x.ndim - 1)))
    return 0.8 * torch.tanh(x) * (1 + s)


@pytest.mark.parametrize("name,kw", [("dpm_solver_sde", {"steps": 8}), ("restart", {"steps": 10, **RESTART})])
def test_a_generator_alone_drives_every_draw(name, kw):
    """Without SeededNoise, x_T and every later draw (SDE noise, restart jumps) come from the given generator: the
    same generator seed gives the same images whatever the global RNG does, another seed other images."""
    d = GaussianDiffusion.from_config("linear", T)

    def run(seed: int, global_seed: int):
        torch.manual_seed(global_seed)
        return SAMPLERS[name].sample(d, toy_eps, (2, *SHAPE), generator=torch.Generator().manual_seed(seed), **kw)

    assert torch.equal(run(1, 0), run(1, 99))
    assert not torch.allclose(run(1, 0), run(2, 0))
    if name == "dpm_solver_sde":  # also with explicit timesteps
        torch.manual_seed(5)
        from ddpm.core.diffusion import dpm_solver, final_sample

        g = torch.Generator().manual_seed(1)
        x_T = torch.randn((2, *SHAPE), generator=g)
        x = final_sample(dpm_solver(d, toy_eps, x_T, dpm_solver_timesteps(d, 8), sde=True, generator=g))
        assert torch.equal(x, run(1, 0))


def test_forward_jump_bounds():
    d = GaussianDiffusion.from_config("linear", T)
    x, z = torch.full((3,), 0.5), torch.tensor([-1.0, 0.0, 1.0])
    r = d.alphas_cumprod_np[5] / d.alphas_cumprod_np[0]
    torch.testing.assert_close(forward_jump(d, x, 0, 5, z), math.sqrt(r) * x + math.sqrt(1 - r) * z)
    for a, b in ((5, 5), (5, 1000), (-1, 5)):
        with pytest.raises(ValueError, match=rf"^a forward jump needs 0 <= t_from < t_to < T, got {a} -> {b}$"):
            forward_jump(d, x, a, b, z)


def test_restart_plan_edges():
    """The boundaries of the plan: a main pass of exactly 2 evaluations is allowed, a restart at the second main
    index, t_min equal to a main index restarts there (t <= t_min), one restart pass, t_min = 1; and a restart
    interval too narrow for its passes is refused with the numbers."""
    d = GaussianDiffusion.from_config("linear", T)
    main, at, rts = restart_plan(d, 4, 60, 300, 1, 0.5)
    assert len(main) == 2 and len(rts) == 2 and main[at] == 0
    main, at, rts = restart_plan(d, 10, 900, 950, 1, 0.2)  # 8 main steps: 999, 851, ...: restarts after one
    assert at == 1 and main[at] == dpm_solver_timesteps(d, 8)[1] < 900 and rts[0] == 950
    main10 = dpm_solver_timesteps(d, 10)  # [999, 886, 757, 603, 410, 202, 73, 22, 5, 0]
    main, at, _ = restart_plan(d, 12, 73, 300, 1, 0.2)  # 10 in the main pass: index 73 is on its grid
    assert main == main10 and main[at] == 73
    check_restart({**RESTART, "restart_t_min": 1, "restart_k": 1}, 10, d)
    SamplerConfig(name="restart", steps=10, params=RESTART).check(d)  # valid settings pass with T
    with pytest.raises(ValueError, match=r"^sampler=restart: 4 evaluations per restart pass do not fit between "
                                         r"restart_t_max=42 and 39; widen the interval or lower "
                                         r"sampler.restart_share$"):
        restart_plan(d, 20, 40, 42, 2, 0.4)


@pytest.mark.parametrize("params,match", [
    ({"restart_t_min": 300}, r"0 < restart_t_min < restart_t_max"),  # t_min == t_max
    ({"restart_share": 0.0}, r"^sampler.restart_share=0.0 must be in \(0, 1\): the fraction of sampler.steps "
                             r"spent in restart passes$"),
])
def test_more_bad_restart_parameters(params, match):
    with pytest.raises(ValueError, match=match):
        check_restart({**RESTART, **params}, None, None)


def test_evaluations_per_image():
    """The cost the frontier reports: a full-chain sampler T evaluations whatever steps says; a few-step sampler
    its steps, at most T; no steps: T."""
    assert SAMPLERS["ancestral"].evaluations(5, 1000) == 1000
    assert SAMPLERS["ddim"].evaluations(50, 1000) == 50 and SAMPLERS["ddim"].evaluations(2000, 1000) == 1000
    assert SAMPLERS["dpm_solver"].evaluations(None, 100) == 100 and SAMPLERS["restart"].evaluations(7, 10) == 7
