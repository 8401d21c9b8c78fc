"""The Hub model card (``README.md``) of an exported run: the Hub's YAML header, what the model is, how it was
trained and measured (the run directory's records, :mod:`ddpm.services.metrics.records`), how to use it and the command
that reproduces it."""

from __future__ import annotations

from pathlib import Path

import yaml

from ddpm.core.diffusion import GaussianDiffusion, VarType
from ddpm.services.interop.folder import GRID_NAME
from ddpm.services.interop.names import PREDICTIONS, VARIANCES
from ddpm.services.metrics.records import evaluations, train_records, train_summary

METRIC_NAMES = {"fid": "FID", "is": "Inception Score", "nll": "NLL (bits/dim)"}


def run_metrics(run_dir: Path) -> list[tuple[str, float, str]]:
    """``(metric, value, how it was measured)`` for what the run directory holds (:mod:`ddpm.services.metrics.records`):
    ``sample.py`` evaluations below it (``metrics.json`` with ``fid_*`` / ``is_*``, ``nll.json``) and the
    training summary (``metrics.json``: ``val/bpd``, on digits ``digits/fid`` of the final samples)."""
    records = [r for ev in evaluations(run_dir) for r in ev.records(run_dir)]
    records += train_records(train_summary(run_dir))
    return [(METRIC_NAMES[r.metric], r.value, f"{r.protocol}; `{r.source}`") for r in records]


def reproduce_command(run_dir: Path) -> str | None:
    """``python train.py OVERRIDES`` of the run (its ``.hydra/overrides.yaml``, paths left out), or ``None``."""
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
    num_classes: int | None = None,
    class_names: list[str] | None = None,
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
        f"| sampling | DDPMScheduler `variance_type={VARIANCES.to_diffusers(diffusion.var_type)}`, "
        f"`clip_sample={str(bool(clip_denoised)).lower()}`, "
        f"`prediction_type={PREDICTIONS.to_diffusers(diffusion.mean_type)}` |",
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
                     "compute_fid=true` and the NLL evaluation write them).")
    lines += ["", "## Samples", ""]
    if grid:
        lines.append(f"![samples]({GRID_NAME})\n\nThe run's final samples (EMA weights, the run's sampler).")
    else:
        lines.append("The run directory holds no sample grid.")
    steps_arg = "" if T == 1000 else f"num_inference_steps={T}"
    lines.append("")
    if num_classes:  # DDPMPipeline calls the UNet without class_labels, which a conditional UNet2DModel refuses
        lines += guided_usage(image_shape, T, num_classes, class_names, diffusion.var_type.is_learned)
    else:
        lines += [
            "## Usage", "", "```python", "from diffusers import DDPMPipeline", "",
            'pipe = DDPMPipeline.from_pretrained("REPO_OR_FOLDER")',
            f"images = pipe(batch_size=16{', ' + steps_arg if steps_arg else ''}).images  # PIL images", "```", "",
            "Fewer steps with DDIM as the official code runs it (eps re-derived from the clipped x_0): "
            "`DDIMPipeline(pipe.unet, DDIMScheduler.from_config(pipe.scheduler.config))(num_inference_steps=50, "
            "eta=0.0, use_clipped_model_output=True)`." if diffusion.var_type != VarType.LEARNED_RANGE else
            "DDIMScheduler does not split the learned-variance channels; sample with the DDPMScheduler above.", "",
        ]
    lines += ["## Reproduce", ""]
    if reproduce:
        lines += ["```bash", reproduce, "```"]
    else:
        lines.append("The run's Hydra overrides were not found (`.hydra/overrides.yaml`).")
    return "\n".join(lines) + "\n"


def guided_usage(image_shape: tuple[int, int, int], T: int, num_classes: int, class_names: list[str] | None,
                 learned: bool) -> list[str]:
    """The card's section for a class-conditional model: a classifier-free guided loop with diffusers'
    scheduler (one batched pass for the conditional and the unconditional output)."""
    c, h, w = image_shape
    names = ", ".join(f"{i}={n}" for i, n in enumerate(class_names or [])) or f"0..{num_classes - 1}"
    mean = "[:, :C]" if learned else ""
    guided = ("eps = torch.cat([(1 + w) * cond[:, :C] - w * uncond[:, :C], cond[:, C:]], dim=1)  # GLIDE: "
              "conditional variance" if learned else "eps = (1 + w) * cond - w * uncond")
    return [
        "## Class-conditional sampling with classifier-free guidance", "",
        f"This model is class-conditional: the UNet takes `class_labels` in 0..{num_classes - 1} ({names}), and "
        f"{num_classes} is the \"no class\" token it was also trained with (label dropout), for classifier-free "
        "guidance (Ho & Salimans 2022): `eps = (1 + w) * eps(x, t, c) - w * eps(x, t, null)`. `w = 0` is plain "
        "conditional sampling; diffusers' (and Stable Diffusion's) `guidance_scale` is `1 + w`. `DDPMPipeline` "
        "calls the UNet without labels, which a class-conditional `UNet2DModel` refuses: sample with this loop.", "",
        "```python", "import torch", "from diffusers import DDPMScheduler, UNet2DModel", "",
        'unet = UNet2DModel.from_pretrained("REPO_OR_FOLDER", subfolder="unet").eval()',
        'scheduler = DDPMScheduler.from_pretrained("REPO_OR_FOLDER", subfolder="scheduler")',
        f"C, K, w = {c}, {num_classes}, 1.0  # image channels, classes (= the null token), guidance weight",
        "labels = torch.arange(K)  # one image per class", "null = torch.full_like(labels, K)",
        f"scheduler.set_timesteps({T})",
        f"x = torch.randn(len(labels), C, {h}, {w}, generator=torch.Generator().manual_seed(0))",
        "with torch.no_grad():", "    for t in scheduler.timesteps:",
        "        out = unet(torch.cat([x, x]), t, class_labels=torch.cat([labels, null])).sample",
        f"        cond, uncond = out.chunk(2){'  # mean channels [:C], variance [C:]' if mean else ''}",
        f"        {guided}", "        x = scheduler.step(eps, t, x).prev_sample",
        "images = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # [N, C, H, W]", "```", "",
    ]
