"""The DDPM math (Ho et al. 2020): schedules, forward/reverse process, losses, bits/dim and samplers.

Imports torch and numpy only. Code index ``t`` in ``0..T-1`` is paper time ``t+1``.
"""

from .gaussian import GaussianDiffusion, ModelFn, extract
from .losses import approx_standard_normal_cdf, discretized_gaussian_log_likelihood, mean_flat, normal_kl
from .noise import SeededNoise
from .registry import SAMPLERS, SPACINGS, SamplerSpec, final_sample, register, register_spacing, validate_sampler
from .samplers import ancestral, ddim, respace, space_timesteps
from .schedules import SCHEDULE_NAMES, betas_for_alpha_bar, get_beta_schedule, schedule_name
from .solvers import dpm_solver, dpm_solver_timesteps, forward_jump, lambda_timesteps, restart_plan
from .spacing import get_timesteps
from .types import LossType, MeanType, VarType, validate_objective

__all__ = [
    "GaussianDiffusion",
    "LossType",
    "MeanType",
    "ModelFn",
    "SAMPLERS",
    "SCHEDULE_NAMES",
    "SPACINGS",
    "SamplerSpec",
    "SeededNoise",
    "VarType",
    "ancestral",
    "approx_standard_normal_cdf",
    "betas_for_alpha_bar",
    "ddim",
    "discretized_gaussian_log_likelihood",
    "dpm_solver",
    "dpm_solver_timesteps",
    "extract",
    "final_sample",
    "forward_jump",
    "get_beta_schedule",
    "get_timesteps",
    "lambda_timesteps",
    "mean_flat",
    "normal_kl",
    "register",
    "register_spacing",
    "respace",
    "restart_plan",
    "schedule_name",
    "space_timesteps",
    "validate_objective",
    "validate_sampler",
]
