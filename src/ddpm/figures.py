"""The paper's qualitative figures, one command each (PNG grids):

::

    python -m ddpm.figures progressive ckpt_path=RUN [num_images=8 frames=10 seed=0 out=progressive.png]
    python -m ddpm.figures progressive ckpt_path=RUN sampler=dpm_solver steps=20
    python -m ddpm.figures interpolation ckpt_path=RUN [pair=0,1 t=500 lambdas=9 sweep=false out=...]
    python -m ddpm.figures shared_xt ckpt_path=RUN [splits=1000,750,500,250 continuations=6 out=...]

Common keys: ``ckpt_path=`` (or ``pretrained=``), ``use_ema=true``, ``seed=0``, ``upscale=`` (default: to at
least 64 px per image), ``device=`` (cuda if available), ``out=`` (PNG path; default ``<run>/figures/<figure>.png``
beside the checkpoint, ``outputs/figures/`` for published weights), ``data=NAME`` (for published
weights: where the interpolation's test images come from). Times ``t=`` and ``splits=`` are on the paper's
scale of 1000 steps and are rescaled to the model's T (``t=500`` is T/2). ``sampler=ancestral`` (the paper's,
default) or ``sampler=dpm_solver steps=N`` (DPM-Solver++(2M), deterministic, N network evaluations) for
progressive and interpolation; shared_xt shows the stochastic continuations of one chain and is ancestral only.

* **progressive** (Figure 6): rows are samples, columns the predicted x0-hat at ``frames`` evenly spaced
  points of the reverse chain (Algorithm 2); the last column is the final sample x_0.
* **interpolation** (Figure 8; Figure 9 with ``sweep=true``): two test images (``pair=i,j``, indices into the
  test split) are encoded to x_t by q(x_t | x_0) with the SAME noise, mixed linearly for ``lambdas`` values
  of lambda in [0, 1] and decoded by the reverse chain from t with the same noise for every lambda. Columns:
  source, lambda = 0 .. 1, target. ``sweep=true`` draws one row per t in {0, T/8, ..., T} (t=0 = pixel space).
* **shared_xt** (Figure 7): one reverse chain is split at several t; each row shows the shared x_t
  (clamped to [-1, 1]) and ``continuations`` samples x_0 ~ p(x_0 | x_t) drawn from it.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

from ddpm import diffusion as S
from ddpm.data import model_to_uint8 as to_uint8
from ddpm.diffusion import SeededNoise
from ddpm.generate import seeds_for
from ddpm.io import make_grid_uint8, save_png
from ddpm.loading import load_model, model_datamodule

__all__ = ["progressive", "interpolation", "shared_xt", "main"]


def _paper_to_code(t_paper: float, T: int) -> int:
    """Paper time on the 1000-step scale -> code index (t=500 at T=1000 -> 499); -1 means t = 0."""
    return int(round(float(t_paper) * T / 1000.0)) - 1


@torch.no_grad()
def progressive(model_fn, diffusion, image_shape, *, num_images=8, frames=10, seed=0, clip_denoised=True,
                device="cpu", sampler="ancestral", steps=None) -> torch.Tensor:
    """uint8 ``[num_images, frames, C, H, W]``: x0-hat along the chain, the last frame the final sample."""
    T = len(chain_timesteps(diffusion, sampler, steps))
    marks = progressive_marks(T, frames)
    noise = SeededNoise(seeds_for(seed, 0, num_images), device=device)
    shape = (num_images, *image_shape)
    chain = (S.dpm_solver_sample_progressive(diffusion, model_fn, shape, steps=steps, noise=noise,
                                             clip_denoised=clip_denoised, device=device)
             if sampler == "dpm_solver" else
             S.ancestral_sample_progressive(diffusion, model_fn, shape, noise=noise, clip_denoised=clip_denoised,
                                            device=device))
    cols, final = [], None
    for done, step in enumerate(chain, start=1):
        if done in marks:
            cols.append(step["pred_xstart"].clamp(-1, 1))
        final = step["sample"]
    cols.append(final)
    while len(cols) < max(2, min(int(frames), T + 1)):  # tiny T: fewer distinct steps than frames
        cols.insert(0, cols[0])
    return to_uint8(torch.stack(cols, dim=1)).cpu()


FIGURE_SAMPLERS = ("ancestral", "dpm_solver")


def chain_timesteps(diffusion, sampler: str = "ancestral", steps: int | None = None) -> list[int]:
    """The code indices at which ``sampler`` evaluates the network, in order (ancestral: T-1 .. 0)."""
    if sampler not in FIGURE_SAMPLERS:
        raise ValueError(f"sampler={sampler!r} is not valid for the figures; valid: {list(FIGURE_SAMPLERS)}")
    if sampler == "dpm_solver":
        return S.dpm_solver_timesteps(diffusion, steps)
    return list(range(diffusion.num_timesteps - 1, -1, -1))


def progressive_marks(T: int, frames: int) -> list[int]:
    """After how many reverse steps (1 .. T-1) :func:`progressive` records x0-hat (the last frame: x_0)."""
    frames = max(2, min(int(frames), T + 1))
    return sorted({max(1, round(k * T / (frames - 1))) for k in range(1, frames - 1)})


@torch.no_grad()
def interpolation(model_fn, diffusion, x0_a, x0_b, *, t_paper=500.0, lambdas=9, seed=0,
                  clip_denoised=True, device="cpu", sampler="ancestral", steps=None) -> torch.Tensor:
    """uint8 ``[lambdas + 2, C, H, W]``: source, the decoded mixes for lambda = 0 .. 1, target."""
    T = diffusion.num_timesteps
    t = _paper_to_code(t_paper, T)
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
        decode = S.dpm_solver_sample if sampler == "dpm_solver" else S.ancestral_sample
        kw = {"steps": steps} if sampler == "dpm_solver" else {}  # more steps than t+1: every index from t
        mixes = decode(diffusion, model_fn, tuple(mix.shape), noise=noise, x_start_t=mix, t_start=t,
                       clip_denoised=clip_denoised, device=device, **kw)
    return to_uint8(torch.cat([a, mixes, b])).cpu()


@torch.no_grad()
def shared_xt(model_fn, diffusion, image_shape, *, splits=(1000, 750, 500, 250), continuations=6, seed=0,
              clip_denoised=True, device="cpu") -> torch.Tensor:
    """uint8 ``[len(splits), continuations + 1, C, H, W]``: per split, x_t then the continuations."""
    T = diffusion.num_timesteps
    codes = [min(T - 1, max(0, _paper_to_code(s, T))) for s in splits]
    noise = SeededNoise(seeds_for(seed, 0, 1), device=device)
    x = noise.randn(*image_shape).to(device)  # x_T of the main chain
    states = {T - 1: x}
    for step in S.ancestral_sample_progressive(diffusion, model_fn, (1, *image_shape), noise=noise,
                                               x_start_t=x, t_start=T - 1, clip_denoised=clip_denoised,
                                               device=device):
        if step["t"] - 1 in codes:
            states[step["t"] - 1] = step["sample"]
    rows = []
    for r, c in enumerate(codes):
        xt = states[c]
        k = int(continuations)
        cont_noise = SeededNoise(seeds_for(seed + 1000 + r, 0, k), device=device)
        outs = S.ancestral_sample(diffusion, model_fn, (k, *image_shape), noise=cont_noise,
                                  x_start_t=xt.expand(k, *image_shape).contiguous(), t_start=c,
                                  clip_denoised=clip_denoised, device=device)
        rows.append(torch.cat([xt.clamp(-1, 1), outs]))
    return to_uint8(torch.stack(rows)).cpu()


# ------------------------------------------------------------------------------------------------ CLI
_DEFAULTS = {
    "ckpt_path": None, "pretrained": None, "use_ema": "true", "seed": "0", "upscale": None, "device": None,
    "out": None, "data": None, "clip_denoised": "true", "sampler": "ancestral", "steps": None,
    "num_images": "8", "frames": "10",
    "pair": "0,1", "t": "500", "lambdas": "9", "sweep": "false", "split": "test",
    "splits": "1000,750,500,250", "continuations": "6",
}


def _bool(s) -> bool:
    return str(s).lower() in ("1", "true", "yes", "on")


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
    return torch.from_numpy(np.asarray(out))


def default_out(provenance: dict, figure: str) -> Path:
    """``<run dir>/figures/<figure>.png`` beside the checkpoint (the run directory of ``.../checkpoints/x.ckpt``),
    or ``outputs/figures/<weights name>_<figure>.png`` for published weights."""
    model = Path(provenance["model_path"])
    if provenance.get("source") == "checkpoint":
        run_dir = model.parent.parent if model.parent.name == "checkpoints" else model.parent
        return run_dir / "figures" / f"{figure}.png"
    return Path("outputs") / "figures" / f"{model.stem}_{figure}.png"


def main(argv: list[str] | None = None) -> Path:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("progressive", "interpolation", "shared_xt"):
        print(__doc__)
        raise SystemExit(2)
    figure, opts = argv[0], dict(_DEFAULTS)
    for a in argv[1:]:
        k, eq, v = a.partition("=")
        if not eq or k not in _DEFAULTS:
            raise SystemExit(f"unknown argument {a!r}; valid keys: {sorted(_DEFAULTS)}")
        opts[k] = None if v in ("null", "None", "") else v
    sampler, steps = opts["sampler"], int(opts["steps"]) if opts["steps"] else None
    if sampler not in FIGURE_SAMPLERS or (figure == "shared_xt" and sampler != "ancestral"):
        raise ValueError(
            f"sampler={sampler} is not valid for {figure}: valid "
            + ("sampler=ancestral (continuations of a deterministic sampler would all be the same image)"
               if figure == "shared_xt" else f"{list(FIGURE_SAMPLERS)} (with steps=N for dpm_solver)"))
    if sampler == "dpm_solver" and (steps is None or steps < 1):
        raise ValueError(f"sampler=dpm_solver needs steps=N (network evaluations, e.g. steps=20), got {steps}")
    device = torch.device(opts["device"] or ("cuda" if torch.cuda.is_available() else "cpu"))
    loaded = load_model(opts["ckpt_path"], opts["pretrained"], _bool(opts["use_ema"])).to(device)
    fn, diff, shape = loaded.model_fn(), loaded.diffusion, loaded.image_shape
    seed, clip = int(opts["seed"]), _bool(opts["clip_denoised"])
    out = Path(opts["out"]) if opts["out"] else default_out(loaded.provenance, figure)
    if figure == "progressive":
        x = progressive(fn, diff, shape, num_images=int(opts["num_images"]), frames=int(opts["frames"]),
                        seed=seed, clip_denoised=clip, device=device, sampler=sampler, steps=steps)
        T, ts = diff.num_timesteps, chain_timesteps(diff, sampler, steps)
        marks = progressive_marks(len(ts), int(opts["frames"]))
        labels = [f"t={round(ts[d - 1] * 1000 / T)}" for d in marks] + ["x_0"]
        labels = [labels[0]] * (x.shape[1] - len(labels)) + labels
        path = grid_png(x.flatten(0, 1), out, x.shape[1], opts["upscale"], col_labels=labels)
    elif figure == "interpolation":
        from ddpm.data import uint8_to_model

        data_cfg = None
        if opts["data"]:
            from ddpm.config import compose

            data_cfg = compose("sample", [f"data={opts['data']}"]).data
        dm = model_datamodule(loaded, data_cfg, "interpolation")
        imgs = dm.splits()[opts["split"]]
        i, j = (int(v) for v in opts["pair"].split(","))
        a, b = uint8_to_model(imgs[i]), uint8_to_model(imgs[j])
        ts = [1000 * k / 8 for k in range(9)] if _bool(opts["sweep"]) else [float(opts["t"])]
        lambdas = int(opts["lambdas"])
        rows = [interpolation(fn, diff, a, b, t_paper=t, lambdas=lambdas, seed=seed, clip_denoised=clip,
                              device=device, sampler=sampler, steps=steps) for t in ts]
        cols = ["x0 a", *(f"λ={v:.2f}" for v in torch.linspace(0, 1, lambdas).tolist()), "x0 b"]
        path = grid_png(torch.cat(rows), out, rows[0].shape[0], opts["upscale"], col_labels=cols,
                        row_labels=[f"t={t:g}" for t in ts])
    else:
        splits = [float(s) for s in opts["splits"].split(",")]
        x = shared_xt(fn, diff, shape, splits=splits, continuations=int(opts["continuations"]), seed=seed,
                      clip_denoised=clip, device=device)
        cols = ["x_t", *(f"x_0 #{k + 1}" for k in range(x.shape[1] - 1))]
        path = grid_png(x.flatten(0, 1), out, x.shape[1], opts["upscale"], col_labels=cols,
                        row_labels=[f"t={s:g}" for s in splits])
    print(path)
    return path


if __name__ == "__main__":
    from ddpm.cli import user_errors

    with user_errors():
        main()
