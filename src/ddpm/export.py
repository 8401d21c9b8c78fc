"""``python -m ddpm.export RUN OUT``: a trained run as a diffusers pipeline folder and a Hub model repository.

``OUT`` is what ``diffusers.DDPMPipeline.from_pretrained(OUT)`` loads with no extra arguments and what
``hf upload USER/REPO OUT`` (``huggingface-cli upload`` before huggingface_hub 1.0) publishes as it is:

* ``unet/``: ``config.json`` (a ``UNet2DModel`` config) and ``diffusion_pytorch_model.safetensors``; the names
  are :func:`ddpm.convert.diffusers_key_map` read backwards, so export and import share one mapping;
* ``scheduler/scheduler_config.json``: a ``DDPMScheduler`` config with the run's betas (float64, exact, as
  ``trained_betas``), variance type, clipping and prediction type;
* ``model_index.json``; ``README.md``, the model card (the Hub's YAML header, data, objective, steps, the
  run's measured metrics, a sample grid, the command that reproduces the run); ``samples.png`` when the run
  has one.

A model that diffusers cannot sample exactly (a mu-predicting network, a raw log-variance output, widths
whose GroupNorm is not 32 groups) is refused with one line that says why. ``python -m ddpm.convert OUT
FILE.safetensors`` reads the folder back, bit-identical.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ddpm.convert import diffusers_key_map, unet_kwargs_from_diffusers_config
from ddpm.diffusion import GaussianDiffusion, MeanType, VarType, schedule_name
from ddpm.io import write_json
from ddpm.loading import load_model
from ddpm.metrics.records import evaluations, train_records, train_summary
from ddpm.nets import UNet
from ddpm.rundir import run_dir_of

#: Our schedule names -> the diffusers ``beta_schedule`` of the same formula (informational: the exact betas
#: always travel as ``trained_betas``, which diffusers uses in preference to the name).
DIFFUSERS_SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2", "quad": "scaled_linear"}
PREDICTION_TYPES = {MeanType.EPS: "epsilon", MeanType.X0: "sample"}
VARIANCE_TYPES = {
    VarType.FIXED_LARGE: "fixed_large",
    VarType.FIXED_SMALL: "fixed_small",
    VarType.LEARNED_RANGE: "learned_range",
}
_ATTN_LINEAR = (".to_q.weight", ".to_k.weight", ".to_v.weight", ".to_out.0.weight")
GRID_NAME = "samples.png"


class NotExportableError(ValueError):
    """The model has no exact diffusers equivalent (a user error: one line, exit status 1)."""


# ----------------------------------------------------------------------------------------------------
# UNet
# ----------------------------------------------------------------------------------------------------


def diffusers_unet_config(unet: UNet) -> dict[str, Any]:
    """The ``UNet2DModel`` config of ``unet``'s architecture, every DDPM-specific key written out (diffusers'
    defaults are not DDPM's). Refuses an architecture that ``UNet2DModel`` cannot express."""
    cfg = unet.config()
    if not unet.resamp_with_conv:
        raise NotExportableError(
            "resamp_with_conv=false (average-pool down / plain nearest up) has no UNet2DModel equivalent: "
            "diffusers' DDPM blocks resample with convolutions"
        )
    groups = {m.num_groups for m in unet.modules() if isinstance(m, torch.nn.GroupNorm)}
    if groups != {32}:
        raise NotExportableError(
            f"the UNet's GroupNorms use {sorted(groups)} groups (ch={unet.ch}: a width that 32 does not divide "
            "gets fewer groups here), but UNet2DModel uses one group count for every norm; use ch a multiple "
            "of 32 to export"
        )
    n = len(unet.ch_mult)
    attn = [unet.resolution // 2**i in unet.attn_resolutions for i in range(n)]
    config = {
        "_class_name": "UNet2DModel",
        "sample_size": unet.resolution,
        "in_channels": unet.in_channels,
        "out_channels": unet.out_channels,
        "block_out_channels": [unet.ch * m for m in unet.ch_mult],
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "layers_per_block": unet.num_res_blocks,
        "mid_block_type": "UNetMidBlock2D",
        "add_attention": True,
        "attention_head_dim": None,  # single-head attention at every width
        "norm_num_groups": 32,
        "attn_norm_num_groups": None,
        "norm_eps": 1e-6,
        "act_fn": "silu",
        "dropout": unet.dropout,
        "downsample_padding": 0,  # TF 'SAME' padding of the stride-2 conv
        "downsample_type": "conv",
        "upsample_type": "conv",
        "flip_sin_to_cos": False,  # sin first
        "freq_shift": 1,  # exponent / (half - 1)
        "time_embedding_type": "positional",
        "time_embedding_dim": None,
        "center_input_sample": False,
        "mid_block_scale_factor": 1,
        "resnet_time_scale_shift": "default",
        "class_embed_type": None,
        "num_class_embeds": None,
    }
    try:
        config["_diffusers_version"] = metadata.version("diffusers")
    except metadata.PackageNotFoundError:
        pass
    # the importer must read back exactly this architecture (attention resolutions that fall on no level are
    # no-ops in our UNet and are dropped)
    back = unet_kwargs_from_diffusers_config(config)
    want = {k: v for k, v in cfg.items() if k != "grad_checkpointing"}
    want["attn_resolutions"] = [unet.resolution // 2**i for i in range(n) if attn[i]]
    assert back == want, f"diffusers config reads back as {back}, not {want}"
    return config


def diffusers_state_dict(unet: UNet) -> dict[str, torch.Tensor]:
    """``unet``'s tensors under their ``UNet2DModel`` names (the converter's map inverted); the attention
    1x1 convolutions become the ``Linear`` weights diffusers has there."""
    out: dict[str, torch.Tensor] = {}
    sd = unet.state_dict()
    for ours, theirs in diffusers_key_map(unet).items():
        value = sd[ours].detach().cpu()
        if theirs.endswith(_ATTN_LINEAR) and value.ndim == 4:
            assert value.shape[2:] == (1, 1), (ours, tuple(value.shape))
            value = value[:, :, 0, 0]
        out[theirs] = value.contiguous().clone()
    return out


# ----------------------------------------------------------------------------------------------------
# scheduler
# ----------------------------------------------------------------------------------------------------


def check_exportable(diffusion: GaussianDiffusion) -> None:
    """Raise :class:`NotExportableError` (one line, with the reason) unless a diffusers ``DDPMScheduler``
    samples ``diffusion`` exactly."""
    if diffusion.mean_type == MeanType.MU:
        raise NotExportableError(
            "mean_type=mu (the network predicts the posterior mean mu~, Table 2's mu rows): diffusers' "
            "schedulers take only epsilon, sample or v_prediction outputs, so a pipeline would sample it wrongly"
        )
    if diffusion.var_type == VarType.LEARNED:
        raise NotExportableError(
            "var_type=learned (the extra channels are log sigma^2): diffusers' 'learned' reads them as a "
            "variance and 'learned_range' as an interpolation weight, so neither samples this model correctly"
        )
    if diffusion.mean_type not in PREDICTION_TYPES or diffusion.var_type not in VARIANCE_TYPES:
        raise NotExportableError(f"no diffusers equivalent of {diffusion.mean_type.value}/{diffusion.var_type.value}")
    if not np.array_equal(diffusion.timestep_map_np, np.arange(diffusion.num_timesteps)):
        raise NotExportableError("a respaced diffusion cannot be exported; export the trained one")


def diffusers_scheduler_config(diffusion: GaussianDiffusion, clip_denoised: bool = True) -> dict[str, Any]:
    """The ``DDPMScheduler`` config that samples ``diffusion`` as our ancestral sampler does.

    ``trained_betas`` holds the float64 betas exactly (JSON numbers are float64; ``repr`` round-trips):
    diffusers builds its named schedules in float32 arithmetic (``torch.linspace``), which does not reproduce
    them bit for bit, while ``trained_betas`` cast to float32 equals our float32 buffer. ``beta_schedule`` /
    ``beta_start`` / ``beta_end`` name the schedule for the reader (diffusers ignores them next to
    ``trained_betas``).
    """
    check_exportable(diffusion)
    schedule = schedule_name(diffusion.betas_np)
    betas = [float(b) for b in diffusion.betas_np]
    T = diffusion.num_timesteps
    config: dict[str, Any] = {"_class_name": "DDPMScheduler", "num_train_timesteps": T}
    if schedule in DIFFUSERS_SCHEDULES:
        config["beta_schedule"] = DIFFUSERS_SCHEDULES[schedule]
    config["beta_start"], config["beta_end"] = betas[0], betas[-1]
    config.update(
        trained_betas=betas,
        variance_type=VARIANCE_TYPES[diffusion.var_type],
        clip_sample=bool(clip_denoised),
        clip_sample_range=1.0,
        prediction_type=PREDICTION_TYPES[diffusion.mean_type],
        thresholding=False,
        timestep_spacing="leading",
        steps_offset=0,
        rescale_betas_zero_snr=False,
    )
    try:
        config["_diffusers_version"] = metadata.version("diffusers")
    except metadata.PackageNotFoundError:
        pass
    return config


# ----------------------------------------------------------------------------------------------------
# the folder
# ----------------------------------------------------------------------------------------------------


def _save_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": "pt"})


def export_pipeline(
    unet: UNet,
    diffusion: GaussianDiffusion,
    out: str | os.PathLike,
    *,
    clip_denoised: bool = True,
    card: str | None = None,
    grid: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the pipeline folder ``out`` (see the module doc). Everything is checked and written into a
    temporary folder beside ``out`` first, then moved into place, so a refusal or a crash leaves no folder.

    :param card: the model card (``README.md``); ``None`` writes none.
    :param grid: an image to copy as ``samples.png`` (the card links it).
    :param overwrite: replace an existing ``out``; otherwise an existing non-empty ``out`` is an error.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out} exists and is not empty; pass --overwrite to replace it")
    sched = diffusers_scheduler_config(diffusion, clip_denoised)
    if unet.out_channels != unet.in_channels * diffusion.model_out_channels_factor:
        raise ValueError(
            f"the UNet outputs {unet.out_channels} channels for {unet.in_channels} input channels, but "
            f"var_type={diffusion.var_type.value} needs {unet.in_channels * diffusion.model_out_channels_factor}"
        )
    unet_config = diffusers_unet_config(unet)
    tensors = diffusers_state_dict(unet)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        (tmp / "unet").mkdir()
        (tmp / "scheduler").mkdir()
        write_json(tmp / "unet" / "config.json", unet_config)
        _save_safetensors(tensors, tmp / "unet" / "diffusion_pytorch_model.safetensors")
        write_json(tmp / "scheduler" / "scheduler_config.json", sched)
        index = {
            "_class_name": "DDPMPipeline",
            "scheduler": ["diffusers", "DDPMScheduler"],
            "unet": ["diffusers", "UNet2DModel"],
        }
        if "_diffusers_version" in sched:
            index["_diffusers_version"] = sched["_diffusers_version"]
        write_json(tmp / "model_index.json", index)
        if grid is not None:
            shutil.copyfile(grid, tmp / GRID_NAME)
        if card is not None:
            (tmp / "README.md").write_text(card, encoding="utf-8")
        os.chmod(tmp, 0o755 & ~_umask())
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------------------------------------
# the model card
# ----------------------------------------------------------------------------------------------------


METRIC_NAMES = {"fid": "FID", "is": "Inception Score", "nll": "NLL (bits/dim)"}


def run_metrics(run_dir: Path) -> list[tuple[str, float, str]]:
    """``(metric, value, how it was measured)`` for what the run directory holds (:mod:`ddpm.metrics.records`):
    ``sample.py`` evaluations below it (``metrics.json`` with ``fid_*`` / ``is_*``, ``nll.json``) and the
    training summary (``metrics.json``: ``val/bpd``, on digits ``digits/fid`` of the final samples)."""
    records = [r for ev in evaluations(run_dir) for r in ev.records(run_dir)]
    records += train_records(train_summary(run_dir))
    return [(METRIC_NAMES[r.metric], r.value, f"{r.protocol}; `{r.source}`") for r in records]


def _reproduce_command(run_dir: Path) -> str | None:
    overrides = run_dir / ".hydra" / "overrides.yaml"
    if not overrides.is_file():
        return None
    try:
        items = yaml.safe_load(overrides.read_text()) or []
    except yaml.YAMLError:
        return None
    keep = [str(o) for o in items if not str(o).startswith(("paths.output_dir=", "hydra."))]
    return " ".join(["python train.py", *keep])


def model_card(
    *,
    title: str,
    data: str,
    image_shape: tuple[int, int, int],
    diffusion: GaussianDiffusion,
    schedule: str | None,
    clip_denoised: bool,
    steps: int | None,
    use_ema: bool,
    ema_decay: float | None,
    metrics: list[tuple[str, float, str]],
    grid: bool,
    reproduce: str | None,
    source: str,
) -> str:
    """The Hub model card: YAML header, then what the model is, how it was trained and measured, how to use it."""
    header = {
        "library_name": "diffusers",
        "pipeline_tag": "unconditional-image-generation",
        "tags": ["pytorch", "diffusers", "unconditional-image-generation", "ddpm", data.lower()],
    }
    c, h, w = image_shape
    T = diffusion.num_timesteps
    weights = f"EMA (decay {ema_decay})" if use_ema else "raw (not the EMA average)"
    lines = [
        "---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "",
        f"# {title}", "",
        "A denoising diffusion probabilistic model (Ho et al. 2020, "
        "[arXiv:2006.11239](https://arxiv.org/abs/2006.11239)) trained with the `ddpm` project and exported "
        "with `python -m ddpm.export`.", "",
        "| | |", "|---|---|",
        f"| training data | {data}, {c}x{h}x{w} images scaled to [-1, 1] |",
        f"| objective | mean `{diffusion.mean_type.value}`, variance `{diffusion.var_type.value}`, "
        f"loss `{diffusion.loss_type.value}` |",
        f"| forward process | {schedule or 'custom'} schedule, T = {T} (betas exactly as trained in "
        "`scheduler/scheduler_config.json` `trained_betas`) |",
        f"| sampling | DDPMScheduler `variance_type={VARIANCE_TYPES[diffusion.var_type]}`, "
        f"`clip_sample={str(bool(clip_denoised)).lower()}`, "
        f"`prediction_type={PREDICTION_TYPES[diffusion.mean_type]}` |",
        f"| training steps | {steps if steps is not None else 'unknown'} |",
        f"| weights | {weights} |",
        f"| exported from | `{source}` |", "",
        "## Metrics", "",
    ]
    if metrics:
        lines += ["| metric | value | how it was measured |", "|---|---|---|"]
        lines += [f"| {name} | {value:.4g} | {how} |" for name, value, how in metrics]
    else:
        lines.append("No measurements were found in the run directory (`python sample.py ckpt_path=RUN "
                     "compute_fid=true` and `nll=true` write them).")
    lines += ["", "## Samples", ""]
    if grid:
        lines.append(f"![samples]({GRID_NAME})\n\nThe run's final samples (EMA weights, the run's sampler).")
    else:
        lines.append("The run directory holds no sample grid.")
    steps_arg = "" if T == 1000 else f"num_inference_steps={T}"
    lines += [
        "", "## Usage", "", "```python", "from diffusers import DDPMPipeline", "",
        'pipe = DDPMPipeline.from_pretrained("REPO_OR_FOLDER")',
        f"images = pipe(batch_size=16{', ' + steps_arg if steps_arg else ''}).images  # PIL images", "```", "",
        "Fewer steps with DDIM as the official code runs it (eps re-derived from the clipped x_0): "
        "`DDIMPipeline(pipe.unet, DDIMScheduler.from_config(pipe.scheduler.config))(num_inference_steps=50, "
        "eta=0.0, use_clipped_model_output=True)`." if diffusion.var_type != VarType.LEARNED_RANGE else
        "DDIMScheduler does not split the learned-variance channels; sample with the DDPMScheduler above.", "",
        "## Reproduce", "",
    ]
    if reproduce:
        lines += ["```bash", reproduce, "```"]
    else:
        lines.append("The run's Hydra overrides were not found (`.hydra/overrides.yaml`).")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------
# command
# ----------------------------------------------------------------------------------------------------


def export_run(run: str | os.PathLike, out: str | os.PathLike, *, raw: bool = False, overwrite: bool = False) -> Path:
    """Export a run directory or checkpoint (EMA weights unless ``raw``) to ``out``; returns ``out``."""
    loaded = load_model(ckpt_path=run, use_ema=not raw)
    check_exportable(loaded.diffusion)  # before anything else: a mu run is one line, nothing written
    net = loaded.net
    if not isinstance(net, UNet):
        raise NotExportableError(f"the network is a {type(net).__name__}, not this project's UNet")
    cfg = loaded.run_cfg or {}
    schedule = schedule_name(loaded.diffusion.betas_np)
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
        schedule=schedule,
        clip_denoised=clip,
        steps=loaded.provenance.get("global_step"),
        use_ema=not raw,
        ema_decay=(cfg.get("optim") or {}).get("ema_decay"),
        metrics=run_metrics(run_dir),
        grid=grid.is_file(),
        reproduce=_reproduce_command(run_dir),
        source=f"{ckpt_file.name} (sha256 {loaded.provenance.get('model_sha256', '?')[:16]}...)",
    )
    return export_pipeline(
        net, loaded.diffusion, out, clip_denoised=clip, card=card,
        grid=grid if grid.is_file() else None, overwrite=overwrite,
    )


def main(argv: list[str] | None = None) -> Path:
    from ddpm.cli import parse_paths

    args = parse_paths(
        "python -m ddpm.export", "Export a trained run as a diffusers DDPMPipeline folder with a Hub model card "
        "(DDPMPipeline.from_pretrained(OUT) loads it; `hf upload USER/REPO OUT` publishes it).",
        {"run": "a run directory (its checkpoints/last.ckpt) or a .ckpt file",
         "out": "the folder to write (must not exist or be empty, unless --overwrite)"},
        {"--raw": "export the raw trained weights instead of the EMA ones",
         "--overwrite": "replace an existing OUT folder"}, argv)
    out = export_run(args.run, args.out, raw=args.raw, overwrite=args.overwrite)
    print(f"wrote {out} ({'raw' if args.raw else 'EMA'} weights)\n"
          f"load: DDPMPipeline.from_pretrained({str(out)!r})\n"
          f"publish: hf upload USER/REPO {out}   (huggingface_hub < 1.0: huggingface-cli upload USER/REPO {out})")
    return out


if __name__ == "__main__":
    from ddpm.cli import user_errors

    with user_errors():
        main()
