"""Network architectures; plain torch, no diffusion logic."""

from ddpm.nets.layers import timestep_embedding
from ddpm.nets.unet import UNet

__all__ = ["UNet", "timestep_embedding"]
