"""The seeds -> images service (ddpm.services.generate): how each sampler reads each kind of network."""

from __future__ import annotations

import pytest
import torch

from ddpm.core.config import SamplerConfig
from ddpm.core.diffusion import GaussianDiffusion
from ddpm.services.generate import generate

T = 50
SHAPE = (1, 4, 4)


def toy_x0(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A fixed nonlinear 'network' that predicts x_0."""
    s = (t.float() / T).view(-1, 1, 1, 1)
    return torch.tanh(0.8 * x) * (0.5 + 0.4 * torch.cos(3 * s)) + 0.2 * torch.sin(2 * x + s)


def mu_of(x0_fn, diffusion: GaussianDiffusion):
    """The mu-tilde network with the same x_0: the one-step posterior mean of the chain at (x_t, t)."""
    def fn(x, t):
        return diffusion.q_posterior_mean_variance(x0_fn(x, t), x, t)[0]
    return fn


RESTART = {"restart_t_min": 5, "restart_t_max": 20, "restart_k": 2, "restart_share": 0.4}


@pytest.mark.parametrize("name,steps,params", [
    ("respaced", 10, {}), ("ddim", 10, {}), ("respaced", T, {}), ("ancestral", None, {}), ("dpm_solver", 10, {}),
    ("dpm_solver_sde", 10, {}), ("restart", 10, RESTART),
])
def test_a_mu_network_samples_like_the_x0_network_it_implies(name, steps, params):
    """A mu network predicts one step of the original chain; a sampler that jumps over timesteps must read it as
    the x_0 it implies, so it gives the images of the x_0 network with the same x_0 (before this was handled,
    respaced/DDIM took the one-step mean as the mean of a 5-step jump)."""
    mu_diff = GaussianDiffusion.from_config("linear", T, "mu", "fixed_large", "kl")
    x0_diff = GaussianDiffusion.from_config("linear", T, "x0", "fixed_large", "kl")
    sampler = SamplerConfig(name=name, steps=steps, clip_denoised=False, params=params)
    seeds = list(range(6))
    a = generate(mu_of(toy_x0, mu_diff), mu_diff, seeds, SHAPE, sampler)
    b = generate(toy_x0, x0_diff, seeds, SHAPE, sampler)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_respaced_refuses_a_raw_learned_variance_but_ddim_and_fixed_take_it():
    d = GaussianDiffusion.from_config("linear", T, "eps", "learned", "kl")
    with pytest.raises(ValueError, match="one-step log-variance"):
        SamplerConfig(name="respaced", steps=10).check(d)
    SamplerConfig(name="ddim", steps=10).check(d)
    SamplerConfig(name="respaced", steps=10, var_type="fixed_small").check(d)
    SamplerConfig(name="respaced", steps=T).check(d)  # all T steps: no jump
    SamplerConfig(name="respaced", steps=10).check(  # interpolated: valid on any spacing
        GaussianDiffusion.from_config("linear", T, "eps", "learned_range", "hybrid"))


@pytest.mark.parametrize("var,loss", [("learned", "kl"), ("learned_range", "hybrid")])
def test_fixed_variance_on_a_learned_variance_network_uses_its_mean_channels(var, loss):
    """Also for Improved DDPM's hybrid loss, which needs a learned variance (sampling with a fixed one used to fail
    building the diffusion)."""
    d = GaussianDiffusion.from_config("linear", T, "eps", var, loss)
    fixed = GaussianDiffusion.from_config("linear", T, "eps", "fixed_small", "mse")

    def eps_and_var(x, t):
        return torch.cat([0.3 * x, torch.full_like(x, 5.0)], dim=1)  # an absurd log-variance, to be ignored

    sampler = SamplerConfig(name="ancestral", var_type="fixed_small")
    a = generate(eps_and_var, d, [1, 2], SHAPE, sampler)
    b = generate(lambda x, t: 0.3 * x, fixed, [1, 2], SHAPE, SamplerConfig(name="ancestral"))
    torch.testing.assert_close(a, b)


def test_dpm_solver_by_name_is_the_core_solver_and_ignores_a_learned_variance():
    """sampler=dpm_solver runs ddpm.core.diffusion's DPM-Solver++(2M) on the full chain (no respacing) with the
    sampler's steps; a learned-variance network's variance channels are not used."""
    from ddpm.core.diffusion import SAMPLERS, SeededNoise

    eps_diff = GaussianDiffusion.from_config("linear", T, "eps", "fixed_large", "mse")
    learned = GaussianDiffusion.from_config("linear", T, "eps", "learned_range", "hybrid")

    def eps(x, t):
        return 0.5 * torch.tanh(x) + 0.01 * t.float().view(-1, 1, 1, 1)

    seeds = [3, 4, 5]
    sampler = SamplerConfig(name="dpm_solver", steps=7)
    a = generate(eps, eps_diff, seeds, SHAPE, sampler)
    b = SAMPLERS["dpm_solver"].sample(eps_diff, eps, (3, *SHAPE), steps=7, noise=SeededNoise(seeds))
    torch.testing.assert_close(a, b)
    c = generate(lambda x, t: torch.cat([eps(x, t), torch.full_like(x, 9.0)], 1), learned, seeds, SHAPE, sampler)
    torch.testing.assert_close(a, c)
    assert not torch.allclose(a, generate(eps, eps_diff, seeds, SHAPE, SamplerConfig(name="dpm_solver", steps=8)))
