"""A grid of samples from fixed seeds every N optimizer steps: PNG in the run directory and in the logger."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from ddpm.core.config import SamplerConfig
from ddpm.core.data import model_to_uint8
from ddpm.core.io import make_grid_uint8, save_png
from ddpm.services.generate import condition, generate, seeds_for


class SampleGrid(L.Callback):
    """Every ``every_n_steps`` optimizer steps, rank 0 samples ``num_images`` images (EMA weights by default)
    from the same seeds every time, and writes ``<run>/samples/step_<step>.png``; the image also goes to W&B
    or TensorBoard when those loggers are on. Other ranks do not wait on it (no collective calls).

    The settings and their defaults are in conf/callbacks/default.yaml (``sampler``: the run's ``sampler``
    group); ``dirname``: the folder of the run directory the grids go to."""

    def __init__(
        self,
        *,
        every_n_steps: int,
        num_images: int,
        seed: int,
        sampler: dict | SamplerConfig,
        use_ema: bool,
        upscale: int,
        dirname: str = "samples",
    ) -> None:
        self.every_n_steps = every_n_steps
        self.num_images = num_images
        self.seed = seed
        self.sampler = SamplerConfig.from_node(sampler)
        self.use_ema = use_ema
        self.upscale = upscale
        self.dirname = dirname

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps <= 0 or step == 0 or step % self.every_n_steps != 0:
            return
        if getattr(self, "_last_step", None) == step:  # gradient accumulation: once per optimizer step
            return
        self._last_step = step
        if trainer.is_global_zero:
            self.write_grid(trainer, pl_module, f"step_{step:08d}")

    @torch.no_grad()
    def write_grid(self, trainer, pl_module, name: str) -> Path:
        images = generate(
            pl_module.model_fn(use_ema=self.use_ema),
            pl_module.diffusion,
            seeds_for(self.seed, 0, self.num_images),
            pl_module.image_shape,
            self.sampler,
            device=pl_module.device,
            **condition(getattr(pl_module, "num_classes", None), 0, self.num_images),  # balanced labels, w=0
        )
        grid = make_grid_uint8(model_to_uint8(images).cpu(), upscale=self.upscale)
        path = Path(trainer.default_root_dir) / self.dirname / f"{name}.png"
        save_png(grid, path)
        log_image(trainer, "samples/grid", grid, trainer.global_step)
        return path


def log_image(trainer, key: str, grid_hwc: torch.Tensor, step: int) -> None:
    """Send a uint8 HWC image to whichever image-capable loggers are attached."""
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[grid_hwc.numpy()], step=step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, grid_hwc.numpy(), step, dataformats="HWC")
