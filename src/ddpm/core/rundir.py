"""The layout of a run directory (``hydra.run.dir`` of ``python train.py``), written down once.

::

    RUN/checkpoints/last.ckpt          the latest state (``ckpt_path=last`` resumes from it)
    RUN/checkpoints/step_XXXXXXXX.ckpt the periodic checkpoints (conf/callbacks/default.yaml; a test checks
                                       that its ``dirpath`` is :func:`checkpoints_dir`)
    RUN/metrics.json  RUN/samples.png  the final metrics and samples
    RUN/<tool>/                        what ``python -m ddpm.figures`` and ``python -m ddpm.frontier`` write
                                       for a checkpoint of the run (:func:`tool_dir`)

Every module that reads or writes these paths asks this one; none spells them out.
"""

from __future__ import annotations

import os
from pathlib import Path

CHECKPOINTS = "checkpoints"
LAST = "last.ckpt"
METRICS = "metrics.json"
SAMPLES = "samples.png"
PUBLISHED = Path("outputs")  # where the tools write for published weights (no run directory)


def checkpoints_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINTS


def last_checkpoint(run_dir: str | os.PathLike) -> Path:
    return checkpoints_dir(run_dir) / LAST


def run_dir_of(checkpoint: str | os.PathLike) -> Path:
    """The run directory of ``RUN/checkpoints/x.ckpt`` (a checkpoint elsewhere: its folder)."""
    path = Path(checkpoint)
    return path.parent.parent if path.parent.name == CHECKPOINTS else path.parent


def tool_dir(provenance: dict, tool: str) -> Path:
    """Where ``python -m ddpm.<tool>`` writes for a loaded model: ``RUN/<tool>`` beside a training checkpoint,
    ``outputs/<tool>/<weights name>`` for published weights (``provenance`` from :mod:`ddpm.services.loading`)."""
    model = Path(provenance["model_path"])
    if provenance.get("source") == "checkpoint":
        return run_dir_of(model) / tool
    return PUBLISHED / tool / model.stem


def remove_stale_temp_files(run_dir: str | os.PathLike) -> list[Path]:
    """Remove what a killed process left in ``RUN/checkpoints`` mid-write (``ddpm.core.io.atomic_write``'s temporary
    files; the checkpoints themselves are never torn). Call it when a run starts, before any checkpoint is
    written; returns the removed paths."""
    from ddpm.core.io import temp_files

    removed = []
    for path in temp_files(checkpoints_dir(run_dir)):
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed
