"""Samplers on a list of timesteps: ancestral (Paper Algorithm 2, official ``p_sample_loop``) and DDIM, with
timestep respacing; the few-step solvers (DPM-Solver++, its SDE form, Restart) are in
:mod:`ddpm.core.diffusion.solvers`, the lists of timesteps in :mod:`ddpm.core.diffusion.spacing`, and every sampler is
registered by name in :mod:`ddpm.core.diffusion.registry`.

Every sampler is ``fn(diffusion, model_fn, x, timesteps, *, noise=None, generator=None, clip_denoised=True,
progress=None, **params)`` (k-diffusion's ``sample_*(model, x, sigmas)``) and yields ``{"t", "sample",
"pred_xstart"}`` after every network evaluation:

* ``x``: the start, at code index ``timesteps[0]`` (x_T, or a given x_t for interpolation / partial decoding);
* ``timesteps``: the code indices, from a spacing function (:func:`ddpm.core.diffusion.spacing.get_timesteps`);
* ``model_fn(x, t) -> Tensor``: the network (or a wrapper of it: guidance, a label, a mu network read as x_0);
  ``t`` is a ``long`` tensor of original code indices, one per image. Nothing in a sampler knows what it wraps;
* ``noise``: a :class:`~ddpm.core.diffusion.noise.SeededNoise` with ``len(noise) == x.shape[0]``; every per-step
  ``z`` is drawn from it, so image ``i`` depends only on its seed. When ``None``, ``torch.randn`` is used with
  the optional ``generator``;
* ``progress(done_evaluations, total_evaluations)`` is called after every evaluation.

Code index ``k`` is paper time ``k+1``; the loops run ``k = T-1 .. 0``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .gaussian import GaussianDiffusion, ModelFn, extract
from .noise import SeededNoise, randn
from .registry import register

Progress = Callable[[int, int], None]
Step = dict[str, Tensor | int]


def _on_chain(diffusion: GaussianDiffusion, timesteps: Sequence[int]) -> tuple[GaussianDiffusion, int]:
    """The chain a step-by-step sampler runs on and its first index: ``diffusion`` itself when ``timesteps`` is
    every index from its first down to 0, else ``diffusion`` respaced to ``timesteps`` (from its top)."""
    ts = [int(t) for t in timesteps]
    if not ts or any(a <= b for a, b in zip(ts, ts[1:])):
        raise ValueError(f"timesteps must be non-empty and strictly decreasing, got {ts}")
    if ts == list(range(ts[0], -1, -1)):
        return diffusion, ts[0]
    return respace(diffusion, ts), len(ts) - 1


def _chain_steps(t_start: int, batch: int, device: torch.device) -> Iterator[tuple[int, int, Tensor]]:
    """``(steps done, code index i, t)`` for ``i = t_start .. 0`` on a chain, ``t`` the batch's index tensor."""
    for done, i in enumerate(range(t_start, -1, -1), start=1):
        yield done, i, torch.full((batch,), i, dtype=torch.long, device=device)


@register("respaced", spacing="even", respaces=True, uses_variance=True, starts_anywhere=False,
          summary="ancestral on `steps` evenly spaced timesteps, betas recomputed")
@register("ancestral", spacing="full", full_chain=True, uses_variance=True,
          summary="the paper's Algorithm 2, all T steps")
@torch.no_grad()
def ancestral(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    x: Tensor,
    timesteps: Sequence[int],
    *,
    noise: SeededNoise | None = None,
    generator: torch.Generator | None = None,
    clip_denoised: bool = True,
    progress: Progress | None = None,
) -> Iterator[Step]:
    """Ancestral sampling (Algorithm 2 with the official x_0 clipping when ``clip_denoised``) from ``x`` at
    ``timesteps[0]``, yielding after every step.

    Each step at code index ``t`` draws ``x_{t-1} = mean + 1[t != 0] * exp(0.5 log_variance) * z`` from
    :meth:`GaussianDiffusion.p_mean_variance`; ``z`` is drawn at every step, including the last, where it is
    masked. ``timesteps`` that skip indices run on :func:`respace` of ``diffusion`` (improved-diffusion's
    respacing: the betas recomputed for the kept steps).

    Yields dicts ``{"t": code index of the step on the chain it runs on, "sample": the new x (x_0 after the
    last step), "pred_xstart": predicted x_0 at this step}``.
    """
    chain, t_start = _on_chain(diffusion, timesteps)
    device = x.device
    total = t_start + 1
    for done, i, t in _chain_steps(t_start, x.shape[0], device):
        out = chain.p_mean_variance(model_fn, x, t, clip_denoised=clip_denoised)
        z = randn(x.shape, noise, generator, device)
        if i > 0:
            x = out["mean"] + torch.exp(0.5 * out["log_variance"]) * z
        else:
            x = out["mean"]
        if progress is not None:
            progress(done, total)
        yield {"t": i, "sample": x, "pred_xstart": out["pred_xstart"]}


def check_ddim(params: Mapping[str, Any], steps: int | None, diffusion: GaussianDiffusion | None) -> None:
    """``eta >= 0``: sigma is ``eta`` times a positive factor, so a negative eta would silently sample as ``|eta|``."""
    if params.get("eta", 0.0) < 0:
        raise ValueError(f"sampler.eta={params['eta']} must be >= 0 (0: deterministic DDIM; 1: the ancestral "
                         "sampler's fixed_small noise)")


@register("ddim", params={"eta": float}, stochastic="eta", spacing="ddim", respaces=True, starts_anywhere=False,
          check=check_ddim, summary="DDIM (Song et al. 2021) on `steps` strided timesteps; eta=0 is deterministic")
@torch.no_grad()
def ddim(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    x: Tensor,
    timesteps: Sequence[int],
    *,
    eta: float = 0.0,
    noise: SeededNoise | None = None,
    generator: torch.Generator | None = None,
    clip_denoised: bool = True,
    progress: Progress | None = None,
) -> Iterator[Step]:
    """DDIM (Song et al. 2021, Eq. 12) on ``timesteps`` (respaced as :func:`ancestral`), yielding after every step.

    ``x_{t-1} = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z`` with
    ``sigma = eta sqrt((1 - abar_prev)/(1 - abar)) sqrt(1 - abar/abar_prev)`` and ``eps_hat`` re-derived from
    the (clipped) ``x0_hat``. ``eta = 0`` is deterministic given x_T (no noise is drawn); ``eta = 1`` matches
    ancestral sampling with the fixed_small variance. Yields like :func:`ancestral`.
    """
    chain, t_start = _on_chain(diffusion, timesteps)
    device = x.device
    total = t_start + 1
    for done, i, t in _chain_steps(t_start, x.shape[0], device):
        out = chain.p_mean_variance(model_fn, x, t, clip_denoised=clip_denoised)
        eps = chain.predict_eps_from_xstart(x, t, out["pred_xstart"])
        abar = extract(chain.alphas_cumprod, t, x.shape)
        abar_prev = extract(chain.alphas_cumprod_prev, t, x.shape)
        sigma = eta * torch.sqrt((1 - abar_prev) / (1 - abar)) * torch.sqrt(1 - abar / abar_prev)
        x = (
            out["pred_xstart"] * torch.sqrt(abar_prev)
            + torch.sqrt((1 - abar_prev - sigma**2).clamp(min=0)) * eps
        )
        if eta != 0:
            z = randn(x.shape, noise, generator, device)
            if i > 0:
                x = x + sigma * z
        if progress is not None:
            progress(done, total)
        yield {"t": i, "sample": x, "pred_xstart": out["pred_xstart"]}


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
