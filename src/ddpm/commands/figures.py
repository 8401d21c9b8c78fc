"""The paper's qualitative figures, one command each (labelled PNG grids; settings: conf/figures.yaml and
conf/figure/NAME.yaml, ``--help`` lists them):

::

    python -m ddpm.figures ckpt_path=RUN                                  # progressive (Figure 6)
    python -m ddpm.figures ckpt_path=RUN sampler=dpm_solver sampler.steps=20
    python -m ddpm.figures figure=interpolation ckpt_path=RUN figure.t=250 [figure.sweep=true]
    python -m ddpm.figures figure=shared_xt ckpt_path=RUN figure.continuations=4

Written to ``out=`` (default ``RUN/figures/<figure>.png`` beside the checkpoint, ``outputs/figures/<weights
name>/`` for published weights). Times ``figure.t`` and ``figure.splits`` are on the paper's scale of 1000
steps and are rescaled to the model's T (``t=500`` is T/2). ``sampler=ancestral`` (the paper's, default) or any
registered sampler that runs on the model's own chain (:data:`ddpm.core.diffusion.SAMPLERS`, e.g. ``sampler=dpm_solver
sampler.steps=N``: DPM-Solver++(2M), deterministic, N network evaluations); shared_xt shows the continuations
of one chain, so it refuses a deterministic sampler (the registry's ``stochastic`` flag) and needs one that
steps through every t.

* **progressive** (Figure 6): rows are samples, columns the predicted x0-hat at ``frames - 1`` evenly spaced
  points of the reverse chain (Algorithm 2), from t = 1000 down; the last column is the final sample x_0.
* **interpolation** (Figure 8; Figure 9 with ``sweep=true``): two test images (``pair=[i,j]``, indices into
  the test split) are encoded to x_t by q(x_t | x_0) with the SAME noise, mixed linearly for ``lambdas`` values
  of lambda in [0, 1] and decoded by the reverse chain from t with the same noise for every lambda. Columns:
  source, lambda = 0 .. 1, target. ``sweep=true`` draws one row per t in {0, T/8, ..., T} (t=0 = pixel space).
* **shared_xt** (Figure 7): one reverse chain is split at several t; each row shows the shared x_t
  (clamped to [-1, 1]) and ``continuations`` samples x_0 ~ p(x_0 | x_t) drawn from it.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from omegaconf import DictConfig

from ddpm.core.cli import hydra_app
from ddpm.core.config import SamplerConfig
from ddpm.core.data import model_to_uint8 as to_uint8
from ddpm.core.diffusion import SAMPLERS, SeededNoise, final_sample
from ddpm.core.diffusion.guidance import with_labels
from ddpm.core.io import make_grid_uint8, save_png
from ddpm.core.rundir import tool_dir
from ddpm.services.generate import class_labels, generate, seeds_for
from ddpm.services.loading import load_model, model_datamodule
from ddpm.services.runtime import device_of

__all__ = ["progressive", "progressive_chain", "interpolation", "shared_xt", "figure_sampler", "make_figure", "main"]


def _paper_to_code(t_paper: float, T: int) -> int:
    """Paper time on the 1000-step scale -> code index (t=500 at T=1000 -> 499); -1 means t = 0."""
    return int(round(float(t_paper) * T / 1000.0)) - 1


def figure_sampler(sampler, figure: str) -> SamplerConfig:
    """The sampler (a ``sampler`` config, :class:`~ddpm.core.config.SamplerConfig` or ``None``: ancestral) checked for
    ``figure``: the figures follow the model's own chain (a registered sampler that places its evaluations on it,
    not a respaced one), with the model's variance; shared_xt needs a stochastic sampler (the registry's flag)
    that steps through every index."""
    s = SamplerConfig.from_node(sampler or {"name": "ancestral"})
    on_chain = [n for n, spec in SAMPLERS.items() if not spec.respaces]
    if s.spec.respaces:
        raise ValueError(f"sampler={s.name} runs on a respaced chain; the figures follow the model's own chain: "
                         f"valid {on_chain} (sampler.steps=N network evaluations for the solvers)")
    if s.var_type is not None:
        raise ValueError(f"sampler.var_type={s.var_type}: the figures sample with the model's own variance "
                         "(sampler.var_type=null)")
    if figure in ("interpolation", "shared_xt") and not s.spec.starts_anywhere:
        raise ValueError(f"sampler={s.name} always starts at x_T; figure={figure} decodes from a given x_t: valid "
                         f"{[n for n in on_chain if SAMPLERS[n].starts_anywhere]}")
    if figure == "shared_xt":
        every_index = [n for n in on_chain if SAMPLERS[n].full_chain]
        if not s.spec.is_stochastic(s.params):
            raise ValueError(f"sampler={s.name} is deterministic: the continuations of one x_t would all be the "
                             f"same image; valid for figure=shared_xt: {every_index}")
        if not s.spec.full_chain:
            raise ValueError(f"sampler={s.name} does not step through every t (figure=shared_xt splits the chain at "
                             f"any t); valid: {every_index}")
    return s


def _chain(model_fn, diffusion, shape, sampler: SamplerConfig, *, noise, device, x_start_t=None, t_start=None):
    """``sampler``'s progressive function from the registry: yields ``{"t", "sample", "pred_xstart"}``."""
    return sampler.spec.run(diffusion, model_fn, shape, steps=sampler.steps, noise=noise, device=device,
                            clip_denoised=sampler.clip_denoised, x_start_t=x_start_t, t_start=t_start,
                            **sampler.params)


