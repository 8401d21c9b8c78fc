"""ddpm: Denoising Diffusion Probabilistic Models (Ho, Jain, Abbeel 2020) with Lightning and Hydra.

Importing this package imports nothing heavy; the math lives in :mod:`ddpm.core.diffusion` (torch only),
the networks in :mod:`ddpm.core.nets` (torch only).
"""

__version__ = "0.1.0"
