"""The samplers and the spacings by name, and the one place a sampler's settings are validated.

Everything that chooses a sampler (``ddpm.core.config.SamplerConfig``, ``ddpm.services.generate``, the figures, the frontier,
the report) reads :data:`SAMPLERS` instead of naming samplers. Adding a sampler is its function (decorated with
:func:`register`), its ``conf/sampler/NAME.yaml`` and its tests; a new placement of timesteps is a spacing
function (decorated with :func:`register_spacing`, see :mod:`ddpm.core.diffusion.spacing`).

A sampler is k-diffusion's ``get_sigmas_*`` + ``sample_*``: the spacing named by the registration gives the
explicit list of code indices (``steps`` network evaluations), and the function is a generator
``fn(diffusion, model_fn, x, timesteps, *, noise, generator, clip_denoised, progress, **params)`` that yields
``{"t", "sample", "pred_xstart"}`` after every evaluation (:mod:`ddpm.core.diffusion.samplers`). ``model_fn(x, t)``
may be any wrapper of the network with that signature (guidance, a class label): no sampler knows about it.
:meth:`SamplerSpec.run` composes the two from a shape and seeds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .noise import SeededNoise, randn
from .types import VarType

__all__ = ["SAMPLERS", "SPACINGS", "SamplerSpec", "register", "register_spacing", "final_sample", "validate_sampler",
           "COMMON_SAMPLER_KEYS"]

COMMON_SAMPLER_KEYS = ("name", "steps", "clip_denoised", "var_type")
SPACINGS: dict[str, Callable[..., list[int]]] = {}


def final_sample(steps: Iterator[dict[str, Any]]) -> Tensor:
    """Run a progressive sampler to the end; its last ``sample`` (x_0)."""
    (final,) = deque(steps, maxlen=1)
    return final["sample"]


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler.

    :param spacing: the name of its spacing function (:data:`SPACINGS`), which gives the list of timesteps.
    :param params: the sampler function's own settings (``sampler.<key>`` in the config) and their types;
        ``spacing_params`` the same for the spacing function's. Their defaults are in ``conf/sampler/NAME.yaml``.
    :param stochastic: whether it injects noise after ``x_T`` (a deterministic one maps x_T to one image); the
        name of a parameter (DDIM's ``eta``) when that parameter being non-zero makes it stochastic.
    :param full_chain: always all T steps (``steps`` unset or T).
    :param respaces: whether a list that skips indices runs on the chain respaced to it (improved-diffusion's
        respacing: ``ancestral``, ``ddim``) rather than on the model's own chain (the solvers).
    :param uses_variance: whether it draws with the reverse process's variance (so a one-step learned variance
        cannot be used on a respaced chain).
    :param starts_anywhere: whether its spacing takes ``t_start`` (start from a given x_t, for interpolation and
        partial decoding) or always starts at x_T.
    :param bound: keyword arguments always passed to the function (one function, several samplers: DPM-Solver++
        is registered as ``dpm_solver`` and, with ``sde=True``, as ``dpm_solver_sde``).
    :param check: ``check(params, steps, diffusion)`` raises ``ValueError`` naming ``sampler.<key>`` for a bad
        relation between values, called by :func:`validate_sampler` only; ``diffusion`` is ``None`` when the
        config is checked before the model is loaded (then only what does not depend on T).
    """

    name: str
    fn: Callable[..., Iterator[dict[str, Any]]]
    spacing: str
    params: Mapping[str, type] = field(default_factory=dict)
    spacing_params: Mapping[str, type] = field(default_factory=dict)
    stochastic: bool | str = True
    full_chain: bool = False
    respaces: bool = False
    uses_variance: bool = False
    starts_anywhere: bool = True
    bound: Mapping[str, Any] = field(default_factory=dict)
    check: Callable[[Mapping[str, Any], int | None, Any], None] | None = None
    summary: str = ""

    @property
    def all_params(self) -> dict[str, type]:
        """Every setting of its own (the function's and the spacing's)."""
        return {**self.params, **self.spacing_params}

    def is_stochastic(self, params: Mapping[str, Any]) -> bool:
        """Whether sampling with these settings injects noise after ``x_T``."""
        if isinstance(self.stochastic, str):
            return float(params.get(self.stochastic) or 0.0) != 0.0
        return self.stochastic

    def evaluations(self, steps: int | None, num_timesteps: int) -> int:
        """Network evaluations per image."""
        return num_timesteps if self.full_chain or steps is None else min(int(steps), num_timesteps)

    def timesteps(self, diffusion: Any, steps: int | None, params: Mapping[str, Any] | None = None,
                  t_start: int | None = None) -> list[int]:
        """Its spacing's list of code indices for ``steps`` evaluations (from ``t_start``, default T-1)."""
        kw = {k: (params or {})[k] for k in self.spacing_params}
        return SPACINGS[self.spacing](diffusion, steps, t_start, **kw)

    def run(self, diffusion: Any, model_fn: Callable[[Tensor, Tensor], Tensor], shape: Sequence[int], *,
            steps: int | None = None, noise: SeededNoise | None = None, generator: torch.Generator | None = None,
            clip_denoised: bool = True, progress: Callable[[int, int], None] | None = None,
            device: str | torch.device | None = None, x_start_t: Tensor | None = None, t_start: int | None = None,
            **params: Any) -> Iterator[dict[str, Any]]:
        """The sampler's progressive function on its spacing's timesteps for ``steps`` evaluations, from ``x_T``
        drawn from ``noise`` (or ``generator``) or from ``x_start_t`` at code index ``t_start``; ``params`` are its
        own settings (``eta=0.5``). ``device`` defaults to the diffusion's."""
        unknown = set(params) - set(self.all_params)
        if unknown:
            raise TypeError(f"sampler {self.name} has no setting {sorted(unknown)}; valid: {sorted(self.all_params)}")
        ts = self.timesteps(diffusion, steps, params, t_start)
        device = torch.device(device) if device is not None else diffusion.betas.device
        if x_start_t is None:
            x = randn(shape, noise, generator, device)
        elif tuple(x_start_t.shape) != tuple(shape):
            raise ValueError(f"x_start_t has shape {tuple(x_start_t.shape)}, expected {tuple(shape)}")
        else:
            x = x_start_t.to(device=device, dtype=torch.float32)
        own = {k: params[k] for k in self.params if k in params}
        return self.fn(diffusion, model_fn, x, ts, noise=noise, generator=generator, clip_denoised=clip_denoised,
                       progress=progress, **self.bound, **own)

    def sample(self, *args: Any, **kwargs: Any) -> Tensor:
        """:meth:`run` to the end; returns x_0."""
        return final_sample(self.run(*args, **kwargs))


