"""Seeds -> images: the one service that runs a sampler (:class:`~ddpm.config.SamplerConfig`) for
``sample.py``, the final samples and grids of ``train.py``, the FID callback and the frontier.

Image ``i`` of a run with base seed ``s`` is drawn from its own generator seeded by
``image_seeds(s, i, i+1)``, so a set of samples is identical whatever the batch size, the number of devices
or the order in which shards are produced. The algorithms themselves are in :mod:`ddpm.diffusion.samplers`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ddpm.config import SamplerConfig
from ddpm.diffusion import GaussianDiffusion, SeededNoise, image_seeds
from ddpm.diffusion import samplers as S

__all__ = ["diffusion_for_sampler", "generate", "seeds_for"]


def diffusion_for_sampler(diffusion: GaussianDiffusion, sampler: SamplerConfig) -> GaussianDiffusion:
    """The diffusion to sample with: the variance override and/or the respaced timesteps applied."""
    if sampler.var_type is not None and sampler.var_type != diffusion.var_type.value:
        diffusion = GaussianDiffusion(
            diffusion.betas_np,
            mean_type=diffusion.mean_type,
            var_type=sampler.var_type,
            loss_type="kl" if sampler.var_type in ("learned", "learned_range") else diffusion.loss_type,
            timestep_map=diffusion.timestep_map_np,
        )
    # steps >= T: the full chain (a config tuned for T=1000 still runs on a T=10 test model).
    if sampler.name in ("respaced", "ddim") and sampler.steps < diffusion.num_timesteps:
        section = f"ddim{sampler.steps}" if sampler.name == "ddim" else int(sampler.steps)
        diffusion = S.respace(diffusion, S.space_timesteps(diffusion.num_timesteps, section))
    return diffusion


@torch.no_grad()
def generate(
    model_fn: Callable[[Tensor, Tensor], Tensor],
    diffusion: GaussianDiffusion,
    seeds: Sequence[int],
    image_shape: Sequence[int],
    sampler: SamplerConfig | None = None,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Sample one image per seed; returns float images in [-1, 1], shape ``[len(seeds), C, H, W]``."""
    sampler = sampler or SamplerConfig(name="ancestral")
    diff = diffusion_for_sampler(diffusion, sampler).to(device)
    if diffusion.var_type.is_learned and not diff.var_type.is_learned:
        model_fn = _mean_channels(model_fn, int(image_shape[0]))
    noise = SeededNoise(list(seeds), device=device)
    shape = (len(seeds), *image_shape)
    if sampler.name == "ddim":
        return S.ddim_sample(
            diff, model_fn, shape, noise=noise, eta=sampler.eta, clip_denoised=sampler.clip_denoised,
            progress=progress,
        )
    return S.ancestral_sample(
        diff, model_fn, shape, noise=noise, clip_denoised=sampler.clip_denoised, progress=progress
    )


def _mean_channels(model_fn, channels: int):
    """A learned-variance network sampled with a fixed variance (``sampler.var_type=fixed_*``): its mean
    channels only."""

    def fn(x: Tensor, t: Tensor) -> Tensor:
        return model_fn(x, t)[:, :channels]

    return fn


def check_sampler(diffusion: GaussianDiffusion, sampler: SamplerConfig) -> None:
    """Refuse, before any image is sampled, a sampler that this model cannot run."""
    T = diffusion.num_timesteps
    if sampler.name == "ancestral" and sampler.steps is not None and int(sampler.steps) != T:
        raise ValueError(
            f"sampler=ancestral always runs all T={T} steps; for sampler.steps={sampler.steps} use "
            f"sampler=respaced sampler.steps={sampler.steps} (ancestral on a subset of timesteps) or sampler=ddim"
        )
    if sampler.steps is not None and int(sampler.steps) > T:
        raise ValueError(f"sampler.steps={sampler.steps} exceeds the model's T={T}: use at most {T}")
    wanted = sampler.var_type
    if wanted in ("learned", "learned_range") and not diffusion.var_type.is_learned:
        raise ValueError(
            f"sampler.var_type={wanted}: this model was trained with a fixed variance "
            f"({diffusion.var_type.value}) and has no variance output. Valid: null (its own), fixed_large, "
            "fixed_small."
        )


def seeds_for(base_seed: int, start: int, stop: int) -> list[int]:
    """Per-image seeds for images ``start .. stop-1`` of a run with ``base_seed``."""
    return image_seeds(base_seed, start, stop)
