"""The samplers by name: each algorithm is one progressive function, registered with the parameters it takes.

Everything that chooses a sampler (``ddpm.config.SamplerConfig``, ``ddpm.generate``, the figures, the frontier,
the report) reads :data:`SAMPLERS` instead of naming samplers. Adding a sampler is its function (decorated with
:func:`register`), its ``conf/sampler/NAME.yaml`` and its tests.

A registered function is a generator ``fn(diffusion, model_fn, shape, *, noise, generator, clip_denoised,
progress, device, x_start_t, t_start, [steps], **params)`` that yields ``{"t", "sample", "pred_xstart"}`` after
every network evaluation (see :mod:`ddpm.diffusion.samplers`). How ``steps`` reaches it depends on ``spacing``:

* ``full_chain=True`` (``ancestral``): all T steps, ``steps`` must be unset or T;
* ``spacing="even"`` / ``"ddim"`` (``respaced``, ``ddim``): the function runs on ``respace(diffusion, ...)`` with
  ``steps`` kept timesteps (improved-diffusion's even spacing, or DDIM's fixed stride) and takes no ``steps``;
* ``spacing=None`` (the solvers): the function runs on the full chain and places its ``steps`` evaluations
  itself.

``steps`` always means the network evaluations per image, so samplers compare at equal cost.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

__all__ = ["SAMPLERS", "SamplerSpec", "register", "final_sample"]


def final_sample(steps: Iterator[dict[str, Any]]) -> Tensor:
    """Run a progressive sampler to the end; its last ``sample`` (x_0)."""
    (final,) = deque(steps, maxlen=1)
    return final["sample"]


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler.

    :param params: the sampler's own settings (``sampler.<key>`` in the config) and their types; their defaults
        are in ``conf/sampler/NAME.yaml``.
    :param stochastic: whether it injects noise after ``x_T`` (a deterministic one maps x_T to one image); the
        name of a parameter (DDIM's ``eta``) when that parameter being non-zero makes it stochastic.
    :param spacing: ``"even"`` / ``"ddim"``: runs on a respaced diffusion of ``steps`` timesteps; ``None``: on the
        full chain, placing its ``steps`` evaluations itself.
    :param full_chain: always all T steps (``steps`` unset or T).
    :param uses_variance: whether it draws with the reverse process's variance (so a one-step learned variance
        cannot be used on a respaced chain).
    :param starts_anywhere: whether it takes ``x_start_t`` / ``t_start`` (start from a given x_t, for
        interpolation and partial decoding) or always starts at x_T.
    :param bound: keyword arguments always passed to the function (one function, several samplers: DPM-Solver++
        is registered as ``dpm_solver`` and, with ``sde=True``, as ``dpm_solver_sde``).
    :param check: ``check(params, steps, diffusion)`` raises ``ValueError`` naming ``sampler.<key>`` for a bad
        value, before any sampling; ``diffusion`` is ``None`` when the config is checked before the model is
        loaded (then only what does not depend on T).
    """

    name: str
    progressive: Callable[..., Iterator[dict[str, Any]]]
    params: Mapping[str, type] = field(default_factory=dict)
    stochastic: bool | str = True
    spacing: str | None = None
    full_chain: bool = False
    uses_variance: bool = False
    starts_anywhere: bool = True
    bound: Mapping[str, Any] = field(default_factory=dict)
    check: Callable[[Mapping[str, Any], int | None, Any], None] | None = None
    summary: str = ""

    @property
    def takes_steps(self) -> bool:
        """Whether the function itself takes ``steps`` (it places its evaluations on the full chain)."""
        return self.spacing is None and not self.full_chain

    def is_stochastic(self, params: Mapping[str, Any]) -> bool:
        """Whether sampling with these settings injects noise after ``x_T``."""
        if isinstance(self.stochastic, str):
            return float(params.get(self.stochastic) or 0.0) != 0.0
        return self.stochastic

    def evaluations(self, steps: int | None, num_timesteps: int) -> int:
        """Network evaluations per image."""
        return num_timesteps if self.full_chain or steps is None else min(int(steps), num_timesteps)

    def run(self, *args: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """:attr:`progressive` with the :attr:`bound` arguments."""
        return self.progressive(*args, **self.bound, **kwargs)

    def sample(self, *args: Any, **kwargs: Any) -> Tensor:
        """Run the sampler to the end; returns x_0."""
        return final_sample(self.run(*args, **kwargs))


SAMPLERS: dict[str, SamplerSpec] = {}


def register(name: str, **spec: Any) -> Callable:
    """Register the decorated progressive sampling function under ``name`` (a :class:`SamplerSpec` field each
    keyword); the same function may be registered under several names with different spacings."""

    def deco(fn: Callable) -> Callable:
        if name in SAMPLERS:
            raise ValueError(f"a sampler named {name!r} is already registered")
        SAMPLERS[name] = SamplerSpec(name=name, progressive=fn, **spec)
        return fn

    return deco
