"""Our samplers step by step against an independent implementation: diffusers' DDPMScheduler (the paper's
ancestral sampler, Algorithm 2), DDIMScheduler and DPMSolverMultistepScheduler (DPM-Solver++(2M) and its SDE
form, sde-dpmsolver++; and Restart built from it with the forward jump in closed form), on a toy eps-model over
the full T=1000 linear schedule; and DPM-Solver++ by convergence to the ODE solution.

Both sides get the same x_T and the same per-step noise (one generator, drawn in the same order), so the
chains must agree to float rounding. The toy model is nonlinear in x and t and predicts large enough
eps that x0 clipping is active in many steps, so the clipped path is compared too.
"""

from __future__ import annotations

import diffusers  # a test extra: pip install -e .[test]
import numpy as np
import pytest
import torch

from ddpm.core.diffusion import (
    SAMPLERS,
    GaussianDiffusion,
    SeededNoise,
    dpm_solver_timesteps,
    respace,
    space_timesteps,
)
from ddpm.core.diffusion import solvers as S

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
    ours = SAMPLERS["ancestral"].sample(diffusion, toy_eps, SHAPE, generator=torch.Generator().manual_seed(7),
                                        clip_denoised=clip)

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


# ----------------------------------------------------------------------------- DPM-Solver++(2M)
def dpm_scheduler(prediction_type: str = "epsilon", clip: bool = False, algorithm_type: str = "dpmsolver++", **kw):
    """diffusers' DPM-Solver++(2M) ending at sigma = 0; clipping = its thresholding with sample_max_value=1 (the
    threshold s is clamped to [1, 1], i.e. x0 is clamped to [-1, 1])."""
    return diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
        algorithm_type=algorithm_type, solver_order=2, solver_type="midpoint", lower_order_final=True,
        final_sigmas_type="zero", prediction_type=prediction_type, thresholding=clip, sample_max_value=1.0, **kw,
    )  # fmt: skip


@pytest.mark.parametrize("steps", [2, 3, 5, 10, 15, 20, 25, 30])
def test_dpm_solver_timesteps_equal_diffusers_lu_lambdas(steps: int) -> None:
    """Our lambda-uniform timesteps are diffusers' ``use_lu_lambdas=True`` ones wherever those are distinct.
    (diffusers then steps with the unrounded lambdas, not those of the rounded timesteps the network sees; we
    use the noise level of the evaluated index, so the chains below get our timesteps as custom ones.)"""
    sched = dpm_scheduler(use_lu_lambdas=True)
    sched.set_timesteps(steps)
    diffusion = GaussianDiffusion.from_config("linear", T)
    assert sched.timesteps.tolist() == dpm_solver_timesteps(diffusion, steps)


def toy_x0(diffusion: GaussianDiffusion):
    """The toy eps-model as an x0-model (diffusers' prediction_type="sample")."""
    return lambda x, t: diffusion.predict_xstart_from_eps(x, t, toy_eps(x, t))

def ddim_sample(diffusion, model_fn, shape, *, eta=0.0, **kw):
    """DDIM on every index of ``diffusion`` (a respaced one: its kept steps)."""
    return SAMPLERS["ddim"].sample(diffusion, model_fn, shape, steps=diffusion.num_timesteps, eta=eta, **kw)



def _dpm_vs_diffusers(steps: int, mean_type: str, clip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    diffusion = GaussianDiffusion.from_config("linear", T, mean_type, "fixed_large", "mse")
    model = toy_eps if mean_type == "eps" else toy_x0(diffusion)
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(steps))
    ours = SAMPLERS["dpm_solver"].sample(diffusion, model, SHAPE, steps=steps, x_start_t=x_T, clip_denoised=clip)
    sched = dpm_scheduler("epsilon" if mean_type == "eps" else "sample", clip)
    sched.set_timesteps(timesteps=dpm_solver_timesteps(diffusion, steps))
    x = x_T.clone()
    for t in sched.timesteps:
        x = sched.step(model(x, torch.full((SHAPE[0],), int(t), dtype=torch.long)), int(t), x).prev_sample
    return ours, x


@pytest.mark.parametrize("steps", [3, 10, 20, 50, 250])
@pytest.mark.parametrize("mean_type", ["eps", "x0"])
@pytest.mark.parametrize("clip", [True, False])
def test_dpm_solver_equals_diffusers_dpm_solver_multistep(steps: int, mean_type: str, clip: bool) -> None:
    """DPM-Solver++(2M), midpoint, data prediction: first-order first step, second order after, first-order
    final step to sigma = 0, on the same timesteps: the chains agree to float rounding. Unclipped, the toy chain
    leaves [-1, 1] by far (~200): relative tolerance."""
    ours, ref = _dpm_vs_diffusers(steps, mean_type, clip)
    assert torch.isfinite(ours).all() and ours.abs().max() > 0.5
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0 if clip else 1e-5)


