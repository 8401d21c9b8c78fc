"""``train(cfg)``: everything ``python train.py`` does, as a plain function (tests call it directly)."""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from omegaconf import DictConfig, OmegaConf

from ddpm.callbacks import AtomicCheckpointIO
from ddpm.callbacks.sample_grid import log_image
from ddpm.config import SamplerConfig, group_norm_warning, to_container, validate_config
from ddpm.data import model_to_uint8
from ddpm.generate import generate, seeds_for
from ddpm.io import atomic_write, check_writable, make_grid_uint8, safe_load_checkpoint, save_png, write_json
from ddpm.loading import resolve_checkpoint
from ddpm.module import DiffusionModule
from ddpm.runtime import Progress

log = logging.getLogger("ddpm")

# The EMA copy of the network is in eval mode on purpose (no dropout, never trained); Lightning would warn
# about it at every start.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """``None`` -> fresh start; ``"last"`` -> ``<output_dir>/checkpoints/last.ckpt`` if it exists (else a fresh
    start, so a requeued job script can always pass it); a directory -> its ``checkpoints/last.ckpt``."""
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path == "last":
        last = output_dir / "checkpoints" / "last.ckpt"
        if last.is_file():
            return str(last)
        log.info("ckpt_path=last: no %s yet, starting a fresh run", last)
        return None
    return str(resolve_checkpoint(ckpt_path))


def finished_run(output_dir: Path, resume_step: int, max_steps: int) -> dict | None:
    """The metrics of a run that has already reached its step budget in ``output_dir`` (its ``metrics.json``
    written at the checkpoint's step), else ``None``: ``ckpt_path=last`` then returns at once, so a rerun of a
    sweep skips the finished jobs and resumes the others."""
    done = output_dir / "metrics.json"
    if max_steps < 1 or resume_step < max_steps or not done.is_file():
        return None
    metrics = json.loads(done.read_text())
    return metrics if metrics.get("global_step") == resume_step else None


def check_checkpoint_matches(ckpt: dict, module: DiffusionModule, path: str) -> None:
    """A checkpoint from another model preset, dataset or objective is a clear error, not a shape traceback."""
    hp = ckpt.get("hyper_parameters", {})
    mine = module.hparams
    for key in ("model", "objective", "image_shape", "diffusion"):
        theirs = hp.get(key)
        ours = mine.get(key)
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


def build_loggers(cfg: DictConfig, output_dir: Path) -> list:
    loggers = []
    for name, lcfg in (cfg.get("logger") or {}).items():
        if lcfg is None or "_target_" not in lcfg:
            continue
        if name == "wandb":
            lcfg = wandb_config(lcfg, output_dir)
        loggers.append(instantiate(lcfg))
    return loggers


def wandb_config(lcfg: DictConfig, output_dir: Path) -> DictConfig:
    """Pin the W&B run id in the run directory, so a resume (or a requeued job) continues the same run."""
    lcfg = lcfg.copy()
    id_file = output_dir / "wandb_run_id.txt"
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


class _AppendingExperimentWriter(ExperimentWriter):
    """CSVLogger's experiment writer, continuing the run's ``metrics.csv`` (the rows before ``resume_step``)."""

    def __init__(self, log_dir: str, resume_step: int) -> None:
        import csv

        super().__init__(log_dir=log_dir)
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            keys = list(reader.fieldnames or [])
            # Rows logged after the checkpoint (work lost with the process) are logged again by the resume.
            rows = [r for r in reader if not (r.get("step") or "").isdigit() or int(r["step"]) < resume_step]
        with atomic_write(path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
        self.metrics_keys = sorted(keys)

    def _check_log_dir_exists(self) -> None:  # Lightning's deletes the previous metrics.csv
        pass


def continue_csv_logs(loggers: list, resume_step: int) -> None:
    """On a resume, CSV loggers append to the run's ``metrics.csv`` instead of starting it again."""
    from lightning.pytorch.loggers import CSVLogger

    for lg in loggers:
        if isinstance(lg, CSVLogger) and Path(lg.log_dir, "metrics.csv").is_file():
            lg._experiment = _AppendingExperimentWriter(lg.log_dir, resume_step)


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    from hydra.errors import InstantiationException

    callbacks = []
    for name, c in (cfg.get("callbacks") or {}).items():
        if c is None or "_target_" not in c:
            continue
        try:
            callbacks.append(instantiate(c))
        except InstantiationException as e:
            if isinstance(e.__cause__, ValueError | TypeError):  # a bad setting: its own message, not Hydra's wrap
                raise type(e.__cause__)(f"callbacks.{name}: {e.__cause__}") from e
            raise
    return callbacks


class SaveLastAtEnd(L.Callback):
    """Write ``last.ckpt`` right after the final optimizer step (``max_steps``), from ``on_train_batch_end``.

    A checkpoint written there (like ModelCheckpoint's and the preemption one) holds the loop state Lightning
    resumes from exactly; one written after ``fit`` returns makes a resume start an extra, empty epoch (a new
    shuffle drawn from another RNG state), so a later ``ckpt_path=last`` with a larger ``max_steps`` would
    not continue like the uninterrupted run.
    """

    def __init__(self, dirpath: Path) -> None:
        self.path = Path(dirpath) / "last.ckpt"
        self.saved_step: int | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if trainer.max_steps is None or not 0 < trainer.max_steps <= step or self.saved_step == step:
            return
        # ModelCheckpoint(save_last=True) that has just saved this step (it runs first) wrote last.ckpt already.
        if not any(
            getattr(cb, "save_last", False) and getattr(cb, "_last_global_step_saved", None) == step
            and Path(getattr(cb, "dirpath", "") or "") == self.path.parent
            for cb in trainer.checkpoint_callbacks
        ):
            trainer.save_checkpoint(self.path, weights_only=False)
        self.saved_step = step


def train(cfg: DictConfig) -> tuple[dict, dict]:
    """Train a DDPM as configured; returns ``(metrics, objects)``."""
    validate_config(cfg)
    if (warning := group_norm_warning(cfg.model)) is not None:
        log.warning(warning)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    output_dir = Path(cfg.paths.output_dir)
    check_writable(output_dir, "paths.output_dir",  # before any data are read or any step is taken
                   "Choose a writable place: paths.output_dir=... (or hydra.run.dir=... with python train.py).")

    datamodule = instantiate(cfg.data)
    datamodule.shuffle_seed = int(cfg.seed)  # the epochs' order and flips follow the run's seed
    if not getattr(datamodule, "download", False):
        datamodule.splits()  # missing or unreadable data stop the run here, before the model and trainer
    run_config = to_container(cfg)
    module = DiffusionModule(
        model=run_config["model"],
        diffusion=run_config["diffusion"],
        objective=run_config["objective"],
        optim=run_config["optim"],
        image_shape=tuple(datamodule.image_shape),
        channels_last=cfg.channels_last,
        compile={"backend": cfg.compile_backend, "mode": cfg.compile_mode} if cfg.compile else None,
    )
    module.run_config = run_config
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, output_dir)
    resume_step = None
    if ckpt_path:
        ckpt = safe_load_checkpoint(ckpt_path)
        check_checkpoint_matches(ckpt, module, ckpt_path)
        resume_step = int(ckpt.get("global_step", 0))
        del ckpt
        if (done := finished_run(output_dir, resume_step, int(cfg.trainer.max_steps))) is not None:
            log.info("run directory %s is complete (%d of trainer.max_steps=%d steps, metrics.json written): "
                     "nothing to do", output_dir, resume_step, cfg.trainer.max_steps)
            return done, {"module": module, "datamodule": datamodule, "trainer": None, "output_dir": output_dir}

    save_last = SaveLastAtEnd(output_dir / "checkpoints")
    callbacks = [*build_callbacks(cfg), save_last]
    loggers = build_loggers(cfg, output_dir)
    if resume_step is not None:
        continue_csv_logs(loggers, resume_step)
    # a run shorter than the logging interval still logs its last step (and so writes csv/metrics.csv)
    log_every = cfg.trainer.log_every_n_steps
    if cfg.trainer.max_steps > 0:
        log_every = min(log_every, cfg.trainer.max_steps)
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers if loggers else False, plugins=[AtomicCheckpointIO()],
        log_every_n_steps=log_every,
    )
    for lg in loggers:
        lg.log_hyperparams(run_config)

    start = time.time()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        fit_seconds = time.time() - start
        last = output_dir / "checkpoints" / "last.ckpt"
        preempted = any(getattr(c, "received", None) for c in callbacks)
        saved = {getattr(c, "saved_step", None) for c in callbacks}
        if trainer.global_step > 0 and not trainer.interrupted and trainer.global_step not in saved:
            # the run ended otherwise (max_epochs, early stop): save what there is
            trainer.save_checkpoint(last, weights_only=False)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
        metrics.update(global_step=trainer.global_step, fit_seconds=round(fit_seconds, 2))
        if preempted:
            metrics["preempted"] = True  # no final samples: the job has seconds left; the resume makes them
        if trainer.is_global_zero:
            if not preempted:
                metrics.update(final_samples(cfg, trainer, module, datamodule, output_dir))
            write_json(output_dir / "metrics.json", metrics)
            log.info("run directory: %s", output_dir)
    finally:
        for lg in loggers:
            if type(lg).__name__ == "WandbLogger":
                import wandb

                wandb.finish()
    return metrics, {"module": module, "datamodule": datamodule, "trainer": trainer, "output_dir": output_dir}


