"""Network architectures; plain torch, no diffusion logic."""

from ddpm.core.nets.layers import timestep_embedding
from ddpm.core.nets.unet import UNet

__all__ = ["UNet", "timestep_embedding"]
