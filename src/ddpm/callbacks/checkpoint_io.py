"""Lightning's side of checkpointing: the I/O plugin that writes and reads through :mod:`ddpm.io`, and the
checkpoint callback that never rewrites the resumed step.

Lightning's default writes through fsspec, whose local "transaction" stages the file in the system temp
directory and *moves* it, a copy across file systems that a kill -9 can interrupt. Here the checkpoint is
written to a temporary file in the destination directory, flushed to disk, and renamed over the old one with
``os.replace`` (atomic on POSIX): after a crash the previous checkpoint is intact. Reading never unpickles
code (``weights_only=True``).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ddpm.io import atomic_torch_save, safe_load_checkpoint


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
    saved step: mark it saved.
    """

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        if trainer.global_step > 0:
            self._last_global_step_saved = trainer.global_step

    def on_train_end(self, trainer, pl_module) -> None:
        # Lightning writes last.ckpt here when this callback has not written one itself, i.e. after the fit loop
        # has closed the epoch: a resume from that file starts a new epoch instead of continuing this one (and
        # with it a different data order). The final step's last.ckpt written at its batch end (by
        # ddpm.training.SaveLastAtEnd or the preemption callback) is the one to keep.
        if any(getattr(cb, "saved_step", None) == trainer.global_step for cb in trainer.callbacks):
            return
        super().on_train_end(trainer, pl_module)
