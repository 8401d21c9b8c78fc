"""What ``train(cfg)`` builds from the config besides the model: the callbacks, the loggers (the CSV log
continued on a resume, the W&B run id pinned in the run directory) and the Trainer. Public Lightning API only."""

from __future__ import annotations

import contextlib
import csv
import os
from collections.abc import Iterator
from pathlib import Path

import lightning as L
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from omegaconf import DictConfig

from ddpm.core.io import check_writable
from ddpm.services.callbacks import AtomicCheckpointIO


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """The ``callbacks`` group, each from its ``_target_``; a bad setting is its own message, naming the callback."""
    callbacks = []
    for name, c in (cfg.get("callbacks") or {}).items():
        if c is None or "_target_" not in c:
            continue
        try:
            callbacks.append(instantiate(c))
        except InstantiationException as e:
            if (cause := _refused_setting(e)) is None:
                raise
            kind = type(cause) if isinstance(cause, ValueError | TypeError) else ValueError
            raise kind(f"callbacks.{name}: {cause}") from e
    return callbacks


def _refused_setting(e: InstantiationException) -> Exception | None:
    """What Hydra's instantiate error wraps when a class refused one of its settings (Lightning's
    MisconfigurationException: ModelCheckpoint's every_n_train_steps=-1, the Trainer's devices for the
    accelerator; a ValueError or TypeError), else ``None``: that is a user error with its own message."""
    cause = e.__cause__
    return cause if isinstance(cause, MisconfigurationException | ValueError | TypeError) else None


def build_loggers(cfg: DictConfig, output_dir: Path, resume_step: int | None = None) -> list:
    """The ``logger`` group. A logger that takes ``resume_step`` (:class:`ResumableCSVLogger`) gets it; W&B's run
    id is pinned in the run directory (:func:`wandb_config`)."""
    loggers = []
    for name, lcfg in (cfg.get("logger") or {}).items():
        if lcfg is None or "_target_" not in lcfg:
            continue
        if lcfg.get("save_dir") and Path(lcfg.save_dir) != Path(output_dir):  # a logger's own folder (the run
            # directory, the default, train() has checked): the same one-line error as paths.output_dir
            check_writable(lcfg.save_dir, f"logger.{name}.save_dir",
                           f"Choose a writable place: logger.{name}.save_dir=... (the default is the run directory).")
        if name == "wandb":
            lcfg = wandb_config(lcfg, output_dir)
        kwargs = {"resume_step": resume_step} if issubclass(get_class(lcfg._target_), ResumableCSVLogger) else {}
        loggers.append(instantiate(lcfg, **kwargs))
    return loggers


def log_hyperparams(loggers: list, config: dict) -> None:
    """Each logger gets the run's config. The first W&B call starts its run: without an API key (and not offline)
    that is a user error, said in one line with the two fixes, not W&B's traceback."""
    for lg in loggers:
        try:
            lg.log_hyperparams(config)
        except Exception as e:
            if type(e).__module__.startswith("wandb") and "API key" in str(e):
                raise ValueError(f"logger=wandb: {e} Or log offline: logger.wandb.offline=true, and `wandb sync` "
                                 "the run's wandb/ folder later.") from e
            raise


def build_trainer(cfg: DictConfig, callbacks: list[L.Callback], loggers: list) -> L.Trainer:
    """The ``trainer`` group with the callbacks, the loggers and atomic checkpoint writes; a run shorter than the
    logging interval still logs its last step (and so writes csv/metrics.csv)."""
    log_every = cfg.trainer.log_every_n_steps
    if cfg.trainer.max_steps > 0:
        log_every = min(log_every, cfg.trainer.max_steps)
    try:
        return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers if loggers else False,
                           plugins=[AtomicCheckpointIO()], log_every_n_steps=log_every)
    except InstantiationException as e:  # Lightning refusing a trainer.* setting (devices for the accelerator...)
        if _refused_setting(e) is None:
            raise
        import torch

        no_gpu = "" if torch.cuda.is_available() or cfg.trainer.accelerator in ("auto", "cpu") else (
            " This machine has no CUDA GPU: trainer=default (accelerator=auto) or trainer=cpu runs on its CPU.")
        raise ValueError(f"trainer: {e.__cause__} (trainer.accelerator={cfg.trainer.accelerator}, "
                         f"trainer.devices={cfg.trainer.devices}; python train.py --help lists the trainer.* "
                         f"settings).{no_gpu}") from e


@contextlib.contextmanager
def finishing(loggers: list) -> Iterator[None]:
    """Close W&B's run however the block ends, so the jobs of a multirun stay separate."""
    try:
        yield
    finally:
        if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
            import wandb

            wandb.finish()


def wandb_config(lcfg: DictConfig, output_dir: Path) -> DictConfig:
    """Pin the W&B run id in the run directory, so a resume (or a requeued job) continues the same run."""
    lcfg = lcfg.copy()
    id_file = Path(output_dir) / "wandb_run_id.txt"
    if lcfg.get("id") is None:
        if id_file.is_file():
            lcfg.id = id_file.read_text().strip()
        else:
            import secrets

            lcfg.id = secrets.token_hex(4)  # 8 characters of [0-9a-f], a valid W&B run id
    if os.environ.get("WANDB_MODE") == "offline":
        lcfg.offline = True
    id_file.parent.mkdir(parents=True, exist_ok=True)
    id_file.write_text(str(lcfg.id))
    return lcfg


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSVLogger (``<save_dir>/<name>/metrics.csv``) that, on a resume (``resume_step`` set),
    continues the run's ``metrics.csv``: the rows before ``resume_step`` are kept (those logged after the
    checkpoint, work lost with the process, are logged again by the resume). Lightning's own starts the file
    again."""

    def __init__(self, *args, resume_step: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.resume_step = resume_step
        self.writer: ExperimentWriter | None = None

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self.writer is None:
            kept = self.rows_before_resume()
            self.writer = ExperimentWriter(log_dir=self.log_dir)  # (removes an existing metrics.csv)
            if kept:
                self.writer.metrics = kept
                self.writer.save()  # written back at once: a kill before the first flush loses nothing
        return self.writer

    def rows_before_resume(self) -> list[dict]:
        """The rows of the run's ``metrics.csv`` logged before ``resume_step`` (none for a fresh start)."""
        path = Path(self.log_dir, ExperimentWriter.NAME_METRICS_FILE)
        if self.resume_step is None or not path.is_file():
            return []
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        return [r for r in rows if not (r.get("step") or "").isdigit() or int(r["step"]) < self.resume_step]

    def finalize(self, status: str) -> None:
        if self.writer is not None:  # (nothing was logged in this process otherwise)
            self.save()
