"""Named spacing functions: the explicit list of code indices a sampler visits (k-diffusion's ``get_sigmas_*``).

A spacing function ``fn(diffusion, steps, t_start=None, **params) -> list[int]`` gives the code indices, in
sampling order, from ``t_start`` (default ``T-1``, the first element) down; every sampler
(:mod:`ddpm.core.diffusion.samplers`, :mod:`ddpm.core.diffusion.solvers`) takes that list. An index is a network
evaluation, except one followed by a larger index: there the chain only lands, then jumps back up with the
forward process to the next index (Restart's jumps). ``steps`` is the number of network evaluations:

* ``full``: every index, ``t_start .. 0`` (the paper's Algorithm 2; ``steps`` unused);
* ``even``: ``steps`` evenly spaced indices (improved-diffusion's ``space_timesteps(T, steps)``);
* ``ddim``: DDIM's fixed stride (``space_timesteps(T, "ddim<steps>")``);
* ``logsnr``: ``steps`` indices uniform in lambda = log(alpha / sigma) (DPM-Solver++, its SDE form);
* ``restart``: the ``logsnr`` main pass with ``restart_k`` restart passes inside it (registered beside its plan,
  :func:`ddpm.core.diffusion.solvers.restart_timesteps`).

``even`` and ``ddim`` with ``steps >= T`` give the full chain (a config tuned for T=1000 still runs on a T=10
model). Adding a spacing is a function decorated with :func:`register_spacing`.
"""

from __future__ import annotations

from .gaussian import GaussianDiffusion
from .registry import SPACINGS, register_spacing
from .samplers import space_timesteps
from .solvers import dpm_solver_timesteps

__all__ = ["SPACINGS", "register_spacing", "get_timesteps", "num_evaluations", "full_timesteps",
           "even_timesteps", "ddim_timesteps", "logsnr_timesteps"]


def get_timesteps(name: str, diffusion: GaussianDiffusion, steps: int | None, t_start: int | None = None,
                  **params) -> list[int]:
    """The code indices of spacing ``name`` (see the module docstring)."""
    return SPACINGS[name](diffusion, steps, t_start, **params)


def num_evaluations(timesteps: list[int]) -> int:
    """Network evaluations of a list: every index but those followed by a larger one (landings before a jump)."""
    return len(timesteps) - sum(b > a for a, b in zip(timesteps, timesteps[1:]))


def _start(diffusion: GaussianDiffusion, t_start: int | None) -> int:
    T = diffusion.num_timesteps
    t = T - 1 if t_start is None else int(t_start)
    if not 0 <= t < T:
        raise ValueError(f"t_start must be in [0, {T - 1}], got {t_start}")
    return t


@register_spacing("full")
def full_timesteps(diffusion: GaussianDiffusion, steps: int | None = None, t_start: int | None = None) -> list[int]:
    """Every index from ``t_start`` (default ``T-1``) down to 0."""
    return list(range(_start(diffusion, t_start), -1, -1))


def _respaced(diffusion: GaussianDiffusion, steps: int, t_start: int | None, section: int | str) -> list[int]:
    if t_start is not None and int(t_start) != diffusion.num_timesteps - 1:
        raise ValueError("a respaced chain starts at T-1 (t_start is only for spacing=full/logsnr)")
    if int(steps) >= diffusion.num_timesteps:
        return full_timesteps(diffusion)
    return sorted(space_timesteps(diffusion.num_timesteps, section), reverse=True)


@register_spacing("even")
def even_timesteps(diffusion: GaussianDiffusion, steps: int, t_start: int | None = None) -> list[int]:
    """``steps`` evenly spaced indices including ``T-1`` and 0 (improved-diffusion's even respacing)."""
    return _respaced(diffusion, steps, t_start, int(steps))


@register_spacing("ddim")
def ddim_timesteps(diffusion: GaussianDiffusion, steps: int, t_start: int | None = None) -> list[int]:
    """DDIM's fixed stride: ``range(0, T, stride)`` with exactly ``steps`` elements, descending."""
    return _respaced(diffusion, steps, t_start, f"ddim{int(steps)}")


@register_spacing("logsnr")
def logsnr_timesteps(diffusion: GaussianDiffusion, steps: int | None, t_start: int | None = None) -> list[int]:
    """``steps`` indices uniform in lambda from ``t_start`` down to 0
    (:func:`~ddpm.core.diffusion.solvers.dpm_solver_timesteps`)."""
    return dpm_solver_timesteps(diffusion, steps, t_start)