def _sde_vs_diffusers(steps: int, mean_type: str, clip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Ours and diffusers' ``sde-dpmsolver++`` from the same x_T with the same per-step noise: both draw from one
    image-seeded noise source in the same order (x_T, then one z per step but the last, to sigma = 0)."""
    diffusion = GaussianDiffusion.from_config("linear", T, mean_type, "fixed_large", "mse")
    model = toy_eps if mean_type == "eps" else toy_x0(diffusion)
    seeds = list(range(100 * steps, 100 * steps + SHAPE[0]))
    ours = SAMPLERS["dpm_solver_sde"].sample(diffusion, model, SHAPE, steps=steps, noise=SeededNoise(seeds),
                                             clip_denoised=clip)
    sched = dpm_scheduler("epsilon" if mean_type == "eps" else "sample", clip, algorithm_type="sde-dpmsolver++")
    sched.set_timesteps(timesteps=dpm_solver_timesteps(diffusion, steps))
    noise = SeededNoise(seeds)
    x = noise.randn(*SHAPE[1:])
    for i, t in enumerate(sched.timesteps):
        z = noise.randn(*SHAPE[1:]) if i < steps - 1 else torch.zeros(SHAPE)  # the last step adds no noise
        x = sched.step(model(x, torch.full((SHAPE[0],), int(t), dtype=torch.long)), int(t), x,
                       variance_noise=z).prev_sample
    return ours, x


@pytest.mark.parametrize("steps", [3, 10, 20, 50])
@pytest.mark.parametrize("mean_type", ["eps", "x0"])
@pytest.mark.parametrize("clip", [True, False])
def test_dpm_solver_sde_equals_diffusers_sde_dpmsolver_pp(steps: int, mean_type: str, clip: bool) -> None:
    """SDE-DPM-Solver++(2M), midpoint, data prediction, the same timesteps and the same noise as diffusers'
    ``algorithm_type="sde-dpmsolver++"``: the chains agree to float rounding (unclipped, the toy chain leaves
    [-1, 1] by far: relative tolerance)."""
    ours, ref = _sde_vs_diffusers(steps, mean_type, clip)
    assert torch.isfinite(ours).all() and ours.abs().max() > 0.5
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0 if clip else 1e-4)


def test_dpm_solver_sde_reference_test_catches_a_wrong_noise_scale(monkeypatch) -> None:
    """The comparison above fails for the ODE update (no noise) and for the noise of the wrong size."""
    ours, ref = _sde_vs_diffusers(10, "eps", clip=True)
    update = S._dpm_pp_sde_update
    monkeypatch.setattr(S, "_dpm_pp_sde_update", lambda x, x0, x0p, lam, a, sig, z: update(x, x0, x0p, lam, a, sig,
                                                                                            1.1 * z))
    wrong, _ = _sde_vs_diffusers(10, "eps", clip=True)
    assert (wrong - ref).abs().max() > 1e-2
    ode = SAMPLERS["dpm_solver"].sample(GaussianDiffusion.from_config("linear", T), toy_eps, SHAPE, steps=10,
                            x_start_t=SeededNoise(list(range(1000, 1000 + SHAPE[0]))).randn(*SHAPE[1:]))
    assert (ode - ref).abs().max() > 1e-2 and (ours - ref).abs().max() < 1e-4


def _first_order_only(x, x0, x0_prev, lam, alpha_next, sigma_ratio, _update=S._dpm_pp_update):
    return _update(x, x0, None, lam, alpha_next, sigma_ratio)


MUTATIONS = {
    "first_order_only": ("_dpm_pp_update", _first_order_only),  # = DDIM on the same timesteps
    "lambda_is_log_snr": ("_lambda", lambda abar: np.log(abar) - np.log1p(-abar)),  # 2x the right lambda
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_dpm_solver_reference_test_catches_mutations(mutation: str, monkeypatch) -> None:
    """The step-for-step comparison above fails for a first-order-only solver and for a wrong lambda."""
    name, fn = MUTATIONS[mutation]
    monkeypatch.setattr(S, name, fn)
    for steps in (10, 20):
        ours, ref = _dpm_vs_diffusers(steps, "eps", clip=True)
        with pytest.raises(AssertionError):
            torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def refined(diffusion: GaussianDiffusion, k: int) -> GaussianDiffusion:
    """A finer discretisation of the same noise levels: code index ``m`` of the result has the log abar of index
    ``m / k`` of ``diffusion`` (linear interpolation), so its index ``k i`` is index ``i`` of ``diffusion``."""
    T0 = diffusion.num_timesteps
    log_abar = np.interp(np.arange(k * (T0 - 1) + 1) / k, np.arange(T0), np.log(diffusion.alphas_cumprod_np))
    abar = np.exp(log_abar)
    return GaussianDiffusion(1.0 - abar / np.concatenate([[1.0], abar[:-1]]))


def toy_eps_of_noise_level(diffusion: GaussianDiffusion):
    """A smooth nonlinear eps-model that depends on t only through abar_t, so that its probability-flow ODE is
    the same on every discretisation of the noise levels (close to a Gaussian denoiser: bounded solutions)."""
    abar_table = torch.tensor(diffusion.alphas_cumprod_np)

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = abar_table[t].view(-1, 1, 1, 1)
        alpha, sigma = a.sqrt(), (1 - a).sqrt()
        eps = sigma * x / (0.25 * a + 1 - a) + 0.5 * alpha * sigma * torch.tanh(2 * x) + 0.2 * sigma * torch.sin(3 * x)
        return eps.float()

    return model


def _convergence_errors() -> tuple[list[float], float]:
    """Max |DPM-Solver++(N) - ODE solution| for N = 20, 40, 80, 500, and the same for DDIM with all 1000 steps.

    The ODE solution is DDIM (eta=0, its first-order exponential integrator) on the 2x and 4x refined
    schedules, Richardson-extrapolated (2 x_4k - x_2k; it moves by ~1.5e-4 with 4x and 8x): from the same x_T at
    index 999 down to index 0, then the same final jump to the data prediction."""
    coarse = GaussianDiffusion.from_config("linear", T)
    shape = (32, 1, 4, 4)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(0))

    def ddim(d: GaussianDiffusion) -> torch.Tensor:
        return ddim_sample(d, toy_eps_of_noise_level(d), shape, x_start_t=x_T, t_start=d.num_timesteps - 1,
                           clip_denoised=False)  # fmt: skip

    ode = 2 * ddim(refined(coarse, 4)) - ddim(refined(coarse, 2))
    model = toy_eps_of_noise_level(coarse)
    dpm = SAMPLERS["dpm_solver"].sample
    errs = [(dpm(coarse, model, shape, steps=n, x_start_t=x_T, clip_denoised=False) - ode).abs().max()
            for n in (20, 40, 80, 500)]  # fmt: skip
    return [float(e) for e in errs], float((ddim(coarse) - ode).abs().max())


@pytest.mark.slow  # over 2 s on 2 cores: the fast tier stays under 3 minutes
def test_dpm_solver_converges_to_the_ode_solution_second_order() -> None:
    """DPM-Solver++ approaches the DDIM (eta=0) ODE solution from the same x_T, the error falling ~4x per
    doubling of the steps (second order; a first-order solver's falls 2x), and with 500 evaluations it is within
    the reference's own accuracy, >10x closer than DDIM with all 1000 steps."""
    errs, ddim1000 = _convergence_errors()
    assert errs[0] < 0.1, errs
    assert errs[1] < errs[0] / 3 and errs[2] < errs[1] / 3, errs
    assert errs[3] < 5e-4 and errs[3] < ddim1000 / 10, (errs, ddim1000)


@pytest.mark.slow  # over 2 s on 2 cores: the fast tier stays under 3 minutes
def test_dpm_solver_convergence_test_catches_a_first_order_solver(monkeypatch) -> None:
    monkeypatch.setattr(S, "_dpm_pp_update", _first_order_only)
    errs, _ = _convergence_errors()
    assert not (errs[1] < errs[0] / 3 and errs[2] < errs[1] / 3), errs


# ----------------------------------------------------------------------------- Restart
RESTART = {"restart_t_min": 60, "restart_t_max": 300, "restart_k": 2, "restart_share": 0.4}


def _restart_vs_diffusers(steps: int, clip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Ours and a Restart built from diffusers' DPM-Solver++(2M) with the forward jump written out here, from the
    same seeds (x_T, then one jump draw per restart, per image). The evaluation indices come from the sampler's own
    plan (test_solvers.py checks that plan against its definition). Each ODE pass is one diffusers scheduler over
    that pass's indices followed by the rest of the main pass (so a pass ends at t_min, not at the clean image):
    the main pass stops at t_min; every restart pass starts afresh (first order) after its jump; the last one
    continues, multistep history and all, to the clean image, as ours does."""
    diffusion = GaussianDiffusion.from_config("linear", T, "eps", "fixed_large", "mse")
    seeds = list(range(500 + steps, 500 + steps + SHAPE[0]))
    ours = SAMPLERS["restart"].sample(diffusion, toy_eps, SHAPE, steps=steps, noise=SeededNoise(seeds),
                                      clip_denoised=clip, **RESTART)
    main, at, restart_ts = S.restart_plan(diffusion, steps, 60, 300, 2, 0.4)
    abar = diffusion.alphas_cumprod_np
    noise = SeededNoise(seeds)

    def ode(x: torch.Tensor, ts: list[int], n: int) -> torch.Tensor:
        sched = dpm_scheduler("epsilon", clip)
        sched.set_timesteps(timesteps=ts)
        for t in sched.timesteps[:n]:
            x = sched.step(toy_eps(x, torch.full((SHAPE[0],), int(t), dtype=torch.long)), int(t), x).prev_sample
        return x

    x = ode(noise.randn(*SHAPE[1:]), main, at)  # at main[at] = t_min
    ratio = float(abar[300] / abar[main[at]])
    for k in range(2):
        x = ratio**0.5 * x + (1 - ratio) ** 0.5 * noise.randn(*SHAPE[1:])  # q(x_{t_max} | x_{t_min})
        x = ode(x, restart_ts + main[at:], len(restart_ts) + (len(main) - at if k == 1 else 0))
    return ours, x


@pytest.mark.parametrize("steps", [10, 20, 50])
@pytest.mark.parametrize("clip", [True, False])
def test_restart_equals_diffusers_dpm_solver_with_forward_jumps(steps: int, clip: bool) -> None:
    """Restart = DPM-Solver++(2M) down to t_min, k times (forward jump to t_max, the ODE back to t_min), then the
    rest of the ODE: step for step against diffusers' solver with the jump in closed form."""
    ours, ref = _restart_vs_diffusers(steps, clip)
    assert torch.isfinite(ours).all() and ours.abs().max() > 0.5
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0 if clip else 1e-5)


def _jump_with_the_marginal_variance(d, x, t_from, t_to, z):  # sqrt(1 - abar_to): q(x_to | x_0)'s, not the jump's
    ratio = float(d.alphas_cumprod_np[t_to] / d.alphas_cumprod_np[t_from])
    return ratio**0.5 * x + (1.0 - float(d.alphas_cumprod_np[t_to])) ** 0.5 * z


def _plan_restarting_one_step_late(d, steps, t_min, t_max, k, share, _plan=S.restart_plan):
    main, at, restart_ts = _plan(d, steps, t_min, t_max, k, share)
    return main, at + 1, restart_ts


def _jump_short_of_t_max(d, x, t_from, t_to, z, _jump=S.forward_jump):
    return _jump(d, x, t_from, (t_from + t_to) // 2, z)


def _history_kept_across_jumps(chain_run=S._Chain.run):  # the multistep history must restart after a jump
    def run(self, ts, end, sde):
        if self.history is None and ts and ts[0] == 300:
            self.history = getattr(self, "_last", None)
        for step in chain_run(self, ts, end, sde):
            self._last = self.history
            yield step

    return run


RESTART_MUTATIONS = {
    "jump_variance": (S, "forward_jump", _jump_with_the_marginal_variance),
    "restart_interval_low": (S, "restart_plan", _plan_restarting_one_step_late),
    "restart_interval_jump": (S, "forward_jump", _jump_short_of_t_max),
    "history_across_jump": (S._Chain, "run", _history_kept_across_jumps()),
}


@pytest.mark.parametrize("mutation", sorted(RESTART_MUTATIONS))
def test_restart_reference_test_catches_mutations(mutation: str, monkeypatch) -> None:
    """The step-for-step comparison above fails for a jump with the wrong variance, for a wrong restart interval
    (restarting one main step below t_min; jumping to below t_max) and for a multistep history carried across a
    jump. (The reference is computed after the patch is undone.)"""
    owner, name, fn = RESTART_MUTATIONS[mutation]
    monkeypatch.setattr(owner, name, fn)
    ours = SAMPLERS["restart"].sample(GaussianDiffusion.from_config("linear", T), toy_eps, SHAPE, steps=20,
                                      noise=SeededNoise(list(range(520, 520 + SHAPE[0]))), **RESTART)
    monkeypatch.undo()
    _, ref = _restart_vs_diffusers(20, clip=True)
    assert (ours - ref).abs().max() > 5e-3, float((ours - ref).abs().max())  # 50x the tolerance above
