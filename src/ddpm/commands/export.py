"""``python -m ddpm.export RUN OUT [--raw] [--overwrite]``: a trained run (EMA weights unless ``--raw``) as a
diffusers pipeline folder and Hub model repository: ``DDPMPipeline.from_pretrained(OUT)`` loads it and
``hf upload USER/REPO OUT`` (``huggingface-cli upload`` before huggingface_hub 1.0) publishes it as it is.

The folder and the model card are :mod:`ddpm.services.interop`'s (:func:`~ddpm.services.interop.export_pipeline`,
:mod:`ddpm.services.interop.card`). A model that diffusers cannot sample exactly (a mu-predicting network, a raw
log-variance output, widths whose GroupNorm is not 32 groups) is refused with one line that says why, before
anything is written. ``python -m ddpm.convert OUT FILE.safetensors`` reads the folder back, bit-identical.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ddpm.core.cli import parse_paths
from ddpm.core.diffusion import schedule_name
from ddpm.core.nets import UNet
from ddpm.core.rundir import run_dir_of
from ddpm.services.interop import GRID_NAME, NotExportableError, check_exportable, export_pipeline
from ddpm.services.interop.card import model_card, reproduce_command, run_metrics
from ddpm.services.loading import load_model


def export_run(run: str | os.PathLike, out: str | os.PathLike, *, raw: bool = False, overwrite: bool = False) -> Path:
    """Export a run directory or checkpoint (EMA weights unless ``raw``) to ``out``; returns ``out``."""
    loaded = load_model(ckpt_path=run, use_ema=not raw)
    check_exportable(loaded.diffusion)  # before anything else: a mu run is one line, nothing written
    net = loaded.net
    if not isinstance(net, UNet):
        raise NotExportableError(f"the network is a {type(net).__name__}, not this project's UNet")
    cfg = loaded.run_cfg or {}
    clip = bool((cfg.get("sampler") or {}).get("clip_denoised", True))
    ckpt_file = Path(loaded.provenance["model_path"])
    run_dir = run_dir_of(ckpt_file)
    grid = run_dir / GRID_NAME
    data = str((cfg.get("data") or {}).get("_target_", "unknown")).rsplit(".", 1)[-1].replace("DataModule", "")
    card = model_card(
        title=f"DDPM, {data}, {run_dir.name}",
        data=data,
        image_shape=loaded.image_shape,
        diffusion=loaded.diffusion,
        schedule=schedule_name(loaded.diffusion.betas_np),
        clip_denoised=clip,
        steps=loaded.provenance.get("global_step"),
        use_ema=not raw,
        ema_decay=(cfg.get("optim") or {}).get("ema_decay"),
        metrics=run_metrics(run_dir),
        grid=grid.is_file(),
        reproduce=reproduce_command(run_dir),
        source=f"{ckpt_file.name} (sha256 {loaded.provenance.get('model_sha256', '?')[:16]}...)",
        num_classes=loaded.num_classes, class_names=loaded.class_names,
    )
    return export_pipeline(
        net, loaded.diffusion, out, clip_denoised=clip, card=card,
        grid=grid if grid.is_file() else None, overwrite=overwrite,
    )


def main(argv: list[str] | None = None) -> None:
    """The command; a console script's wrapper exits with what this returns (nothing: status 0)."""
    args = parse_paths(
        "python -m ddpm.export", "Export a trained run as a diffusers DDPMPipeline folder with a Hub model card "
        "(DDPMPipeline.from_pretrained(OUT) loads it; `hf upload USER/REPO OUT` publishes it).",
        {"run": "a run directory (its checkpoints/last.ckpt) or a .ckpt file",
         "out": "the folder to write (must not exist or be empty, unless --overwrite)"},
        {"--raw": "export the raw trained weights instead of the EMA ones",
         "--overwrite": "replace an existing OUT folder"}, argv)
    out = export_run(args.run, args.out, raw=args.raw, overwrite=args.overwrite)
    print(f"wrote {out} ({'raw' if args.raw else 'EMA'} weights)\n" + load_hint(out) +
          f"publish: hf upload USER/REPO {out}   (huggingface_hub < 1.0: huggingface-cli upload USER/REPO {out})")


def load_hint(out: Path) -> str:
    """How to load the folder: ``DDPMPipeline`` for an unconditional UNet; a class-conditional one needs
    ``class_labels``, which ``DDPMPipeline`` cannot pass, so its card's loop."""
    config = json.loads((Path(out) / "unet" / "config.json").read_text())
    if config.get("num_class_embeds") is None:
        return f"load: DDPMPipeline.from_pretrained({str(out)!r})\n"
    return (f"load: a class-conditional UNet (class_labels 0..{config['num_class_embeds'] - 2}, "
            f"{config['num_class_embeds'] - 1} = no class): DDPMPipeline cannot pass labels; the sampling loop is in "
            f"{Path(out) / 'README.md'}\n")


if __name__ == "__main__":
    from ddpm.core.cli import user_errors

    with user_errors():
        main()
