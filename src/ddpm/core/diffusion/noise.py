"""Seed-addressed Gaussian noise: image ``i``'s noise comes only from its own seed.

Sampling an image with :class:`SeededNoise` draws ``x_T`` and every per-step ``z`` from that image's own
``torch.Generator``, so a sample depends only on its seed (and on the generator device), never on the batch
size or on which other images share the batch. Combine with :func:`ddpm.core.seeds.image_seeds` (the caller's: the
math imports only torch) to give image number ``i`` of run seed ``s`` a fixed seed, so e.g. image 12 345 of a
50k FID dump can be regenerated alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["SeededNoise"]


class SeededNoise:
    """One ``torch.Generator`` per image; ``randn(*shape)`` returns ``[len(seeds), *shape]``.

    Row ``i`` is drawn only from generator ``i`` (seeded with ``seeds[i]``), so successive calls give each
    image its own reproducible stream. Note that CPU and CUDA generators give different streams for the same
    seed: keep ``device`` fixed (the default, ``"cpu"``, is portable; the result is moved by the caller as
    needed).
    """

    def __init__(self, seeds: Sequence[int], device: str | torch.device = "cpu"):
        self.seeds = [int(s) for s in seeds]
        if not self.seeds:
            raise ValueError("SeededNoise needs at least one seed")
        self.device = torch.device(device)
        self.generators = []
        for s in self.seeds:
            g = torch.Generator(device=self.device)
            g.manual_seed(s)
            self.generators.append(g)

    def __len__(self) -> int:
        return len(self.seeds)

    def randn(self, *shape: int | Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
        """Standard normal noise of shape ``[len(seeds), *shape]`` on ``self.device``.

        Accepts ``randn(3, 32, 32)`` or ``randn((3, 32, 32))``.
        """
        if len(shape) == 1 and not isinstance(shape[0], int):
            shape = tuple(shape[0])
        shape = tuple(int(s) for s in shape)
        return torch.stack(
            [torch.randn(shape, generator=g, device=self.device, dtype=dtype) for g in self.generators]
        )

    def __repr__(self) -> str:
        head = self.seeds[:3]
        return (
            f"SeededNoise(n={len(self)}, seeds={head}{'...' if len(self) > 3 else ''}, device={self.device})"
        )


def randn(shape: Sequence[int], noise: SeededNoise | None, generator: torch.Generator | None,
          device: torch.device) -> Tensor:
    """Standard normal noise of ``shape`` on ``device``: from ``noise`` (one generator per image; ``len(noise)``
    must be ``shape[0]``), else from ``generator``, else from torch's global generator. The samplers draw x_T and
    every per-step ``z`` with it."""
    shape = tuple(shape)
    if noise is not None:
        if len(noise) != shape[0]:
            raise ValueError(f"SeededNoise has {len(noise)} seeds but the batch has {shape[0]} images")
        return noise.randn(*shape[1:]).to(device)
    if generator is not None:
        return torch.randn(shape, generator=generator, device=generator.device).to(device)
    return torch.randn(shape, device=device)