@torch.no_grad()
def progressive_chain(model_fn, diffusion, image_shape, *, num_images=8, frames=10, seed=0, device="cpu",
                      sampler=None) -> tuple[torch.Tensor, list[int]]:
    """uint8 ``[num_images, frames, C, H, W]``: x0-hat along the chain, the last frame the final sample; and the
    code index of every network evaluation of the chain, in order."""
    sampler = figure_sampler(sampler, "progressive")
    marks = progressive_marks(sampler.spec.evaluations(sampler.steps, diffusion.num_timesteps), frames)
    noise = SeededNoise(seeds_for(seed, 0, num_images), device=device)
    cols, final, ts = [], None, []
    for done, step in enumerate(_chain(model_fn, diffusion, (num_images, *image_shape), sampler, noise=noise,
                                       device=device), start=1):
        ts.append(int(step["t"]))
        if done in marks:
            cols.append(step["pred_xstart"].clamp(-1, 1))
        final = step["sample"]
    cols.append(final)
    return to_uint8(torch.stack(cols, dim=1)).cpu(), ts


def progressive(model_fn, diffusion, image_shape, **kwargs) -> torch.Tensor:
    """The images of :func:`progressive_chain`."""
    return progressive_chain(model_fn, diffusion, image_shape, **kwargs)[0]


def progressive_marks(T: int, frames: int) -> list[int]:
    """After how many of the chain's ``T`` reverse steps :func:`progressive` records x0-hat: ``frames - 1``
    distinct counts evenly spaced from 1 (x0-hat at the first step, t = T) to at most T - 1; the last frame is
    the final sample x_0. ``frames`` is capped at ``T`` (a chain of T steps has no more distinct frames)."""
    frames = max(2, min(int(frames), T))
    return sorted({1 + round(k * (T - 1) / (frames - 1)) for k in range(frames - 1)})


def progressive_labels(timesteps: list[int], marks: list[int], num_timesteps: int) -> list[str]:
    """The column labels of :func:`progressive`: the paper time (1000-step scale) of each x0-hat, then x_0."""
    return [f"t={round((timesteps[d - 1] + 1) * 1000 / num_timesteps)}" for d in marks] + ["x_0"]


