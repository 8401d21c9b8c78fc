"""Our samplers step by step against an independent implementation: diffusers' DDPMScheduler (the paper's
ancestral sampler, Algorithm 2) and DDIMScheduler, on a toy eps-model over the full T=1000 linear schedule.

Both sides get the same x_T and the same per-step noise (one generator, drawn in the same order), so the
chains must agree to float rounding. The toy model is nonlinear in x and t and predicts large enough
eps that x0 clipping is active in many steps, so the clipped path is compared too.
"""

from __future__ import annotations

import diffusers  # a test extra: pip install -e .[test]
import pytest
import torch

from ddpm.diffusion import GaussianDiffusion, ancestral_sample, ddim_sample, respace, space_timesteps

T = 1000
SHAPE = (6, 1, 4, 4)


def toy_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A fixed nonlinear 'network': eps_hat(x_t, t)."""
    s = (t.float() / T).view(-1, 1, 1, 1)
    return torch.tanh(1.5 * x) * (0.6 + 0.5 * torch.cos(7 * s)) + 0.3 * torch.sin(3 * x + 5 * s)


def ddpm_scheduler(variance: str):
    return diffusers.DDPMScheduler(
        num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
        variance_type=variance, clip_sample=True, clip_sample_range=1.0, prediction_type="epsilon",
    )  # fmt: skip


@pytest.mark.parametrize("variance", ["fixed_large", "fixed_small"])
@pytest.mark.parametrize("clip", [True, False])
def test_ancestral_chain_equals_diffusers_ddpm_scheduler(variance: str, clip: bool) -> None:
    diffusion = GaussianDiffusion.from_config("linear", T, "eps", variance, "mse")
    ours = ancestral_sample(diffusion, toy_eps, SHAPE, generator=torch.Generator().manual_seed(7), clip_denoised=clip)

    sched = ddpm_scheduler(variance)
    sched.config.clip_sample = clip
    sched.set_timesteps(T)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(SHAPE, generator=g)  # x_T first, then one draw per step with t > 0: our order too
    clipped_steps = 0
    for t in sched.timesteps:
        tt = torch.full((SHAPE[0],), int(t), dtype=torch.long)
        eps = toy_eps(x, tt)
        abar = sched.alphas_cumprod[int(t)]
        clipped_steps += int(((x - (1 - abar).sqrt() * eps) / abar.sqrt()).abs().max() > 1)
        x = sched.step(eps, int(t), x, generator=g).prev_sample
    assert clipped_steps > 100  # the clipped x0 path is exercised (and compared when clip=True)
    assert torch.isfinite(ours).all() and ours.abs().max() > 0.1
    # without clipping this toy chain leaves [-1, 1] by far; float rounding then grows with the values
    torch.testing.assert_close(ours, x, atol=2e-4, rtol=0 if clip else 1e-4)


@pytest.mark.parametrize("steps", [50, 100])
def test_ddim_eta0_equals_diffusers_ddim_scheduler(steps: int) -> None:
    """DDIM (eta=0) on the respaced chain "ddimN" = every T/N-th step, diffusers' 'leading' spacing; the final
    step goes to alpha_bar=1 (set_alpha_to_one); eps is re-derived from the clipped x0 (official DDIM code,
    diffusers' use_clipped_model_output=True). The respaced diffusion hands the network the original t."""
    diffusion = respace(GaussianDiffusion.from_config("linear", T, "eps", "fixed_large", "mse"),
                        space_timesteps(T, f"ddim{steps}"))  # fmt: skip
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    ours = ddim_sample(diffusion, toy_eps, SHAPE, eta=0.0, x_start_t=x_T, t_start=steps - 1)

    sched = diffusers.DDIMScheduler(
        num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, clip_sample=True,
        set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading", prediction_type="epsilon",
    )  # fmt: skip
    sched.set_timesteps(steps)
    assert sched.timesteps.flip(0).tolist() == list(range(0, T, T // steps))
    x = x_T.clone()
    for t in sched.timesteps:
        tt = torch.full((SHAPE[0],), int(t), dtype=torch.long)
        x = sched.step(toy_eps(x, tt), int(t), x, eta=0.0, use_clipped_model_output=True).prev_sample
    torch.testing.assert_close(ours, x, atol=2e-4, rtol=0)
