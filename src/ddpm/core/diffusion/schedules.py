"""Variance (beta) schedules, built in float64 numpy as in the official code.

``betas[k]`` is paper beta_{k+1}: code index ``k`` in ``0..T-1`` is paper time ``t = k+1``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

#: The paper's linear schedule endpoints (T = 1000).
LINEAR_BETA_START = 1e-4
LINEAR_BETA_END = 0.02
#: Largest beta allowed by the cosine schedule (Improved DDPM) and by short linear/quad schedules.
MAX_BETA = 0.999


def _scaled_endpoints(num_timesteps: int) -> tuple[float, float]:
    # improved-diffusion: scale the T=1000 endpoints by 1000/T so any T has a similar total noise level.
    scale = 1000.0 / num_timesteps
    return LINEAR_BETA_START * scale, LINEAR_BETA_END * scale


def _linear(num_timesteps: int) -> np.ndarray:
    start, end = _scaled_endpoints(num_timesteps)
    return np.linspace(start, end, num_timesteps, dtype=np.float64)


def _quad(num_timesteps: int) -> np.ndarray:
    start, end = _scaled_endpoints(num_timesteps)
    return np.linspace(start**0.5, end**0.5, num_timesteps, dtype=np.float64) ** 2


def betas_for_alpha_bar(
    num_timesteps: int, alpha_bar: Callable[[float], float], max_beta: float = MAX_BETA
) -> np.ndarray:
    """Discretise a continuous ``alpha_bar(u)``, ``u in [0, 1]``: beta_i = min(1 - abar((i+1)/T)/abar(i/T),
    max)."""
    betas = [
        min(1.0 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
        for i in range(num_timesteps)
    ]
    return np.asarray(betas, dtype=np.float64)


def _cosine(num_timesteps: int) -> np.ndarray:
    return betas_for_alpha_bar(num_timesteps, lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2)


_SCHEDULES: dict[str, Callable[[int], np.ndarray]] = {
    "linear": _linear,
    "cosine": _cosine,
    "quad": _quad,
}

SCHEDULE_NAMES: tuple[str, ...] = tuple(_SCHEDULES)


def get_beta_schedule(name: str, num_timesteps: int) -> np.ndarray:
    """Return ``betas`` (float64, shape ``[T]``) of the named schedule.

    * ``"linear"``: ``linspace(1e-4 * s, 0.02 * s, T)`` with ``s = 1000/T`` (improved-diffusion's scaling), so
      ``T = 1000`` is exactly the paper's schedule (Ho et al. §4).
    * ``"quad"``: the official code's ``quad``: ``linspace(sqrt(start), sqrt(end), T) ** 2`` with the same
      scaled
      endpoints as ``linear``.
    * ``"cosine"``: Improved DDPM (Nichol & Dhariwal 2021), ``abar(u) = cos^2((u + 0.008)/1.008 * pi/2)``,
      betas capped at 0.999.

    For ``T <= 20`` the scaled linear/quad endpoints reach 1, so those betas are capped at 0.999 (a beta of 1
    would make ``abar`` exactly 0 and the posterior undefined). For ``T > 20`` no cap is applied.
    """
    if name not in _SCHEDULES:
        raise ValueError(f"unknown beta schedule {name!r}; valid names: {list(SCHEDULE_NAMES)}")
    if int(num_timesteps) != num_timesteps or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be a positive integer, got {num_timesteps!r}")
    betas = _SCHEDULES[name](int(num_timesteps))
    betas = np.minimum(betas, MAX_BETA)
    assert betas.dtype == np.float64 and betas.shape == (num_timesteps,)
    assert np.all(betas > 0) and np.all(betas < 1)
    return betas


def schedule_name(betas: np.ndarray | list[float]) -> str | None:
    """The name of the schedule whose float64 betas equal ``betas`` exactly (same length), else ``None``."""
    given = np.asarray(betas, dtype=np.float64)
    if given.ndim != 1 or given.size < 1:
        return None
    for name in SCHEDULE_NAMES:
        if np.array_equal(get_beta_schedule(name, given.size), given):
            return name
    return None