def check_paper_time(key: str, t_paper: float) -> float:
    """``t_paper`` if it lies on the paper's 1000-step scale, else a ``ValueError`` naming ``key`` and the range."""
    if not 0 <= float(t_paper) <= 1000:
        raise ValueError(f"{key}={t_paper:g} is out of range: times are on the paper's scale 0..1000 (rescaled to "
                         "the model's T; t=500 is T/2, t=0 is the image itself)")
    return float(t_paper)


@torch.no_grad()
def interpolation(model_fn, diffusion, x0_a, x0_b, *, t_paper=500.0, lambdas=9, seed=0, device="cpu",
                  sampler=None) -> torch.Tensor:
    """uint8 ``[lambdas + 2, C, H, W]``: source, the decoded mixes for lambda = 0 .. 1, target."""
    sampler = figure_sampler(sampler, "interpolation")
    T = diffusion.num_timesteps
    t = _paper_to_code(check_paper_time("t", t_paper), T)
    a, b = x0_a.to(device).unsqueeze(0), x0_b.to(device).unsqueeze(0)
    lam = torch.linspace(0, 1, int(lambdas), device=device).view(-1, 1, 1, 1)
    if t < 0:  # t = 0: mixing in pixel space
        mixes = (1 - lam) * a + lam * b
    else:
        z = SeededNoise(seeds_for(seed, 0, 1), device=device).randn(*a.shape[1:])  # SHARED encoder noise
        tt = torch.full((1,), t, device=device, dtype=torch.long)
        xa, xb = diffusion.q_sample(a, tt, noise=z), diffusion.q_sample(b, tt, noise=z)
        mix = (1 - lam) * xa + lam * xb
        # the same decoder noise for every lambda: every row uses the same seed
        noise = SeededNoise([seeds_for(seed, 1, 2)[0]] * mix.shape[0], device=device)
        # (a solver asked for more evaluations than t+1 uses every index from t)
        mixes = final_sample(_chain(model_fn, diffusion, tuple(mix.shape), sampler, noise=noise, device=device,
                                    x_start_t=mix, t_start=t))
    return to_uint8(torch.cat([a, mixes, b])).cpu()


@torch.no_grad()
def shared_xt(model_fn, diffusion, image_shape, *, splits=(1000, 750, 500, 250), continuations=6, seed=0,
              device="cpu", sampler=None) -> torch.Tensor:
    """uint8 ``[len(splits), continuations + 1, C, H, W]``: per split, x_t then the continuations."""
    sampler = figure_sampler(sampler, "shared_xt")
    T = diffusion.num_timesteps
    codes = [min(T - 1, max(0, _paper_to_code(check_paper_time("splits", s), T))) for s in splits]
    noise = SeededNoise(seeds_for(seed, 0, 1), device=device)
    x = noise.randn(*image_shape).to(device)  # x_T of the main chain
    states = {T - 1: x}
    for step in _chain(model_fn, diffusion, (1, *image_shape), sampler, noise=noise, device=device, x_start_t=x,
                       t_start=T - 1):
        if step["t"] - 1 in codes:
            states[step["t"] - 1] = step["sample"]
    rows = []
    for r, c in enumerate(codes):
        xt = states[c]
        k = int(continuations)
        cont_noise = SeededNoise(seeds_for(seed + 1000 + r, 0, k), device=device)
        outs = final_sample(_chain(model_fn, diffusion, (k, *image_shape), sampler, noise=cont_noise, device=device,
                                   x_start_t=xt.expand(k, *image_shape).contiguous(), t_start=c))
        rows.append(torch.cat([xt.clamp(-1, 1), outs]))
    return to_uint8(torch.stack(rows)).cpu()