SAMPLERS: dict[str, SamplerSpec] = {}


def register(name: str, **spec: Any) -> Callable:
    """Register the decorated progressive sampling function under ``name`` (a :class:`SamplerSpec` field each
    keyword); the same function may be registered under several names with different spacings."""

    def deco(fn: Callable) -> Callable:
        if name in SAMPLERS:
            raise ValueError(f"a sampler named {name!r} is already registered")
        SAMPLERS[name] = SamplerSpec(name=name, fn=fn, **spec)
        return fn

    return deco


def register_spacing(name: str) -> Callable:
    """Register the decorated spacing function ``fn(diffusion, steps, t_start=None, **params) -> list[int]``."""

    def deco(fn: Callable[..., list[int]]) -> Callable[..., list[int]]:
        if name in SPACINGS:
            raise ValueError(f"a spacing named {name!r} is already registered")
        SPACINGS[name] = fn
        return fn

    return deco


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def validate_sampler(name: Any, steps: Any, params: Mapping[str, Any], var_type: Any = None,
                     diffusion: Any = None) -> dict[str, Any]:
    """Every check of a sampler's settings, each error one ``ValueError`` naming ``sampler.<key>``, what is valid
    and the fix; returns ``params`` with their types. Without ``diffusion`` only what does not depend on the
    model (the config's values, before the model is loaded); with it, also steps against its T and the variance
    against its output."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler.name={name!r} is not a sampler; valid: {list(SAMPLERS)}")
    spec = SAMPLERS[name]
    if steps is not None and not _is_int(steps):
        raise ValueError(f"sampler.steps={steps!r} must be an integer >= 1 (network evaluations per image)")
    if not spec.full_chain and (steps is None or int(steps) < 1):
        raise ValueError(f"sampler={name} needs sampler.steps >= 1 (network evaluations, e.g. sampler.steps=100), "
                         f"got {steps}")
    if var_type is not None and var_type not in [v.value for v in VarType]:
        raise ValueError(f"sampler.var_type={var_type!r} is not a variance type; valid: null (the model's own), "
                         f"{sorted({v.value for v in VarType})}")
    unknown = sorted(set(params) - set(spec.all_params))
    if unknown:
        valid = ", ".join(f"sampler.{k}" for k in (*COMMON_SAMPLER_KEYS, *spec.all_params))
        raise ValueError(f"sampler.{unknown[0]} is not a setting of sampler={name}; valid: {valid} "
                         f"(conf/sampler/{name}.yaml).")
    typed = dict(params)
    for key, kind in spec.all_params.items():
        value = typed.get(key)
        ok = _is_num(value) if kind is float else _is_int(value) if kind is int else isinstance(value, kind)
        if not ok:
            raise ValueError(f"sampler.{key}={value!r} must be {'a number' if kind is float else 'an integer'} "
                             f"(sampler={name}; see conf/sampler/{name}.yaml)")
        typed[key] = kind(value)
    if spec.check is not None:
        spec.check(typed, steps, diffusion)
    if diffusion is not None:
        _check_against_model(spec, steps, var_type, diffusion)
    return typed


def _refuse_steps_above(steps: Any, num_timesteps: int) -> None:
    if steps is not None and int(steps) > num_timesteps:
        raise ValueError(f"sampler.steps={steps} exceeds the model's T={num_timesteps}: use at most {num_timesteps}")


def check_steps_within(name: str, steps: Any, num_timesteps: int) -> None:
    """``sampler.steps`` of a sampler that takes them at most the model's T (a full-chain sampler runs all T
    whatever ``steps`` says; :func:`validate_sampler` checks the rest with the model)."""
    if not SAMPLERS[name].full_chain:
        _refuse_steps_above(steps, num_timesteps)


def _check_against_model(spec: SamplerSpec, steps: int | None, var_type: str | None, diffusion: Any) -> None:
    T = diffusion.num_timesteps
    _refuse_steps_above(steps, T)  # before the full-chain advice, which would suggest as many steps
    if spec.full_chain and steps is not None and int(steps) != T:
        raise ValueError(
            f"sampler={spec.name} always runs all T={T} steps; for sampler.steps={steps} use "
            f"sampler=respaced sampler.steps={steps} (ancestral on a subset of timesteps) or another of "
            f"{[n for n, s in SAMPLERS.items() if not s.full_chain]}"
        )
    raw_learned = (var_type or diffusion.var_type.value) == "learned"
    if spec.uses_variance and raw_learned and spec.respaces and steps is not None and int(steps) < T:
        raise ValueError(
            f"sampler={spec.name} sampler.steps={steps}: this model's variance is learned as a one-step "
            "log-variance (var_type=learned), which a step over several timesteps cannot use. Valid: "
            "sampler=ancestral, sampler=ddim (no learned variance needed), or sampler.var_type=fixed_large / "
            "fixed_small with sampler=respaced."
        )
    if var_type in ("learned", "learned_range") and not diffusion.var_type.is_learned:
        raise ValueError(
            f"sampler.var_type={var_type}: this model was trained with a fixed variance "
            f"({diffusion.var_type.value}) and has no variance output. Valid: null (its own), fixed_large, "
            "fixed_small."
        )
