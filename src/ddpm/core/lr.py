"""The learning-rate schedule: the paper's linear warmup, then constant (``optim.lr_decay=none``), or, beyond the
paper and opt-in, a decay from the warmed-up lr to 0 at the run's last optimizer step (``cosine`` or ``linear``).

A short fixed-step run (the digits quickstart) ends on a decayed lr, so its last weights (and their EMA) are not
the noisy iterate of a still-large step; the paper's runs (800k steps, EMA 0.9999) keep the constant lr.
"""

from __future__ import annotations

import math
from collections.abc import Callable

LR_DECAYS = ("none", "cosine", "linear")


def lr_schedule(warmup: int, total: int | None = None, decay: str = "none") -> Callable[[int], float]:
    """The multiplier of the base lr for the update made at optimizer ``step`` (0 first, counted before the update,
    as the official code), as a function of ``step``: ``min(step / warmup, 1)`` during the warmup; then 1
    (``none``), or for ``cosine`` / ``linear`` the decay over ``warmup .. total`` reaching 0 at ``step == total``
    (``0.5 (1 + cos(pi p))`` or ``1 - p``, ``p`` the fraction of the decay done). The settings are checked here,
    once, not at every step."""
    if decay not in LR_DECAYS:
        raise ValueError(f"optim.lr_decay={decay!r}: valid are {' | '.join(LR_DECAYS)}")
    if decay != "none" and (total is None or total <= 0):
        raise ValueError(f"optim.lr_decay={decay} needs the run's total optimizer steps (trainer.max_steps), got {total}")
    span = max((total or 0) - warmup, 1)

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return step / warmup
        if decay == "none":
            return 1.0
        p = min(max(step - warmup, 0) / span, 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * p)) if decay == "cosine" else 1.0 - p

    return factor


def lr_factor(step: int, warmup: int, total: int | None = None, decay: str = "none") -> float:
    """:func:`lr_schedule`'s factor at one ``step``."""
    return lr_schedule(warmup, total, decay)(step)
