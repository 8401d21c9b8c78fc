"""Seed-addressed Gaussian noise: image ``i``'s noise comes only from its own seed.

Sampling an image with :class:`SeededNoise` draws ``x_T`` and every per-step ``z`` from that image's own
``torch.Generator``, so a sample depends only on its seed (and on the generator device), never on the batch
size or on which other images share the batch. Combine with :func:`image_seeds` to give image number ``i`` of
run seed ``s`` a fixed seed, so e.g. image 12 345 of a 50k FID dump can be regenerated alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(*key: int) -> int:
    """A 63-bit seed for a tuple of integers (numpy's ``SeedSequence`` hash of their low 32 bits each): nearby
    keys such as consecutive steps or epochs give unrelated streams. Used for the training randomness, which
    is a function of (run seed, epoch | step, ...), never of an RNG's history (exact resume)."""
    import numpy as np

    entropy = [int(k) & 0xFFFFFFFF for k in key]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> 1)


def image_seed(base_seed: int, index: int) -> int:
    """Seed of image ``index`` in a run seeded ``base_seed``.

    ``splitmix64(splitmix64(base_seed) XOR index)`` truncated to 63 bits: deterministic across machines and
    Python versions (pure integer arithmetic, no ``hash()``), well mixed, and distinct (base_seed, index)
    pairs collide only with negligible probability.
    """
    if index < 0:
        raise ValueError(f"image index must be >= 0, got {index}")
    return _splitmix64(_splitmix64(int(base_seed) & _MASK64) ^ int(index)) & ((1 << 63) - 1)


def image_seeds(base_seed: int, start: int, stop: int) -> list[int]:
    """Per-image seeds for image indices ``start .. stop-1`` (see :func:`image_seed`)."""
    return [image_seed(base_seed, i) for i in range(start, stop)]


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
