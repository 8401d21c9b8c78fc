"""Seed hashes: pure integer functions from a run seed and an index (epoch, step, image number) to a seed.

The layer under both ``ddpm.core.data`` (the epochs' order and flips) and ``ddpm.core.diffusion`` (per-image noise) and
the training loop (per-step randomness): it imports only the standard library and numpy.
"""

from __future__ import annotations

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
