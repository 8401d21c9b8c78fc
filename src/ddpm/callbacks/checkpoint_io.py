"""Checkpoint I/O that never leaves a half-written file and never unpickles code.

Lightning's default writes through fsspec, whose local "transaction" stages the file in the system temp
directory and *moves* it, a copy across file systems that a kill -9 can interrupt. Here the checkpoint is
written to a temporary file in the destination directory, flushed to disk, and renamed over the old one with
``os.replace`` (atomic on POSIX): after a crash the previous checkpoint is intact.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def safe_load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """``torch.load(weights_only=True)`` with errors that say what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if not _is_forbidden_object(e):  # bytes that are no pickle at all: a damaged file, not a dangerous one
            raise ValueError(
                f"{path} is not a readable checkpoint (corrupt or truncated?): {_weights_only_detail(e)}. "
                "Use an earlier checkpoint from the same checkpoints/ folder."
            ) from e
        raise ValueError(
            f"Refusing to load {path}: it contains Python objects beyond tensors and plain containers, which "
            "could run code when unpickled (loaded with weights_only=True). Only load checkpoints you created. "
            f"Details: {_weights_only_detail(e)}"
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise ValueError(
            f"{path} is not a readable checkpoint (corrupt or truncated?): {str(e).splitlines()[0]}. "
            "Use an earlier checkpoint from the same checkpoints/ folder."
        ) from e


def _is_forbidden_object(e: Exception) -> bool:
    text = str(e)
    return "Unsupported global" in text or "Unsupported class" in text


def _weights_only_detail(e: Exception) -> str:
    """The part of torch's weights_only message that names the problem (not its advice to load unsafely)."""
    import re

    found = re.search(r"Unsupported (?:global|class|operand)[^\n]*?(?= Please use|\.\s|$)", str(e), re.M)
    if found:
        return found.group(0)
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0][:200] if lines else type(e).__name__


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
