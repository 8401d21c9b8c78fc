"""Samplers: ancestral (Paper Algorithm 2, official ``p_sample_loop``), DDIM, DPM-Solver++(2M), and timestep
respacing.

All samplers take ``(diffusion, model_fn, shape, *, noise=None, generator=None, clip_denoised=True,
progress=None, device=None)``:

* ``noise``: a :class:`~ddpm.diffusion.noise.SeededNoise` with ``len(noise) == shape[0]``. ``x_T`` and every
  per-step ``z`` are drawn from it, so image ``i`` depends only on its seed. When ``None``, ``torch.randn`` is
  used with the optional ``generator``.
* ``progress(done_steps, total_steps)`` is called after every step.
* ``device`` defaults to the device of the diffusion's buffers.
* ``x_start_t`` / ``t_start``: start from a given ``x`` at code index ``t_start`` instead of ``x_T``.

Code index ``k`` is paper time ``k+1``; the loops run ``k = T-1 .. 0``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from .gaussian import GaussianDiffusion, ModelFn, extract
from .noise import SeededNoise

Progress = Callable[[int, int], None]


def _device(diffusion: GaussianDiffusion, device: str | torch.device | None) -> torch.device:
    return torch.device(device) if device is not None else diffusion.betas.device


def _randn(
    shape: Sequence[int],
    noise: SeededNoise | None,
    generator: torch.Generator | None,
    device: torch.device,
) -> Tensor:
    shape = tuple(shape)
    if noise is not None:
        if len(noise) != shape[0]:
            raise ValueError(f"SeededNoise has {len(noise)} seeds but the batch has {shape[0]} images")
        return noise.randn(*shape[1:]).to(device)
    if generator is not None:
        return torch.randn(shape, generator=generator, device=generator.device).to(device)
    return torch.randn(shape, device=device)


def _init(
    diffusion: GaussianDiffusion,
    shape: Sequence[int],
    noise: SeededNoise | None,
    generator: torch.Generator | None,
    device: torch.device,
    x_start_t: Tensor | None,
    t_start: int | None,
) -> tuple[Tensor, int]:
    T = diffusion.num_timesteps
    t_start = T - 1 if t_start is None else int(t_start)
    if not 0 <= t_start < T:
        raise ValueError(f"t_start must be in [0, {T - 1}], got {t_start}")
    if x_start_t is None:
        x = _randn(shape, noise, generator, device)
    else:
        if tuple(x_start_t.shape) != tuple(shape):
            raise ValueError(f"x_start_t has shape {tuple(x_start_t.shape)}, expected {tuple(shape)}")
        x = x_start_t.to(device=device, dtype=torch.float32)
    return x, t_start


def _final_sample(steps: Iterator[dict[str, Tensor | int]]) -> Tensor:
    """Run a progressive sampler to the end; its last ``sample`` (x_0)."""
    (final,) = deque(steps, maxlen=1)
    return final["sample"]


@torch.no_grad()
def ancestral_sample_progressive(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    shape: Sequence[int],
    *,
    noise: SeededNoise | None = None,
    generator: torch.Generator | None = None,
    clip_denoised: bool = True,
    progress: Progress | None = None,
    device: str | torch.device | None = None,
    x_start_t: Tensor | None = None,
    t_start: int | None = None,
) -> Iterator[dict[str, Tensor | int]]:
    """Ancestral sampling, yielding after every step (for progressive-generation figures).

    Each step at code index ``t`` draws ``x_{t-1} = mean + 1[t != 0] * exp(0.5 log_variance) * z`` from
    :meth:`GaussianDiffusion.p_mean_variance` (Algorithm 2 with the official x_0 clipping when
    ``clip_denoised``); ``z`` is drawn at every step, including the last, where it is masked.

    Starts from ``x_T ~ N(0, I)``, or from a given ``x_start_t`` at code index ``t_start`` (a sample of
    ``q(x | x_0)`` at that index, e.g. ``diffusion.q_sample(x0, t=499)`` then ``t_start=499``), for
    interpolation / partial decoding.

    Yields dicts ``{"t": int code index of the step, "sample": the new x (at code index t-1; x_0 after the
    last step), "pred_xstart": predicted x_0 at this step}``.
    """
    device = _device(diffusion, device)
    x, t_start = _init(diffusion, shape, noise, generator, device, x_start_t, t_start)
    total = t_start + 1
    for done, i in enumerate(range(t_start, -1, -1), start=1):
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=device)
        out = diffusion.p_mean_variance(model_fn, x, t, clip_denoised=clip_denoised)
        z = _randn(x.shape, noise, generator, device)
        if i > 0:
            x = out["mean"] + torch.exp(0.5 * out["log_variance"]) * z
        else:
            x = out["mean"]
        if progress is not None:
            progress(done, total)
        yield {"t": i, "sample": x, "pred_xstart": out["pred_xstart"]}


@torch.no_grad()
def ancestral_sample(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    shape: Sequence[int],
    *,
    noise: SeededNoise | None = None,
    generator: torch.Generator | None = None,
    clip_denoised: bool = True,
    progress: Progress | None = None,
    device: str | torch.device | None = None,
    x_start_t: Tensor | None = None,
    t_start: int | None = None,
) -> Tensor:
    """Paper Algorithm 2 via ``p_mean_variance``; returns x_0 (the mean at the last step, no noise)."""
    return _final_sample(ancestral_sample_progressive(
        diffusion, model_fn, shape, noise=noise, generator=generator, clip_denoised=clip_denoised, progress=progress,
        device=device, x_start_t=x_start_t, t_start=t_start))


@torch.no_grad()
def ddim_sample_progressive(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    shape: Sequence[int],
    *,
    eta: float = 0.0,
    noise: SeededNoise | None = None,
    generator: torch.Generator | None = None,
    clip_denoised: bool = True,
    progress: Progress | None = None,
    device: str | torch.device | None = None,
    x_start_t: Tensor | None = None,
    t_start: int | None = None,
) -> Iterator[dict[str, Tensor | int]]:
    """DDIM (Song et al. 2021, Eq. 12) on the given (possibly respaced) diffusion, yielding after every step.

    ``x_{t-1} = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z`` with
    ``sigma = eta sqrt((1 - abar_prev)/(1 - abar)) sqrt(1 - abar/abar_prev)`` and ``eps_hat`` re-derived from
    the (clipped) ``x0_hat``. ``eta = 0`` is deterministic given x_T (no noise is drawn); ``eta = 1`` matches
    ancestral sampling with the fixed_small variance. Yields like :func:`ancestral_sample_progressive`.
    """
    device = _device(diffusion, device)
    x, t_start = _init(diffusion, shape, noise, generator, device, x_start_t, t_start)
    total = t_start + 1
    for done, i in enumerate(range(t_start, -1, -1), start=1):
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=device)
        out = diffusion.p_mean_variance(model_fn, x, t, clip_denoised=clip_denoised)
        eps = diffusion.predict_eps_from_xstart(x, t, out["pred_xstart"])
        abar = extract(diffusion.alphas_cumprod, t, x.shape)
        abar_prev = extract(diffusion.alphas_cumprod_prev, t, x.shape)
        sigma = eta * torch.sqrt((1 - abar_prev) / (1 - abar)) * torch.sqrt(1 - abar / abar_prev)
        x = (
            out["pred_xstart"] * torch.sqrt(abar_prev)
            + torch.sqrt((1 - abar_prev - sigma**2).clamp(min=0)) * eps
        )
        if eta != 0:
            z = _randn(x.shape, noise, generator, device)
            if i > 0:
                x = x + sigma * z
        if progress is not None:
            progress(done, total)
        yield {"t": i, "sample": x, "pred_xstart": out["pred_xstart"]}


@torch.no_grad()
def ddim_sample(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    shape: Sequence[int],
    *,
    eta: float = 0.0,
    noise: SeededNoise | None = None,
    generator: torch.Generator | None = None,
    clip_denoised: bool = True,
    progress: Progress | None = None,
    device: str | torch.device | None = None,
    x_start_t: Tensor | None = None,
    t_start: int | None = None,
) -> Tensor:
    """DDIM sampling (see :func:`ddim_sample_progressive`); returns x_0. Combine with :func:`respace` for
    fewer steps, e.g. ``respace(diffusion, space_timesteps(1000, "ddim50"))``."""
    return _final_sample(ddim_sample_progressive(
        diffusion, model_fn, shape, eta=eta, noise=noise, generator=generator, clip_denoised=clip_denoised,
        progress=progress, device=device, x_start_t=x_start_t, t_start=t_start))


def dpm_solver_timesteps(
    diffusion: GaussianDiffusion, steps: int | None = None, t_start: int | None = None
) -> list[int]:
    """The code indices DPM-Solver++ evaluates the network at, in sampling order (strictly decreasing).

    ``steps`` indices uniform in ``lambda = log(alpha / sigma)`` from ``t_start`` (default ``T-1``) to 0, both
    included: the targets ``lambda(t_start) + i (lambda(0) - lambda(t_start)) / (steps - 1)`` are mapped to the
    nearest code index (lambda interpolated linearly between indices, rounded); where two land on the same
    index (lambda changes by ~0.4 per index near t = 0, so from ~30 steps on for the linear T=1000 schedule),
    the earlier one moves up to one above the next, so near t = 0 every index is used. Up to then these are
    diffusers' ``use_lu_lambdas=True`` timesteps. ``steps=1``: ``[t_start]``; ``None`` or ``steps > t_start``:
    every index. Linear T=1000, steps=10: 999, 886, 757, 603, 410, 202, 73, 22, 5, 0.

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
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    lam = _lambda(diffusion.alphas_cumprod_np[: t_start + 1])  # strictly decreasing in t
    targets = np.linspace(lam[t_start], lam[0], int(steps))
    ts = np.interp(targets, lam[::-1], np.arange(t_start, -1, -1, dtype=np.float64)).round().astype(np.int64)
    # distinct: with gaps g_i = ts_i - (minimal spacing), strictly decreasing ts <=> non-increasing g, which
    # a running max from the end gives (a repeated index moves up); the clip keeps ts_0 <= t_start
    gap = np.arange(steps - 1, -1, -1)
    g = np.maximum.accumulate((ts - gap)[::-1])[::-1].clip(0, t_start - steps + 1)
    return (g + gap).tolist()


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
    """One DPM-Solver++ step from lambda_s0 to lambda_t (Lu et al. 2022b, Alg. 2 with the midpoint D1).

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


@torch.no_grad()
def dpm_solver_sample_progressive(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    shape: Sequence[int],
    *,
    steps: int | None = None,
    timesteps: Sequence[int] | None = None,
    noise: SeededNoise | None = None,
    generator: torch.Generator | None = None,
    clip_denoised: bool = True,
    progress: Progress | None = None,
    device: str | torch.device | None = None,
    x_start_t: Tensor | None = None,
    t_start: int | None = None,
) -> Iterator[dict[str, Tensor | int]]:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2, midpoint form), yielding after every step.

    The probability-flow ODE of the discrete-time DDPM, in ``lambda = log(alpha / sigma)`` with ``alpha =
    sqrt(abar)``, ``sigma = sqrt(1 - abar)`` of the given diffusion's code indices, is solved with the
    multistep second-order data-prediction update: the network is evaluated once per step, at the code
    indices ``t_0 > t_1 > ... > t_{n-1}``, and the step ``t_i -> t_{i+1}`` is

        ``x <- (sigma_{i+1} / sigma_i) x + alpha_{i+1} (1 - e^{-h}) (x0_i + (x0_i - x0_{i-1}) / (2 r))``

    with ``h = lambda_{i+1} - lambda_i``, ``r = (lambda_i - lambda_{i-1}) / h``. The first step is first order
    (no previous ``x0``; = DDIM), and so is the last: from ``t_{n-1}`` the chain goes to the clean image
    (``alpha = 1, sigma = 0``, diffusers' ``final_sigmas_type="zero"``), i.e. it returns the data prediction
    at ``t_{n-1}``. So the number of network evaluations is exactly ``n``.

    ``x0_i`` is ``pred_xstart`` of :meth:`GaussianDiffusion.p_mean_variance` (the same conversion for every
    mean type: from eps, x0 directly, or mu-tilde inverted; the variance channels of a learned variance are
    not used), clamped to [-1, 1] when ``clip_denoised`` (the official default, as for the other samplers;
    diffusers' analogue is ``thresholding`` with ``sample_max_value=1``). Only the starting point is random
    (one draw from ``noise``), so image ``i`` depends only on its seed.

    Timesteps: ``timesteps`` (descending code indices, the first is the start) or
    :func:`dpm_solver_timesteps` (``steps`` indices uniform in lambda from ``t_start``, default ``T-1``, down to
    0 included; ``steps=None``: every index). Use it on the full diffusion with ``steps``; on a respaced one its
    indices are the kept timesteps (fine for eps / x0; a mu network predicts the one-step mu-tilde of the
    original chain, so respacing is wrong for it).

    Yields dicts ``{"t": code index of the evaluation, "sample": the new x (at the next index; x_0 after the
    last step), "pred_xstart": x0_i}``.
    """
    device = _device(diffusion, device)
    if timesteps is None:
        x, t0 = _init(diffusion, shape, noise, generator, device, x_start_t, t_start)
        ts = dpm_solver_timesteps(diffusion, steps, t0)
    else:
        ts = [int(t) for t in timesteps]
        if not ts or any(a <= b for a, b in zip(ts, ts[1:], strict=False)):
            raise ValueError(f"timesteps must be non-empty and strictly decreasing, got {ts}")
        if steps is not None or (t_start is not None and int(t_start) != ts[0]):
            raise ValueError("give either timesteps or steps / t_start (timesteps[0] is the start)")
        x, _ = _init(diffusion, shape, noise, generator, device, x_start_t, ts[0])
    abar = diffusion.alphas_cumprod_np[ts]  # float64
    lam = [*_lambda(abar).tolist(), math.inf]
    alpha = [*np.sqrt(abar).tolist(), 1.0]
    sigma = [*np.sqrt(1.0 - abar).tolist(), 0.0]
    x0_prev: Tensor | None = None
    total = len(ts)
    for i, ti in enumerate(ts):
        t = torch.full((x.shape[0],), ti, dtype=torch.long, device=device)
        x0 = diffusion.p_mean_variance(model_fn, x, t, clip_denoised=clip_denoised)["pred_xstart"]
        lam_prev = lam[i - 1] if i > 0 else None
        x = _dpm_pp_update(x, x0, x0_prev, (lam[i + 1], lam[i], lam_prev), alpha[i + 1], sigma[i + 1] / sigma[i])
        x0_prev = x0
        if progress is not None:
            progress(i + 1, total)
        yield {"t": ti, "sample": x, "pred_xstart": x0}


