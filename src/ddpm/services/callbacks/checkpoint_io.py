"""Lightning's side of checkpointing: the I/O plugin that writes and reads through :mod:`ddpm.core.io`, and the
checkpoint callback that never rewrites the resumed step.

Lightning's default writes through fsspec, whose local "transaction" stages the file in the system temp
directory and *moves* it, a copy across file systems that a kill -9 can interrupt. Here the checkpoint is
written to a temporary file in the destination directory, flushed to disk, and renamed over the old one with
``os.replace`` (atomic on POSIX): after a crash the previous checkpoint is intact. Reading never unpickles
code (``weights_only=True``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ddpm.core.io import atomic_torch_save, safe_load_checkpoint
from ddpm.core.rundir import LAST


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        return safe_load_checkpoint(path, map_location=map_location or "cpu")


class StepCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that does not rewrite the resumed step's checkpoint.

    Lightning does not keep ``_last_global_step_saved`` in the callback state, so after ``ckpt_path=...`` the
    first micro-batch of an accumulation window (``global_step`` still the checkpoint's) wrote
    ``step_<N>.ckpt`` again, over the good one, with a half-accumulated state. A resumed run starts from a
    saved step: nothing is saved at that step.
    """

    resumed_step: int | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self.resumed_step = trainer.global_step if trainer.global_step > 0 else None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.resumed_step:  # the checkpoint this run started from: saved already
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_end(self, trainer, pl_module) -> None:
        # Lightning writes last.ckpt here when this callback has not written one itself, i.e. after the fit loop
        # has closed the epoch: a resume from that file starts a new epoch instead of continuing this one (and
        # with it a different data order). The final step's last.ckpt written at its batch end (by
        # SaveLastAtEnd or the preemption callback) is the one to keep.
        if any(getattr(cb, "saved_step", None) == trainer.global_step for cb in trainer.callbacks):
            return
        super().on_train_end(trainer, pl_module)


class SaveLastAtEnd(L.Callback):
    """Write ``last.ckpt`` right after the final optimizer step (``max_steps``), from ``on_train_batch_end``.

    A checkpoint written there (like ModelCheckpoint's and the preemption one) holds the loop state Lightning
    resumes from exactly; one written after ``fit`` returns makes a resume start an extra, empty epoch (a new
    shuffle drawn from another RNG state), so a later ``ckpt_path=last`` with a larger ``max_steps`` would
    not continue like the uninterrupted run. (Lightning runs the ModelCheckpoints after the other callbacks:
    when max_steps is one of their steps, they write last.ckpt again, the same state.)
    """

    def __init__(self, dirpath: str | Path) -> None:
        self.path = Path(dirpath) / LAST
        self.saved_step: int | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if trainer.max_steps is None or not 0 < trainer.max_steps <= step or self.saved_step == step:
            return
        trainer.save_checkpoint(self.path, weights_only=False)
        self.saved_step = step
