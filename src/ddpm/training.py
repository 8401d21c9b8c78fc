"""``train(cfg)``: everything ``python train.py`` does, as a plain function (tests call it directly)."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ddpm.callbacks import AtomicCheckpointIO, safe_load_checkpoint
from ddpm.config import to_container, validate_config
from ddpm.module import DiffusionModule

log = logging.getLogger("ddpm")


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
    path = Path(ckpt_path)
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise FileNotFoundError(
            f"ckpt_path={ckpt_path!r}: no such checkpoint. Pass a .ckpt file, a run directory, or ckpt_path=last "
            "together with the run's hydra.run.dir."
        )
    return str(path)


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


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    return [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None and "_target_" in c]


def train(cfg: DictConfig) -> tuple[dict, dict]:
    """Train a DDPM as configured; returns ``(metrics, objects)``."""
    validate_config(cfg)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    datamodule = instantiate(cfg.data)
    run_config = to_container(cfg)
    module = DiffusionModule(
        model=run_config["model"],
        diffusion=run_config["diffusion"],
        objective=run_config["objective"],
        optim=run_config["optim"],
        image_shape=tuple(datamodule.image_shape),
        channels_last=bool(cfg.get("channels_last", False)),
    )
    module.run_config = run_config
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    if ckpt_path:
        check_checkpoint_matches(safe_load_checkpoint(ckpt_path), module, ckpt_path)

    callbacks = build_callbacks(cfg)
    loggers = build_loggers(cfg, output_dir)
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers if loggers else False, plugins=[AtomicCheckpointIO()]
    )
    for lg in loggers:
        lg.log_hyperparams(run_config)

    start = time.time()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        fit_seconds = time.time() - start
        last = output_dir / "checkpoints" / "last.ckpt"
        if trainer.global_step > 0 and not trainer.interrupted:
            trainer.save_checkpoint(last)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
        metrics.update(global_step=trainer.global_step, fit_seconds=round(fit_seconds, 2))
        if trainer.is_global_zero:
            metrics.update(final_samples(cfg, module, datamodule, output_dir))
            write_json(output_dir / "metrics.json", metrics)
            log.info("run directory: %s", output_dir)
    finally:
        for lg in loggers:
            if type(lg).__name__ == "WandbLogger":
                import wandb

                wandb.finish()
    return metrics, {"module": module, "datamodule": datamodule, "trainer": trainer, "output_dir": output_dir}


def final_samples(cfg: DictConfig, module: DiffusionModule, datamodule, output_dir: Path) -> dict:
    """Sample ``cfg.final_samples`` images with EMA weights: ``samples.png`` and, on digits, a quality score."""
    n = int(cfg.get("final_samples", 0) or 0)
    if n <= 0:
        return {}
    from ddpm.generate import generate, make_grid_uint8, save_png, seeds_for, to_uint8

    start = time.time()
    images = to_uint8(
        generate(
            module.model_fn(use_ema=True), module.diffusion, seeds_for(int(cfg.seed), 0, n), module.image_shape,
            device=module.device,
        )
    ).cpu()
    out: dict[str, Any] = {"final_samples": n, "sample_seconds": round(time.time() - start, 2)}
    upscale = max(1, 64 // module.image_shape[-1])
    save_png(make_grid_uint8(images, upscale=upscale), output_dir / "samples.png")
    if getattr(datamodule, "name", "") == "digits":
        from ddpm.metrics.digits import digits_quality

        q = digits_quality(images)
        out.update({f"digits/{k}": float(v) for k, v in q.items()})
    return out


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)