def final_samples(cfg: DictConfig, trainer: L.Trainer, module: DiffusionModule, datamodule,
                  output_dir: Path) -> dict:
    """Sample ``cfg.final_samples`` images with EMA weights and the run's ``sampler``: ``samples.png`` and, on
    digits, a quality score."""
    n = cfg.final_samples
    if n <= 0:
        return {}
    sampler = SamplerConfig.from_node(cfg.sampler)
    start = time.time()
    steps = sampler.steps or module.diffusion.num_timesteps
    shown = bool(cfg.trainer.get("enable_progress_bar", True))
    with Progress(min(steps, module.diffusion.num_timesteps), shown, f"final samples ({n}, {sampler.num_steps_label})",
                  unit="step") as bar:
        images = model_to_uint8(
            generate(
                module.model_fn(use_ema=True), module.diffusion, seeds_for(int(cfg.seed), 0, n), module.image_shape,
                sampler, device=module.device, progress=lambda done, total: bar.set(done),
            )
        ).cpu()
    out: dict[str, Any] = {
        "final_samples": n, "final_sampler": sampler.describe(module.diffusion.num_timesteps),
        "sample_seconds": round(time.time() - start, 2),
    }
    upscale = max(1, 64 // module.image_shape[-1])
    grid = make_grid_uint8(images, upscale=upscale)
    save_png(grid, output_dir / "samples.png")
    if getattr(datamodule, "name", "") == "digits":
        from ddpm.metrics.digits_score import digits_quality

        q = digits_quality(images)
        out.update({f"digits/{k}": float(v) for k, v in q.items()})
    log_image(trainer, "samples/final", grid, trainer.global_step)
    for lg in trainer.loggers:
        lg.log_metrics({k: v for k, v in out.items() if isinstance(v, float) and "/" in k}, step=trainer.global_step)
        lg.save()
    return out