def classes_figure(model_fn, diffusion, image_shape, num_classes: int, *, seeds: int = 8, scales=(0.0,), seed=0,
                   device="cpu", sampler: SamplerConfig | None = None) -> torch.Tensor:
    """A conditional model's samples, uint8 ``[K, cols, C, H, W]``: row ``c`` is class ``c``. One guidance
    weight: column ``j`` is seed ``j`` (the same noise down a column). Several: column ``j`` is weight
    ``scales[j]`` and row ``c`` keeps seed ``c``'s noise in every column."""
    rows = []
    for c in range(num_classes):
        if len(scales) == 1:
            rows.append(generate(model_fn, diffusion, seeds_for(seed, 0, seeds), image_shape, sampler, device=device,
                                 labels=torch.full((seeds,), c), guidance_scale=float(scales[0]),
                                 num_classes=num_classes))
        else:
            rows.append(torch.cat([generate(model_fn, diffusion, seeds_for(seed, c, c + 1), image_shape, sampler,
                                            device=device, labels=torch.tensor([c]), guidance_scale=float(w),
                                            num_classes=num_classes) for w in scales]))
    return to_uint8(torch.stack(rows)).cpu()


# ------------------------------------------------------------------------------------------------ CLI
def grid_png(images: torch.Tensor, out: Path, nrow: int, upscale: int | None,
             col_labels: list[str] | None = None, row_labels: list[str] | None = None) -> Path:
    """uint8 ``[N, C, H, W]`` in row-major order -> PNG with ``nrow`` images per row, with a label above each
    column and left of each row (t on the paper's 1000-step scale, lambda)."""
    up = int(upscale) if upscale else max(1, math.ceil(64 / images.shape[-1]))
    pad = 2
    grid = make_grid_uint8(images, nrow=nrow, pad=pad, upscale=up)
    if col_labels or row_labels:
        grid = _label(grid, images.shape[-1] * up, pad, col_labels or [], row_labels or [])
    save_png(grid, out)
    return out


