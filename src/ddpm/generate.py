"""Seeds -> images: the one sampling service behind sample.py, the sample-grid and FID callbacks.

Image ``i`` of a run with base seed ``s`` is drawn from its own generator seeded by
``image_seeds(s, i, i+1)``, so a set of samples is identical whatever the batch size, the number of devices
or the order in which shards are produced.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ddpm.data.base import model_to_uint8 as to_uint8
from ddpm.diffusion import GaussianDiffusion, SeededNoise, image_seeds
from ddpm.diffusion import samplers as S

# to_uint8: [-1, 1] floats -> uint8 (clamp, (x + 1) * 127.5, round), the exact inverse of the data scaling.
# The official code truncates its image summaries; rounding is unbiased (ddpm.metrics.fid.to_uint8 also
# offers mode="floor").
__all__ = ["SAMPLERS", "SamplerConfig", "generate", "make_grid_uint8", "sampling_diffusion", "save_png",
           "seeds_for", "to_uint8"]

SAMPLERS = ("ancestral", "respaced", "ddim", "dpm_solver")


@dataclass
class SamplerConfig:
    """How to run the reverse process.

    :param name: ``ancestral`` (the paper's Algorithm 2, all T steps), ``respaced`` (ancestral on a subset of
        ``steps`` timesteps with recomputed betas), ``ddim`` (``steps`` DDIM steps with ``eta``) or
        ``dpm_solver`` (DPM-Solver++(2M), deterministic, ``steps`` network evaluations; ``eta`` unused).
    :param clip_denoised: clamp the predicted x_0 to [-1, 1] before forming the mean (official default).
    :param var_type: override the objective's variance type for sampling (``fixed_large``/``fixed_small``).
    """

    name: str = "ancestral"
    steps: int | None = None
    eta: float = 0.0
    clip_denoised: bool = True
    var_type: str | None = None

    def __post_init__(self) -> None:
        if self.name not in SAMPLERS:
            raise ValueError(f"sampler={self.name!r} is not a sampler; valid: {list(SAMPLERS)}")
        if self.name != "ancestral" and self.steps is None:
            raise ValueError(f"sampler={self.name} needs steps=S (e.g. steps=100)")

    @property
    def num_steps_label(self) -> str:
        return f"{self.name}{self.steps}" if self.steps else self.name


def sampling_diffusion(diffusion: GaussianDiffusion, sampler: SamplerConfig) -> GaussianDiffusion:
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
    sampler = sampler or SamplerConfig()
    diff = sampling_diffusion(diffusion, sampler).to(device)
    noise = SeededNoise(list(seeds), device=device)
    shape = (len(seeds), *image_shape)
    if sampler.name == "dpm_solver":  # picks its own `steps` timesteps of the full chain (no respacing)
        return S.dpm_solver_sample(
            diff, model_fn, shape, steps=sampler.steps, noise=noise, clip_denoised=sampler.clip_denoised,
            progress=progress,
        )
    if sampler.name == "ddim":
        return S.ddim_sample(
            diff, model_fn, shape, noise=noise, eta=sampler.eta, clip_denoised=sampler.clip_denoised,
            progress=progress,
        )
    return S.ancestral_sample(
        diff, model_fn, shape, noise=noise, clip_denoised=sampler.clip_denoised, progress=progress
    )


def seeds_for(base_seed: int, start: int, stop: int) -> list[int]:
    """Per-image seeds for images ``start .. stop-1`` of a run with ``base_seed``."""
    return image_seeds(base_seed, start, stop)


def make_grid_uint8(images: Tensor, nrow: int | None = None, pad: int = 2, upscale: int = 1) -> Tensor:
    """uint8 ``[N, C, H, W]`` -> one uint8 grid ``[H', W', C]`` (C = 1 or 3), nearest-upscaled by ``upscale``."""
    import math

    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    if upscale > 1:
        images = images.repeat_interleave(upscale, dim=2).repeat_interleave(upscale, dim=3)
        h, w = h * upscale, w * upscale
    rows = math.ceil(n / nrow)
    grid = torch.full((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), 255, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, y : y + h, x : x + w] = images[i]
    return grid.permute(1, 2, 0).contiguous()


def save_png(grid_hwc: Tensor, path) -> None:
    """Write a uint8 HWC (C = 1 or 3) image as PNG, atomically."""
    import os
    from pathlib import Path

    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = grid_hwc.cpu().numpy()
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)
