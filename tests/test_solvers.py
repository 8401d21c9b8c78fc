"""The registry's few-step samplers beyond DPM-Solver++: SDE-DPM-Solver++(2M) and Restart (their step-for-step
check against diffusers is in test_reference_samplers.py), the forward jump in closed form, the sampler
registry as the config sees it, and seed addressing for every registered sampler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpm.config import CONF_DIR, SamplerConfig, sampler_defaults
from ddpm.diffusion import SAMPLERS, GaussianDiffusion, SeededNoise, forward_jump, lambda_timesteps
from ddpm.diffusion.solvers import dpm_solver_timesteps, restart_plan
from ddpm.generate import check_sampler, generate

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


@pytest.mark.parametrize("steps", [10, 20, 50])
def test_restart_plan_spends_exactly_steps_evaluations(steps):
    d = GaussianDiffusion.from_config("linear", T)
    main, at, restart_ts = restart_plan(d, steps, **{k.removeprefix("restart_"): v for k, v in RESTART.items()
                                                     if k not in ("restart_k", "restart_share")},
                                        k=2, share=0.4)
    assert len(main) + 2 * len(restart_ts) == steps
    assert main[at] <= 60 < main[at - 1] and restart_ts[0] == 300 and restart_ts[-1] > main[at]
    # the network is called exactly `steps` times, at the planned indices
    calls: list[int] = []

    def model(x, t):
        calls.append(int(t[0]))
        return toy_eps(x, t)

    SAMPLERS["restart"].sample(d, model, (2, *SHAPE), steps=steps, noise=SeededNoise([1, 2]), **RESTART)
    assert calls == main[:at] + restart_ts * 2 + main[at:]


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
        assert set(node) - {"name", "steps", "clip_denoised", "var_type"} == set(spec.params), name
        assert sampler_defaults(name) == {k: node[k] for k in spec.params}
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
        check_sampler(d, SamplerConfig(name="restart", steps=steps, params={**RESTART, **params}))


def test_restart_defaults_come_from_its_yaml():
    s = SamplerConfig(name="restart", steps=10)
    assert s.params == sampler_defaults("restart") and set(s.params) == set(RESTART)
    assert s.describe(T) == {"name": "restart", "steps": 10, "clip_denoised": True, "var_type": None, **s.params}
    assert SamplerConfig(name="ddim", steps=10).params == {"eta": 0.0}