def _label(grid: torch.Tensor, cell: int, pad: int, cols: list[str], rows: list[str]) -> torch.Tensor:
    """The grid with a white band on top (column labels) and on the left (row labels)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    img = Image.fromarray(grid.numpy() if grid.shape[-1] == 3 else grid[..., 0].numpy()).convert("RGB")
    measure = ImageDraw.Draw(img)
    width = max((measure.textlength(r, font=font) for r in rows), default=0)
    left, top = (int(width) + 8 if rows else 0), (16 if cols else 0)
    out = Image.new("RGB", (img.width + left, img.height + top), "white")
    out.paste(img, (left, top))
    draw = ImageDraw.Draw(out)
    step = cell + pad
    for j, text in enumerate(cols):
        x = left + pad + j * step + (cell - draw.textlength(text, font=font)) / 2
        draw.text((x, 2), text, fill="black", font=font)
    for i, text in enumerate(rows):
        draw.text((4, top + pad + i * step + cell / 2 - 6), text, fill="black", font=font)
    return torch.from_numpy(np.array(out))  # a writable copy (PIL's buffer is read-only)


def default_out(provenance: dict, figure: str) -> Path:
    """``<run dir>/figures/<figure>.png`` beside a checkpoint, ``outputs/figures/<weights name>/<figure>.png`` for
    published weights (:func:`ddpm.core.rundir.tool_dir`)."""
    return tool_dir(provenance, "figures") / f"{figure}.png"


def figure_model_fn(model_fn, num_classes: int | None, num_images: int, device="cpu"):
    """The progressive figure's model function: a class-conditional model's (the quickstart's) with image i of
    class i mod K, as ``sample.py`` draws it; an unconditional one's unchanged. (The interpolation and shared-x_t
    figures start from real images or one x_t, so they give no label: the null token.)"""
    if not num_classes:
        return model_fn
    return with_labels(model_fn, class_labels(None, 0, 0, num_images, num_classes).to(device))


def make_figure(cfg: DictConfig) -> Path:
    """The figure ``cfg.figure`` (conf/figures.yaml) as a labelled PNG; returns its path."""
    fig = cfg.figure
    sampler = figure_sampler(cfg.sampler, fig.name)
    if fig.name == "interpolation":
        check_paper_time("figure.t", fig.t)
    elif fig.name == "shared_xt":
        for split in fig.splits:
            check_paper_time("figure.splits", split)
    device = device_of(cfg.device)
    loaded = load_model(cfg.ckpt_path, cfg.pretrained, cfg.use_ema).to(device)
    if fig.name == "classes" and not loaded.num_classes:
        raise ValueError("figure=classes: this model is unconditional (trained without model.num_classes); valid "
                         "figures for it: progressive, interpolation, shared_xt")
    fn, diff, shape = loaded.model_fn(), loaded.diffusion, loaded.image_shape
    sampler.check(diff)
    common = {"seed": int(cfg.seed), "device": device, "sampler": sampler}
    out = Path(cfg.out) if cfg.out else default_out(loaded.provenance, fig.name)
    if loaded.num_classes and fig.name in ("interpolation", "shared_xt"):
        print(f"[ddpm] figure={fig.name} of a class-conditional model: no label (its null token)")
    if fig.name == "progressive":
        x, ts = progressive_chain(figure_model_fn(fn, loaded.num_classes, fig.num_images, device), diff, shape,
                                  num_images=fig.num_images, frames=fig.frames, **common)
        labels = progressive_labels(ts, progressive_marks(len(ts), fig.frames), diff.num_timesteps)
        path = grid_png(x.flatten(0, 1), out, x.shape[1], cfg.upscale, col_labels=labels)
    elif fig.name == "interpolation":
        from ddpm.core.data import uint8_to_model

        imgs = model_datamodule(loaded, cfg.data, "the interpolation figure").splits()[fig.split]
        i, j = fig.pair
        if max(i, j) >= len(imgs):  # the split's size is known only now, from the data
            raise ValueError(f"figure.pair=[{i}, {j}] is not valid for the {fig.split} split of {len(imgs)} images: "
                             f"expected two indices in 0..{len(imgs) - 1} (or figure.split=NAME for another split)")
        a, b = uint8_to_model(imgs[i]), uint8_to_model(imgs[j])
        ts = [1000 * k / 8 for k in range(9)] if fig.sweep else [float(fig.t)]
        rows = [interpolation(fn, diff, a, b, t_paper=t, lambdas=fig.lambdas, **common) for t in ts]
        # ASCII: PIL's default font has no Greek glyphs (a lambda rendered as an empty box)
        cols = ["x0 a", *(f"lam={v:.2f}" for v in torch.linspace(0, 1, fig.lambdas).tolist()), "x0 b"]
        path = grid_png(torch.cat(rows), out, rows[0].shape[0], cfg.upscale, col_labels=cols,
                        row_labels=[f"t={t:g}" for t in ts])
    elif fig.name == "classes":
        scales = [float(w) for w in fig.guidance_scales]
        x = classes_figure(fn, diff, shape, loaded.num_classes, seeds=int(fig.seeds), scales=scales, **common)
        names = loaded.class_names or [str(c) for c in range(loaded.num_classes)]
        cols = [f"w={w:g}" for w in scales] if len(scales) > 1 else [f"seed {j}" for j in range(x.shape[1])]
        path = grid_png(x.flatten(0, 1), out, x.shape[1], cfg.upscale, col_labels=cols, row_labels=names)
    else:
        splits = [float(s) for s in fig.splits]
        x = shared_xt(fn, diff, shape, splits=splits, continuations=fig.continuations, **common)
        cols = ["x_t", *(f"x_0 #{k + 1}" for k in range(x.shape[1] - 1))]
        path = grid_png(x.flatten(0, 1), out, x.shape[1], cfg.upscale, col_labels=cols,
                        row_labels=[f"t={s:g}" for s in splits])
    print(path)
    return path


def main() -> None:
    hydra_app("figures", make_figure)


if __name__ == "__main__":
    main()
