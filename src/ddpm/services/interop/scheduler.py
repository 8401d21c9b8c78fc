"""The diffusion settings as a diffusers ``DDPMScheduler`` ``scheduler_config.json``, both ways.

Names go through the one table of :mod:`ddpm.services.interop.names`; the betas travel exactly as ``trained_betas``
(float64 JSON numbers), which diffusers uses in preference to ``beta_schedule``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ddpm.core.diffusion import SCHEDULE_NAMES, GaussianDiffusion, get_beta_schedule, schedule_name
from ddpm.services.interop.names import PREDICTIONS, SCHEDULES, VARIANCES, NotExportableError
from ddpm.services.interop.unet import stamp_diffusers_version

#: Scheduler keys whose other values change how diffusers samples, with the value that samples as we do.
SAMPLES_AS_DDPM = {"thresholding": False, "rescale_betas_zero_snr": False, "clip_sample_range": 1.0}


def default_diffusion_settings(resolution: int) -> dict[str, Any]:
    """The official sampling settings: linear schedule, T=1000, eps, clipping;
    fixed_large at 32x32 (CIFAR-10), fixed_small at 256x256 (LSUN / CelebA-HQ)."""
    return {
        "schedule": "linear",
        "num_timesteps": 1000,
        "mean_type": "eps",
        "var_type": "fixed_large" if resolution <= 32 else "fixed_small",
        "clip_denoised": True,
    }


def schedule_of_betas(betas: Sequence[float]) -> str:
    """The name of our schedule whose float64 betas equal ``betas`` exactly (a scheduler's ``trained_betas``);
    ``ValueError`` when none does (the project builds its diffusion from a named schedule)."""
    name = schedule_name([float(b) for b in betas])
    if name is None:
        raise ValueError(
            f"scheduler trained_betas (T={len(betas)}) equal none of this project's schedules "
            f"{list(SCHEDULE_NAMES)} bit for bit; only betas exported by `python -m ddpm.export` (or a named "
            "beta_schedule) can be read"
        )
    return name


def _check_endpoints(schedule: str, T: int, sched: Mapping[str, Any]) -> None:
    """A named linear / quad schedule must have our endpoints (1e-4 -> 0.02 scaled by 1000/T)."""
    if schedule not in ("linear", "quad"):
        return  # the cosine schedule has no endpoints to set
    betas = get_beta_schedule(schedule, T)
    for key, want in (("beta_start", float(betas[0])), ("beta_end", float(betas[-1]))):
        if key in sched and not math.isclose(float(sched[key]), want, rel_tol=1e-6):
            raise ValueError(f"scheduler {key}={sched[key]} differs from this project's {schedule} schedule at "
                             f"T={T} ({want})")


def apply_scheduler_config(info: dict[str, Any], sched: Mapping[str, Any]) -> dict[str, Any]:
    """Override ``info`` with a diffusers ``scheduler_config.json`` (DDPMScheduler keys, or the early
    ``GaussianDDPMScheduler`` ``timesteps``). Keys that are absent leave ``info`` unchanged. ``trained_betas``
    (what ``python -m ddpm.export`` writes) win over ``beta_schedule``, as in diffusers, and must be one of
    our schedules exactly (:func:`schedule_of_betas`)."""
    info = dict(info)
    for key, want in SAMPLES_AS_DDPM.items():
        if key in sched and sched[key] != want and not (key == "clip_sample_range" and not sched.get("clip_sample")):
            raise ValueError(f"scheduler {key}={sched[key]!r} changes how diffusers samples; this project samples "
                             f"as {key}={want!r}")
    if "num_train_timesteps" in sched or "timesteps" in sched:
        info["num_timesteps"] = int(sched.get("num_train_timesteps", sched.get("timesteps")))
    if sched.get("trained_betas") is not None:
        info["schedule"] = schedule_of_betas(sched["trained_betas"])
        info["num_timesteps"] = len(sched["trained_betas"])
    else:
        if "beta_schedule" in sched:
            info["schedule"] = SCHEDULES.from_diffusers(sched["beta_schedule"])
        _check_endpoints(info["schedule"], info["num_timesteps"], sched)
    if sched.get("variance_type") is not None:
        info["var_type"] = VARIANCES.from_diffusers(sched["variance_type"])
    if "clip_sample" in sched:
        info["clip_denoised"] = bool(sched["clip_sample"])
    if "prediction_type" in sched:
        info["mean_type"] = PREDICTIONS.from_diffusers(sched["prediction_type"])
    return info


def check_exportable(diffusion: GaussianDiffusion) -> None:
    """Raise :class:`NotExportableError` (one line, with the reason) unless a diffusers ``DDPMScheduler``
    samples ``diffusion`` exactly."""
    PREDICTIONS.to_diffusers(diffusion.mean_type)
    VARIANCES.to_diffusers(diffusion.var_type)
    if not np.array_equal(diffusion.timestep_map_np, np.arange(diffusion.num_timesteps)):
        raise NotExportableError("a respaced diffusion cannot be exported; export the trained one")


def diffusers_scheduler_config(diffusion: GaussianDiffusion, clip_denoised: bool = True) -> dict[str, Any]:
    """The ``DDPMScheduler`` config that samples ``diffusion`` as our ancestral sampler does.

    ``trained_betas`` holds the float64 betas exactly (JSON numbers are float64; ``repr`` round-trips):
    diffusers builds its named schedules in float32 arithmetic (``torch.linspace``), which does not reproduce
    them bit for bit, while ``trained_betas`` cast to float32 equals our float32 buffer. ``beta_schedule`` /
    ``beta_start`` / ``beta_end`` name the schedule for the reader, and are what
    :func:`apply_scheduler_config` reads when ``trained_betas`` are dropped.
    """
    check_exportable(diffusion)
    schedule = schedule_name(diffusion.betas_np)
    betas = [float(b) for b in diffusion.betas_np]
    config: dict[str, Any] = {"_class_name": "DDPMScheduler", "num_train_timesteps": diffusion.num_timesteps}
    if schedule is not None:
        config["beta_schedule"] = SCHEDULES.to_diffusers(schedule)
    config["beta_start"], config["beta_end"] = betas[0], betas[-1]
    config.update(
        trained_betas=betas,
        variance_type=VARIANCES.to_diffusers(diffusion.var_type),
        clip_sample=bool(clip_denoised),
        prediction_type=PREDICTIONS.to_diffusers(diffusion.mean_type),
        timestep_spacing="leading",
        steps_offset=0,
        **SAMPLES_AS_DDPM,
    )
    return stamp_diffusers_version(config)