@torch.no_grad()
def dpm_solver_sample(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    shape: Sequence[int],
    *,
    steps: int | None = None,
    timesteps: Sequence[int] | None = None,
    noise: SeededNoise | None = None,
    generator: torch.Generator | None = None,
    clip_denoised: bool = True,
    progress: Progress | None = None,
    device: str | torch.device | None = None,
    x_start_t: Tensor | None = None,
    t_start: int | None = None,
) -> Tensor:
    """DPM-Solver++(2M) sampling (see :func:`dpm_solver_sample_progressive`) with ``steps`` network
    evaluations; returns x_0. E.g. ``dpm_solver_sample(diffusion, model_fn, shape, steps=20, noise=...)``."""
    return _final_sample(dpm_solver_sample_progressive(
        diffusion, model_fn, shape, steps=steps, timesteps=timesteps, noise=noise, generator=generator,
        clip_denoised=clip_denoised, progress=progress, device=device, x_start_t=x_start_t, t_start=t_start))


def space_timesteps(num_timesteps: int, section_counts: int | str | Sequence[int]) -> list[int]:
    """Which original code indices to keep (improved-diffusion ``space_timesteps``), sorted.

    ``section_counts``: an int or ``"N"`` (N evenly spaced steps incl. the first and last), ``"a,b,c"`` (split
    ``0..T-1`` into equal sections and take a / b / c evenly spaced steps from each; a list works too), or
    ``"ddimN"`` (the fixed stride DDIM uses: ``range(0, T, stride)`` with exactly N elements).
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim") :])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return list(range(0, num_timesteps, stride))
            if desired == 1 and num_timesteps == 1:
                return [0]
            raise ValueError(
                f"cannot create exactly {desired} steps with an integer stride from T={num_timesteps}"
            )
        section_counts = [int(x) for x in section_counts.split(",")]
    elif isinstance(section_counts, int | np.integer):
        section_counts = [int(section_counts)]
    section_counts = list(section_counts)
    size_per = num_timesteps // len(section_counts)
    extra = num_timesteps % len(section_counts)
    start_idx = 0
    all_steps: list[int] = []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide section of {size} steps into {count}")
        frac_stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            all_steps.append(start_idx + round(cur))
            cur += frac_stride
        start_idx += size
    return sorted(set(all_steps))


def respace(diffusion: GaussianDiffusion, use_timesteps: Iterable[int]) -> GaussianDiffusion:
    """A shorter diffusion that keeps the original code indices ``use_timesteps`` (improved-diffusion
    ``SpacedDiffusion``).

    New betas: ``beta_i = 1 - abar_{t_i} / abar_{t_{i-1}}`` (``abar_{t_{-1}} = 1``), so the kept marginals
    ``abar`` are unchanged. ``timestep_map`` holds the original timesteps (composed with the input's map), so
    the network still receives the original t. Same objective types and device as ``diffusion``.
    """
    use = sorted({int(t) for t in use_timesteps})
    if not use:
        raise ValueError("use_timesteps is empty")
    if use[0] < 0 or use[-1] >= diffusion.num_timesteps:
        raise ValueError(f"use_timesteps must lie in [0, {diffusion.num_timesteps - 1}]")
    abar = diffusion.alphas_cumprod_np
    last = 1.0
    new_betas = []
    for i in use:
        new_betas.append(1.0 - abar[i] / last)
        last = abar[i]
    out = GaussianDiffusion(
        np.asarray(new_betas, dtype=np.float64),
        mean_type=diffusion.mean_type,
        var_type=diffusion.var_type,
        loss_type=diffusion.loss_type,
        timestep_map=diffusion.timestep_map_np[use],
    )
    return out.to(diffusion.betas.device)
