"""``train(cfg)``: everything ``python train.py`` does, as a plain function (tests call it directly): build the
data, the module, the callbacks, the loggers and the Trainer from the config; fit; finalise (last checkpoint,
final samples, ``metrics.json``)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from ddpm.core.checks import attention_warning, group_norm_warning
from ddpm.core.config import SamplerConfig, to_container, validate_config
from ddpm.core.data import model_to_uint8
from ddpm.core.io import RankFailedError, check_writable, disk_full, make_grid_uint8, save_png, write_json
from ddpm.core.module import DiffusionModule
from ddpm.core.rundir import METRICS, SAMPLES, checkpoints_dir, last_checkpoint, remove_stale_temp_files
from ddpm.services.builders import build_callbacks, build_loggers, build_trainer, finishing, log_hyperparams
from ddpm.services.callbacks import SaveLastAtEnd
from ddpm.services.callbacks.sample_grid import log_image
from ddpm.services.generate import condition, generate, seeds_for
from ddpm.services.resume import how_to_resume, plan_resume
from ddpm.services.runtime import Progress, dead_ranks, peer_lost

log = logging.getLogger("ddpm")

# The EMA copy of the network is in eval mode on purpose (no dropout, never trained); Lightning would warn
# about it at every start.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")


def train(cfg: DictConfig) -> tuple[dict, dict]:
    """Train a DDPM as configured; returns ``(metrics, objects)``."""
    validate_config(cfg)
    if (warning := group_norm_warning(cfg.model)) is not None:
        log.warning(warning)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    output_dir = check_writable(cfg.paths.output_dir, "paths.output_dir",  # before any data or step
                                "Choose a writable place: paths.output_dir=... (or hydra.run.dir=... with train.py).")
    if int(os.environ.get("NODE_RANK", 0)) == 0 and rank_zero_only.rank == 0:  # (LOCAL_RANK, RANK, SLURM_PROCID)
        for path in remove_stale_temp_files(output_dir):
            log.info("removed %s (a checkpoint write that a killed process left unfinished)", path)

    datamodule = build_datamodule(cfg)
    if (warning := attention_warning(cfg.model, datamodule.image_shape[-1])) is not None:
        log.warning(warning)
    class_names = check_classes(cfg, datamodule)
    module = build_module(cfg, datamodule.image_shape, class_names)
    resume = plan_resume(cfg.ckpt_path, output_dir, module.hparams, int(cfg.trainer.max_steps))
    objects: dict[str, Any] = {"module": module, "datamodule": datamodule, "trainer": None, "output_dir": output_dir}
    if resume.finished is not None:
        log.info("run directory %s is complete (%d of trainer.max_steps=%d steps, metrics.json written): "
                 "nothing to do", output_dir, resume.step, cfg.trainer.max_steps)
        return resume.finished, objects

    callbacks = [*build_callbacks(cfg), SaveLastAtEnd(checkpoints_dir(output_dir))]
    loggers = build_loggers(cfg, output_dir, resume.step)
    trainer = objects["trainer"] = build_trainer(cfg, callbacks, loggers)
    log_hyperparams(loggers, module.config)
    with finishing(loggers), explained_faults(trainer, output_dir):
        start = time.time()
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume.ckpt_path)
        metrics = finalise(cfg, trainer, module, datamodule, output_dir, time.time() - start, resume.step)
    return metrics, objects


@contextlib.contextmanager
def explained_faults(trainer: L.Trainer, output_dir: Path):
    """A full disk (or quota) and a dead peer process of a DDP run end in one message that says what happened,
    the last good checkpoint, its step and the command that resumes from it."""
    try:
        yield
    except Exception as e:
        if (full := disk_full(e)) is not None:
            raise full.with_hint(how_to_resume(output_dir)) from e
        if trainer.world_size > 1 and peer_lost(e):
            raise RankFailedError(
                f"another process of this {trainer.world_size}-process run died ({dead_ranks(trainer)}); this one "
                f"(rank {trainer.global_rank}) stopped at step {trainer.global_step}. {how_to_resume(output_dir)}"
            ) from e
        raise


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    """The ``data`` group; its splits are read here (missing data stop the run before the model is built)."""
    datamodule = instantiate(cfg.data)
    datamodule.shuffle_seed = int(cfg.seed)  # the epochs' order and flips follow the run's seed
    if not getattr(datamodule, "download", False):
        datamodule.splits()
    return datamodule


def check_classes(cfg: DictConfig, datamodule) -> list[str] | None:
    """A class-conditional model (``model.num_classes=K``) needs a labelled dataset with exactly K classes; its
    batches then carry the labels. Returns the class names (label order), ``None`` for an unconditional model."""
    k = cfg.model.get("num_classes")
    if k is None:
        return None
    names_of = getattr(datamodule, "class_names", None)
    names = names_of() if callable(names_of) else None
    data = getattr(datamodule, "name", "this dataset")
    if names is None:
        raise ValueError(
            f"model.num_classes={k}: the data ({data}) have no class labels. Class-conditional training needs a "
            "labelled dataset: data=digits, data=cifar10, or data=image_folder with one subfolder per class; or "
            "train unconditionally with model.num_classes=null")
    if len(names) != int(k):
        raise ValueError(f"model.num_classes={k} disagrees with the data ({data}), which have {len(names)} classes "
                         f"{names[:12]}: set model.num_classes={len(names)}")
    datamodule.with_labels = True
    return list(names)


def build_module(cfg: DictConfig, image_shape: tuple[int, int, int],
                 class_names: list[str] | None = None) -> DiffusionModule:
    run_config = to_container(cfg)
    if run_config["model"].get("num_classes") is None:
        # unconditional: the class settings mean nothing, and the hyper-parameters and the checkpoint's cfg stay
        # exactly those of a run before classes existed (so old checkpoints resume and compare equal)
        run_config["model"].pop("num_classes", None)
        run_config["objective"].pop("cond_drop_prob", None)
    return DiffusionModule(
        model=run_config["model"], diffusion=run_config["diffusion"], objective=run_config["objective"],
        class_names=class_names,
        optim=run_config["optim"], image_shape=tuple(image_shape),
        seed=int(cfg.seed), nan_policy=run_config["nan_policy"], nan_max_consecutive=int(cfg.nan_max_consecutive),
        channels_last=cfg.channels_last,
        compile={"backend": cfg.compile_backend, "mode": cfg.compile_mode} if cfg.compile else None,
        config=run_config,
    )


def finalise(cfg: DictConfig, trainer: L.Trainer, module: DiffusionModule, datamodule, output_dir: Path,
             fit_seconds: float, resumed_from_step: int = 0) -> dict:
    """After ``fit``: ``last.ckpt`` if no callback wrote this step's, the final samples (not after a
    preemption: the job has seconds left, the resume makes them) and ``metrics.json``. ``fit_seconds`` is this
    process's training time; a resumed run says from which step (``resumed_from_step``), so that it is not read
    as the time of all its steps."""
    preempted = any(getattr(c, "received", None) for c in trainer.callbacks)
    saved = {getattr(c, "saved_step", None) for c in trainer.callbacks}
    if trainer.global_step > 0 and not trainer.interrupted and trainer.global_step not in saved:
        # the run ended otherwise (max_epochs, early stop): save what there is
        trainer.save_checkpoint(last_checkpoint(output_dir), weights_only=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    metrics.update(global_step=trainer.global_step, fit_seconds=round(fit_seconds, 2))
    if resumed_from_step:
        metrics["resumed_from_step"] = int(resumed_from_step)
    if preempted:
        metrics["preempted"] = True
    if trainer.is_global_zero:
        if not preempted:
            metrics.update(final_samples(cfg, trainer, module, datamodule, output_dir))
        write_json(output_dir / METRICS, metrics)
        log.info("run directory: %s", output_dir)
    return metrics


def final_samples(cfg: DictConfig, trainer: L.Trainer, module: DiffusionModule, datamodule,
                  output_dir: Path) -> dict:
    """Sample ``cfg.final_samples`` images with EMA weights and the run's ``sampler``: ``samples.png`` and, on
    digits, the quality score under both digits extractors (``digits/fid``... A, ``digits_b/fid``... B:
    :func:`ddpm.services.metrics.digits_score.flat_digits_scores`)."""
    n = cfg.final_samples
    if n <= 0:
        return {}
    sampler = SamplerConfig.from_node(cfg.sampler)
    k = module.num_classes
    # a conditional model: image i of class i mod K at w=0, what sample.py draws for seed=cfg.seed (its balanced
    # labels); the grid's rows are the classes, per_class images each
    per_class = max(1, n // k) if k else 0
    cond = condition(k, 0, n)
    start = time.time()
    steps = sampler.steps or module.diffusion.num_timesteps
    shown = bool(cfg.trainer.enable_progress_bar)
    with Progress(min(steps, module.diffusion.num_timesteps), shown, f"final samples ({n}, {sampler.label})",
                  unit="step") as bar:
        images = model_to_uint8(
            generate(
                module.model_fn(use_ema=True), module.diffusion, seeds_for(int(cfg.seed), 0, n), module.image_shape,
                sampler, device=module.device, progress=lambda done, total: bar.set(done), **cond,
            )
        ).cpu()
    out: dict[str, Any] = {
        "final_samples": n, "final_sampler": sampler.describe(module.diffusion.num_timesteps),
        "sample_seconds": round(time.time() - start, 2),
    }
    upscale = max(1, 64 // module.image_shape[-1])
    by_class = torch.tensor([c + k * j for c in range(min(k, n)) for j in range(per_class)]) if k else None
    grid = make_grid_uint8(images[by_class] if k else images, nrow=per_class or None, upscale=upscale)
    save_png(grid, output_dir / SAMPLES)
    if getattr(datamodule, "name", "") == "digits":
        from ddpm.services.metrics.digits_score import flat_digits_scores

        out.update(flat_digits_scores(images))  # digits/... (extractor A), digits_b/... (extractor B)
        if k:
            from ddpm.services.metrics.conditional import class_scores

            out.update({f"digits/{key}": v for key, v in class_scores(images, cond["labels"]).items()})
    log_image(trainer, "samples/final", grid, trainer.global_step)
    for lg in trainer.loggers:
        lg.log_metrics({k: v for k, v in out.items() if isinstance(v, float) and "/" in k}, step=trainer.global_step)
        lg.save()
    return out


