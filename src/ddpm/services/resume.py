"""Where a training run starts from: a checkpoint to resume (``ckpt_path``), checked against the run's model, or
the finished run's metrics when there is nothing left to do."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ddpm.core.io import safe_load_checkpoint
from ddpm.core.rundir import METRICS, last_checkpoint
from ddpm.services.loading import resolve_checkpoint

log = logging.getLogger("ddpm")


@dataclass
class Resume:
    """``ckpt_path``: the checkpoint to resume from (``None``: a fresh start); ``step``: its global step;
    ``finished``: the metrics of a run that has already reached its step budget (then there is nothing to do)."""

    ckpt_path: str | None = None
    step: int | None = None
    finished: dict | None = None


def plan_resume(ckpt_path: str | None, output_dir: Path, hparams: Any, max_steps: int) -> Resume:
    """Resolve ``ckpt_path`` (:func:`resolve_ckpt_path`), check that the checkpoint is of this run's model
    (``hparams``: the new module's) and whether the run is already complete."""
    path = resolve_ckpt_path(ckpt_path, output_dir)
    if path is None:
        return Resume()
    ckpt = safe_load_checkpoint(path)
    check_checkpoint_matches(ckpt, hparams, path)
    step = int(ckpt.get("global_step", 0))
    if (finished := finished_run(output_dir, step, max_steps)) is not None:
        return Resume(path, step, finished)  # a complete run rerun (a sweep's finished job): nothing to do
    if 0 < max_steps < step:  # Lightning would stop at once and write the checkpoint's model as a "finished" run
        raise ValueError(f"ckpt_path: {path} is at step {step}, past trainer.max_steps={max_steps}, so nothing would "
                         f"train. trainer.max_steps counts from the start of the run, not from the checkpoint: for "
                         f"{max_steps} more steps pass trainer.max_steps={step + max_steps}. (Sampling it needs no "
                         "training: python sample.py ckpt_path=....)")
    return Resume(path, step)


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """``None`` -> fresh start; ``"last"`` -> ``<output_dir>/checkpoints/last.ckpt`` if it exists (else a fresh
    start, so a requeued job script can always pass it); a directory -> its ``checkpoints/last.ckpt``."""
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path == "last":
        last = last_checkpoint(output_dir)
        if last.is_file():
            return str(last)
        log.info("ckpt_path=last: no %s yet, starting a fresh run", last)
        return None
    return str(resolve_checkpoint(ckpt_path))


def finished_run(output_dir: Path, resume_step: int, max_steps: int) -> dict | None:
    """The metrics of a run that has already reached its step budget in ``output_dir`` (its ``metrics.json``
    written at the checkpoint's step), else ``None``: ``ckpt_path=last`` then returns at once, so a rerun of a
    sweep skips the finished jobs and resumes the others."""
    done = Path(output_dir) / METRICS
    if max_steps < 1 or resume_step < max_steps or not done.is_file():
        return None
    metrics = json.loads(done.read_text())
    return metrics if metrics.get("global_step") == resume_step else None


def check_checkpoint_matches(ckpt: dict, hparams: Any, path: str) -> None:
    """A checkpoint from another model preset, dataset or objective is a clear error, not a shape traceback."""
    hp = ckpt.get("hyper_parameters", {})
    for key in ("model", "objective", "image_shape", "diffusion"):
        theirs = hp.get(key)
        ours = hparams.get(key)
        if theirs is not None and _plain(theirs) != _plain(ours):
            raise ValueError(
                f"checkpoint {path} was trained with {key}={_plain(theirs)}, but this run has {key}={_plain(ours)}. "
                f"Resume with the same {key} settings (the checkpoint's full config is in checkpoint['cfg'])."
            )


def _plain(x: Any) -> Any:
    if isinstance(x, dict) or OmegaConf.is_config(x):
        return {k: _plain(v) for k, v in dict(x).items()}
    if isinstance(x, list | tuple) or OmegaConf.is_list(x):
        return [_plain(v) for v in x]
    return getattr(x, "value", x)


# ------------------------------------------------------------------------------------- how to go on after a fault
def how_to_resume(output_dir: Path) -> str:
    """One sentence for a run that stopped on a fault: the last good checkpoint, its step and the command that
    resumes from it (:func:`resume_command`)."""
    last = last_checkpoint(output_dir)
    step = checkpoint_step(last)
    if step is None:
        return f"No checkpoint was written yet; start again with: {resume_command(output_dir)}"
    return f"The last good checkpoint is {last} (step {step}); resume from it with: {resume_command(output_dir)}"


def checkpoint_step(path: Path) -> int | None:
    """The global step of the checkpoint at ``path`` (memory-mapped: nothing but the step is read), ``None`` if
    there is none or it cannot be read."""
    import torch

    if not Path(path).is_file():
        return None
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])
    except Exception:  # noqa: BLE001 - a message is being built: no checkpoint step to show
        return None


def resume_command(output_dir: Path) -> str:
    """``python train.py <this run's overrides> hydra.run.dir=<output_dir> ckpt_path=last``: the command line of
    the running Hydra job (a multirun job: its own overrides), in the same run directory."""
    import shlex

    from ddpm.core.cli import command

    overrides = ["<this run's settings>"]
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            # not the run directory's (given below) nor Hydra's own (Lightning adds some to the other ranks')
            overrides = [shlex.quote(o) for o in HydraConfig.get().overrides.task
                         if not o.split("=", 1)[0].lstrip("+~").startswith(("ckpt_path", "paths.output_dir", "hydra"))]
    except ImportError:
        pass
    return " ".join([command("train"), *overrides, shlex.quote(f"hydra.run.dir={output_dir}"), "ckpt_path=last"])
