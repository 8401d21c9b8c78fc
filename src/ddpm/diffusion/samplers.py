"""Samplers: ancestral (Paper Algorithm 2, official ``p_sample_loop``), DDIM, and timestep respacing; the
few-step solvers (DPM-Solver++, its SDE form, Restart) are in :mod:`ddpm.diffusion.solvers`, and every sampler
is registered by name in :mod:`ddpm.diffusion.registry`.

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

from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from .gaussian import GaussianDiffusion, ModelFn, extract
from .noise import SeededNoise
from .registry import final_sample, register

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


@register("respaced", spacing="even", uses_variance=True,
          summary="ancestral on `steps` evenly spaced timesteps, betas recomputed")
@register("ancestral", full_chain=True, uses_variance=True, summary="the paper's Algorithm 2, all T steps")
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
    return final_sample(ancestral_sample_progressive(
        diffusion, model_fn, shape, noise=noise, generator=generator, clip_denoised=clip_denoised, progress=progress,
        device=device, x_start_t=x_start_t, t_start=t_start))


@register("ddim", params={"eta": float}, stochastic="eta", spacing="ddim",
          summary="DDIM (Song et al. 2021) on `steps` strided timesteps; eta=0 is deterministic")
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
    return final_sample(ddim_sample_progressive(
        diffusion, model_fn, shape, eta=eta, noise=noise, generator=generator, clip_denoised=clip_denoised,
        progress=progress, device=device, x_start_t=x_start_t, t_start=t_start))


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
