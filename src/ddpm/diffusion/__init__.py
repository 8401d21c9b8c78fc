"""The DDPM math (Ho et al. 2020): schedules, forward/reverse process, losses, bits/dim and samplers.

Imports torch and numpy only. Code index ``t`` in ``0..T-1`` is paper time ``t+1``.
"""

from .gaussian import GaussianDiffusion, ModelFn, extract
from .losses import approx_standard_normal_cdf, discretized_gaussian_log_likelihood, mean_flat, normal_kl
from .noise import SeededNoise
from .registry import SAMPLERS, SamplerSpec
from .samplers import (
    ancestral_sample,
    ancestral_sample_progressive,
    ddim_sample,
    ddim_sample_progressive,
    respace,
    space_timesteps,
)
from .schedules import SCHEDULE_NAMES, betas_for_alpha_bar, get_beta_schedule, schedule_name
from .solvers import (
    dpm_solver_sample,
    dpm_solver_sample_progressive,
    dpm_solver_timesteps,
    forward_jump,
    lambda_timesteps,
    restart_sample_progressive,
)
from .types import LossType, MeanType, VarType, validate_objective

__all__ = [
    "GaussianDiffusion",
    "LossType",
    "MeanType",
    "ModelFn",
    "SAMPLERS",
    "SCHEDULE_NAMES",
    "SamplerSpec",
    "SeededNoise",
    "VarType",
    "ancestral_sample",
    "ancestral_sample_progressive",
    "approx_standard_normal_cdf",
    "betas_for_alpha_bar",
    "ddim_sample",
    "ddim_sample_progressive",
    "discretized_gaussian_log_likelihood",
    "dpm_solver_sample",
    "dpm_solver_sample_progressive",
    "dpm_solver_timesteps",
    "forward_jump",
    "lambda_timesteps",
    "restart_sample_progressive",
    "extract",
    "get_beta_schedule",
    "mean_flat",
    "normal_kl",
    "respace",
    "schedule_name",
    "space_timesteps",
    "validate_objective",
]
