"""Few-step solvers of the DDPM's reverse process, beyond the paper: DPM-Solver++(2M) (the probability-flow ODE),
SDE-DPM-Solver++(2M) (the reverse SDE) and Restart sampling (the ODE with forward jumps back up).

All run on the full chain at the code indices they are given (:mod:`ddpm.core.diffusion.spacing`: ``logsnr``, uniform
in ``lambda = log(alpha / sigma)`` with ``alpha = sqrt(abar)``, ``sigma = sqrt(1 - abar)``, or ``restart``); one
network evaluation per index, except an index followed by a larger one, where the chain lands and jumps back up.
The data prediction ``x0_i`` is ``pred_xstart`` of
:meth:`GaussianDiffusion.p_mean_variance` (the same conversion for every mean type: from eps, x0 directly, or
mu-tilde inverted; the variance channels of a learned variance are not used), clamped to [-1, 1] when
``clip_denoised`` (diffusers' analogue: ``thresholding`` with ``sample_max_value=1``). Every random draw
(``x_T``, the SDE's per-step noise, Restart's jumps) comes from ``noise``, so image ``i`` depends only on its seed.

The update from ``lambda_s`` (evaluated, with the previous evaluation at ``lambda_p``) to ``lambda_t``, with
``h = lambda_t - lambda_s``, ``r = (lambda_s - lambda_p) / h`` and ``D = x0_s + (x0_s - x0_p) / (2 r)`` (the
midpoint form; ``D = x0_s`` in a first-order step, when there is no previous evaluation):

* ODE (Lu et al. 2022b, Alg. 2): ``x_t = (sigma_t / sigma_s) x_s + alpha_t (1 - e^{-h}) D``;
* SDE (ibid. sec. 5, diffusers' ``sde-dpmsolver++``): ``x_t = (sigma_t / sigma_s) e^{-h} x_s + alpha_t
  (1 - e^{-2h}) D + sigma_t sqrt(1 - e^{-2h}) z``.

The last step goes to the clean image (``alpha = 1``, ``sigma = 0``: diffusers' ``final_sigmas_type="zero"``),
i.e. returns the data prediction of the last evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .gaussian import GaussianDiffusion, ModelFn
from .noise import SeededNoise, randn
from .registry import register, register_spacing
from .samplers import Progress, Step


def lambda_timesteps(diffusion: GaussianDiffusion, n: int, t_hi: int, t_lo: int = 0) -> list[int]:
    """``n`` distinct code indices from ``t_hi`` down to ``t_lo`` (both included), uniform in lambda.

    The targets ``lambda(t_hi) + i (lambda(t_lo) - lambda(t_hi)) / (n - 1)`` are mapped to the nearest code index
    (lambda interpolated linearly between indices, rounded); where two land on the same index (lambda changes
    by ~0.4 per index near t = 0, so from ~30 steps on for the linear T=1000 schedule), the earlier one moves up
    to one above the next, so near ``t_lo`` every index is used. ``n = 1``: ``[t_hi]``; ``n`` larger than the
    number of indices: every index.
    """
    T = diffusion.num_timesteps
    if not 0 <= t_lo <= t_hi < T:
        raise ValueError(f"need 0 <= t_lo <= t_hi < T={T}, got t_lo={t_lo}, t_hi={t_hi}")
    if n < 1:
        raise ValueError(f"steps must be >= 1, got {n}")
    if n >= t_hi - t_lo + 1:
        return list(range(t_hi, t_lo - 1, -1))
    lam = _lambda(diffusion.alphas_cumprod_np)  # strictly decreasing in t
    targets = np.linspace(lam[t_hi], lam[t_lo], int(n))
    idx = np.arange(t_hi, t_lo - 1, -1, dtype=np.float64)
    ts = np.interp(targets, lam[t_lo : t_hi + 1][::-1], idx).round().astype(np.int64)
    # distinct: with gaps g_i = ts_i - (minimal spacing), strictly decreasing ts <=> non-increasing g, which
    # a running max from the end gives (a repeated index moves up); the clip keeps ts within [t_lo, t_hi]
    gap = np.arange(n - 1, -1, -1)
    g = np.maximum.accumulate((ts - gap)[::-1])[::-1].clip(t_lo, t_hi - n + 1)
    return (g + gap).tolist()


def dpm_solver_timesteps(
    diffusion: GaussianDiffusion, steps: int | None = None, t_start: int | None = None
) -> list[int]:
    """The code indices DPM-Solver++ evaluates the network at, in sampling order: :func:`lambda_timesteps` from
    ``t_start`` (default ``T-1``) down to 0 (``steps=None`` or ``steps > t_start``: every index). Up to where
    indices repeat these are diffusers' ``use_lu_lambdas=True`` timesteps. Linear T=1000, steps=10: 999, 886,
    757, 603, 410, 202, 73, 22, 5, 0.

    Why lambda-uniform (bench/results/frontier_digits_study_*.md): equal steps in lambda keep the 2M
    extrapolation well conditioned. Steps even in t either end with a long second-order step (~3 in lambda
    from t ~ T/steps to t = 0), which on Gaussian data with its exact denoiser widens the samples by 25% at 20
    steps, or (diffusers' "linspace") stop at t ~ T/steps and return that blurry x0-hat (26% too narrow at 20
    steps); lambda-uniform is within 2% from 10 steps on.
    """
    t_start = diffusion.num_timesteps - 1 if t_start is None else int(t_start)
    if not 0 <= t_start < diffusion.num_timesteps:
        raise ValueError(f"t_start must be in [0, {diffusion.num_timesteps - 1}], got {t_start}")
    if steps is None or steps > t_start:
        return list(range(t_start, -1, -1))
    return lambda_timesteps(diffusion, int(steps), t_start, 0)


def _lambda(abar: np.ndarray) -> np.ndarray:
    """Half the log-SNR, ``lambda = log(alpha / sigma) = 0.5 (log abar - log(1 - abar))``, float64."""
    return 0.5 * (np.log(abar) - np.log1p(-abar))


def _dpm_pp_update(
    x: Tensor,
    x0: Tensor,
    x0_prev: Tensor | None,
    lam: tuple[float, float, float | None],
    alpha_next: float,
    sigma_ratio: float,
) -> Tensor:
    """One DPM-Solver++ ODE step from lambda_s0 to lambda_t (Lu et al. 2022b, Alg. 2 with the midpoint D1).

    ``lam = (lambda_t, lambda_s0, lambda_s1)``; ``x0`` is the data prediction at s0, ``x0_prev`` the one at
    s1 (``None``: the first-order step = DDIM). ``alpha_next = alpha_t``, ``sigma_ratio = sigma_t /
    sigma_s0``; ``lambda_t = inf`` (the clean end, alpha_t = 1, sigma_t = 0) returns ``x0``.
    """
    lam_t, lam_s0, lam_s1 = lam
    if math.isinf(lam_t):
        return x0
    h = lam_t - lam_s0
    coef = -alpha_next * math.expm1(-h)  # alpha_t (1 - e^{-h})
    d = x0
    if x0_prev is not None:
        r = (lam_s0 - lam_s1) / h
        d = x0 + (x0 - x0_prev) / (2.0 * r)
    return sigma_ratio * x + coef * d


def _dpm_pp_sde_update(
    x: Tensor,
    x0: Tensor,
    x0_prev: Tensor | None,
    lam: tuple[float, float, float | None],
    alpha_next: float,
    sigma: tuple[float, float],
    z: Tensor,
) -> Tensor:
    """One SDE-DPM-Solver++ step (diffusers' ``sde-dpmsolver++``, midpoint): arguments as
    :func:`_dpm_pp_update`, ``sigma = (sigma_t, sigma_s0)``, ``z`` the standard normal noise of this step."""
    lam_t, lam_s0, lam_s1 = lam
    if math.isinf(lam_t):
        return x0
    h = lam_t - lam_s0
    one_minus = -math.expm1(-2.0 * h)  # 1 - e^{-2h}
    d = x0
    if x0_prev is not None:
        r = (lam_s0 - lam_s1) / h
        d = x0 + (x0 - x0_prev) / (2.0 * r)
    sigma_t, sigma_s = sigma
    return (sigma_t / sigma_s * math.exp(-h)) * x + (alpha_next * one_minus) * d + sigma_t * math.sqrt(one_minus) * z


class _Chain:
    """The state a multistep pass carries: the diffusion's float64 noise levels and the last evaluation."""

    def __init__(self, x: Tensor, diffusion: GaussianDiffusion, model_fn: ModelFn, clip_denoised: bool,
                 noise: SeededNoise | None, generator: torch.Generator | None, device: torch.device):
        self.x, self.diffusion, self.model_fn, self.clip = x, diffusion, model_fn, clip_denoised
        self.noise, self.generator, self.device = noise, generator, device
        self.abar = diffusion.alphas_cumprod_np
        self.history: tuple[Tensor, float] | None = None  # (x0, lambda) of the last evaluation

    def level(self, t: int | None) -> tuple[float, float, float]:
        """``(lambda, alpha, sigma)`` of code index ``t``; ``None`` is the clean end."""
        if t is None:
            return math.inf, 1.0, 0.0
        a = float(self.abar[t])
        return float(_lambda(np.float64(a))), math.sqrt(a), math.sqrt(1.0 - a)

    def randn(self, shape: Sequence[int]) -> Tensor:
        return randn(shape, self.noise, self.generator, self.device)

    def run(self, ts: Sequence[int], end: int | None, sde: bool) -> Iterator[Step]:
        """From ``self.x`` at ``ts[0]``: evaluate at each of ``ts`` and step to the next (the last step to ``end``:
        a code index below ``ts[-1]``, or ``None`` for the clean image); yields after every evaluation."""
        x = self.x
        points = [*ts, end]
        for ti, tn in zip(points[:-1], points[1:]):
            t = torch.full((x.shape[0],), int(ti), dtype=torch.long, device=self.device)
            x0 = self.diffusion.p_mean_variance(self.model_fn, x, t, clip_denoised=self.clip)["pred_xstart"]
            lam_s, _, sigma_s = self.level(ti)
            lam_t, alpha_t, sigma_t = self.level(tn)
            x0_prev, lam_p = self.history if self.history is not None else (None, None)
            lam = (lam_t, lam_s, lam_p)
            if sde and tn is not None:
                x = _dpm_pp_sde_update(x, x0, x0_prev, lam, alpha_t, (sigma_t, sigma_s), self.randn(x.shape))
            else:
                x = _dpm_pp_update(x, x0, x0_prev, lam, alpha_t, sigma_t / sigma_s)
            self.history, self.x = (x0, lam_s), x
            yield {"t": int(ti), "sample": x, "pred_xstart": x0}


def forward_jump(diffusion: GaussianDiffusion, x: Tensor, t_from: int, t_to: int, z: Tensor) -> Tensor:
    """A draw of the forward process ``q(x_{t_to} | x_{t_from})`` for code indices ``t_from < t_to``:
    ``sqrt(abar_to / abar_from) x + sqrt(1 - abar_to / abar_from) z`` (the product of the steps' Gaussians)."""
    if not 0 <= t_from < t_to < diffusion.num_timesteps:
        raise ValueError(f"a forward jump needs 0 <= t_from < t_to < T, got {t_from} -> {t_to}")
    ratio = float(diffusion.alphas_cumprod_np[t_to] / diffusion.alphas_cumprod_np[t_from])
    return math.sqrt(ratio) * x + math.sqrt(1.0 - ratio) * z


def restart_plan(diffusion: GaussianDiffusion, steps: int, t_min: int, t_max: int, k: int,
                 share: float) -> tuple[list[int], int, list[int]]:
    """How Restart spends ``steps`` evaluations: ``(main timesteps, index in them where the restarts happen,
    restart-pass timesteps)``.

    ``round(share * steps)`` evaluations go to the ``k`` restart passes (an equal number each, at least one),
    the rest to the main ODE pass (lambda-uniform from T-1 to 0, at least two). The restarts happen when the
    main pass reaches its first index ``<= t_min`` (``t_min`` snapped onto the main grid, so the main pass is
    the same with or without restarts); each restart pass runs lambda-uniform from ``t_max`` down to that index.
    """
    per_pass = max(1, round(share * steps) // k)
    main = steps - k * per_pass
    if main < 2:
        raise ValueError(
            f"sampler=restart with steps={steps}: restart_k={k} passes of {per_pass} evaluations leave {main} for "
            f"the main pass (at least 2 needed); use more sampler.steps, a smaller sampler.restart_k or "
            f"sampler.restart_share")
    ts = dpm_solver_timesteps(diffusion, main)
    at = next((i for i, t in enumerate(ts) if t <= t_min), len(ts) - 1)
    if at == 0 or ts[at] >= t_max:
        raise ValueError(f"sampler=restart: the main pass {ts} has no step between restart_t_max={t_max} and "
                         f"restart_t_min={t_min}; widen the interval or use more sampler.steps")
    restart_ts = lambda_timesteps(diffusion, per_pass + 1, t_max, ts[at])[:-1]
    if len(restart_ts) < per_pass:
        raise ValueError(f"sampler=restart: {per_pass} evaluations per restart pass do not fit between "
                         f"restart_t_max={t_max} and {ts[at]}; widen the interval or lower sampler.restart_share")
    return ts, at, restart_ts


def check_restart(params: Mapping[str, Any], steps: int | None, diffusion: GaussianDiffusion | None) -> None:
    """The restart parameters' ranges, each error naming its key, and (given the model's ``diffusion``) whether
    the interval lies below T and ``steps`` evaluations can be split as they ask (:func:`restart_plan`)."""
    T = diffusion.num_timesteps if diffusion is not None else None
    t_min, t_max = params.get("restart_t_min"), params.get("restart_t_max")
    if not (isinstance(t_min, int) and isinstance(t_max, int) and 0 < t_min < t_max < (T or t_max + 1)):
        raise ValueError(f"sampler.restart_t_min={t_min} and sampler.restart_t_max={t_max} must be code indices with "
                         f"0 < restart_t_min < restart_t_max < T{f'={T}' if T else ''} (e.g. 60 and 300 for T=1000)")
    if not (isinstance(params.get("restart_k"), int) and params["restart_k"] >= 1):
        raise ValueError(f"sampler.restart_k={params.get('restart_k')} must be an integer >= 1 (restart passes)")
    share = params.get("restart_share")
    if not (isinstance(share, int | float) and 0 < share < 1):
        raise ValueError(f"sampler.restart_share={share} must be in (0, 1): the fraction of sampler.steps spent in "
                         "restart passes")
    if steps is not None and diffusion is not None:
        restart_plan(diffusion, int(steps), t_min, t_max, params["restart_k"], float(share))


@register("restart", spacing="restart", stochastic=True, starts_anywhere=False,
          spacing_params={"restart_t_min": int, "restart_t_max": int, "restart_k": int, "restart_share": float},
          check=check_restart,
          summary="Restart sampling (Xu et al. 2023) with the DPM-Solver++(2M) ODE inside")
@register("dpm_solver_sde", spacing="logsnr", bound={"sde": True},
          summary="SDE-DPM-Solver++(2M), the reverse SDE (Lu et al. 2022, sec. 5)")
@register("dpm_solver", spacing="logsnr", stochastic=False,
          summary="DPM-Solver++(2M), the probability-flow ODE (Lu et al. 2022)")
@torch.no_grad()
def dpm_solver(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    x: Tensor,
    timesteps: Sequence[int],
    *,
    sde: bool = False,
    noise: SeededNoise | None = None,
    generator: torch.Generator | None = None,
    clip_denoised: bool = True,
    progress: Progress | None = None,
) -> Iterator[Step]:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2, midpoint form) from ``x`` at ``timesteps[0]``,
    yielding after every evaluation; with ``sde=True`` SDE-DPM-Solver++(2M) (ibid. sec. 5; diffusers'
    ``DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=2)``).

    The probability-flow ODE (or the reverse SDE) of the discrete-time DDPM in lambda, with the multistep
    second-order data-prediction update (module docstring): the network is evaluated once per index of a
    decreasing run; the first step is first order (= DDIM for the ODE), and so is the last, to the clean image.
    The ODE draws no noise; the SDE draws one ``z`` per step but the last (to the clean image, noise-free).

    Restart sampling (Xu et al. 2023, arXiv 2306.14878, Alg. 1; spacing ``restart``) is this solver on a list that
    rises: where an index ``a`` is followed by a larger ``b``, the chain steps down to ``a`` without evaluating
    there, jumps up to ``b`` with the forward process (:func:`forward_jump`, fresh noise) and the multistep
    history starts afresh. The jumps' noise contracts the errors accumulated before (the paper's argument).

    On a respaced diffusion the indices are the kept timesteps (fine for eps / x0; a mu network predicts the
    one-step mu-tilde of the original chain, so respacing is wrong for it). Yields dicts ``{"t": code index of
    the evaluation, "sample": the new x (at the next index; x_0 after the last step), "pred_xstart": x0_i}``.
    """
    ts = [int(t) for t in timesteps]
    if not ts or any(a == b for a, b in zip(ts, ts[1:])) or not 0 <= min(ts) <= max(ts) < diffusion.num_timesteps:
        raise ValueError(f"timesteps must be non-empty code indices in [0, {diffusion.num_timesteps - 1}] without "
                         f"repeats, got {ts}")
    runs, start = [], 0  # the decreasing runs; each but the last ends at a landing index
    for i in range(1, len(ts)):
        if ts[i] > ts[i - 1]:
            runs.append(ts[start:i])
            start = i
    runs.append(ts[start:])
    if any(len(run) < 2 for run in runs[:-1]):
        raise ValueError(f"timesteps {ts}: a jump up must follow at least one evaluation and a landing index")
    total = len(ts) - (len(runs) - 1)
    chain = _Chain(x, diffusion, model_fn, clip_denoised, noise, generator, x.device)
    done = 0
    for j, run in enumerate(runs):
        last = j == len(runs) - 1
        for step in chain.run(run if last else run[:-1], None if last else run[-1], sde):
            done += 1
            if progress is not None:
                progress(done, total)
            yield step
        if not last:
            chain.x = forward_jump(diffusion, chain.x, run[-1], runs[j + 1][0], chain.randn(chain.x.shape))
            chain.history = None


@register_spacing("restart")
def restart_timesteps(diffusion: GaussianDiffusion, steps: int, t_start: int | None = None, *, restart_t_min: int,
                      restart_t_max: int, restart_k: int, restart_share: float) -> list[int]:
    """Restart's ``steps`` evaluations (:func:`restart_plan`): the main pass down to its first index ``m <=
    restart_t_min``, then ``restart_k`` times a jump up to ``restart_t_max`` and a restart pass back down to
    ``m``, then the rest of the main pass: ``main[:at+1] + (restart pass + [m]) * k + main[at+1:]``."""
    if t_start is not None and int(t_start) != diffusion.num_timesteps - 1:
        raise ValueError("Restart always starts at T-1 (its restarts are planned on the whole chain)")
    main, at, restart_ts = restart_plan(diffusion, int(steps), restart_t_min, restart_t_max, restart_k,
                                        float(restart_share))
    return main[:at + 1] + (restart_ts + [main[at]]) * int(restart_k) + main[at + 1:]
