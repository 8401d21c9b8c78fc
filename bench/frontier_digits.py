"""The DPM-Solver++ timesteps study on the digits quickstart model: which evaluated timesteps, clipped or not.

    python bench/frontier_digits.py --ckpt outputs/qs --study --out bench/results/frontier_digits_study_DATE.md
    python bench/frontier_digits.py --study --quick                        # seconds: a smoke test (random net)

The frontier itself (every sampler against the full chain on pooled seed sets) is ``python -m ddpm.frontier``
(:mod:`ddpm.commands.frontier`, scored by :mod:`ddpm.services.metrics.pooled`); this script's former frontier mode is gone, so
pooled FIDs are computed in one place.

**Study** (``--study``): DPM-Solver++ at ``--study-steps`` (default 10, 15, 20, 50) with four choices of the
evaluated timesteps, clipped and not, scored the same way; and, as a check of the ODE solution itself, the
standard deviation of its samples on 1-D Gaussian data N(0.3, 0.2^2) with the exact denoiser (4000 samples, no
clipping; the exact probability-flow map gives 0.2 times the std of x_T):

* ``logsnr`` (the sampler's choice, :func:`ddpm.core.diffusion.dpm_solver_timesteps`): uniform in
  lambda = log(alpha/sigma) from T-1 to 0 (diffusers' ``use_lu_lambdas``);
* ``uniform_t``: evenly spaced in t from T-1 down to 0 included (``space_timesteps(T, steps)``);
* ``linspace``: diffusers' default ``timestep_spacing="linspace"``: ``round(linspace(0, T-1, steps+1))[::-1]``
  without the trailing 0, so the last evaluation is at t ~ T/steps before the jump to x_0;
* ``quadratic``: ``t = (T-1)(1 - i/(steps-1))^2``, dense near t = 0 (DDIM's "quad" idea), kept distinct.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ddpm.core.data import model_to_uint8 as to_uint8  # noqa: E402
from ddpm.core.diffusion import (  # noqa: E402
    GaussianDiffusion,
    SeededNoise,
    dpm_solver,
    dpm_solver_timesteps,
    final_sample,
    space_timesteps,
)
from ddpm.services.generate import seeds_for  # noqa: E402


def distinct_descending(ts: np.ndarray) -> list[int]:
    """Rounded indices made strictly decreasing from the end (a duplicate moves up by one)."""
    out = [int(t) for t in np.round(ts)]
    for i in range(len(out) - 2, -1, -1):
        out[i] = max(out[i], out[i + 1] + 1)
    return out


SPACINGS = ("logsnr", "uniform_t", "linspace", "quadratic")


def spacing(name: str, diffusion: GaussianDiffusion, steps: int) -> list[int]:
    T = diffusion.num_timesteps
    if name == "logsnr":
        return dpm_solver_timesteps(diffusion, steps)
    if name == "uniform_t":
        return space_timesteps(T, steps)[::-1]
    if name == "linspace":
        return np.linspace(0, T - 1, steps + 1).round()[::-1][:-1].astype(int).tolist()
    if name == "quadratic":
        return distinct_descending((T - 1) * (1 - np.arange(steps) / max(steps - 1, 1)) ** 2)
    raise ValueError(name)


def gaussian_std(name: str, steps: int, m: float = 0.3, s: float = 0.2, n: int = 4000) -> float:
    """Std of DPM-Solver++ samples / (s * std of x_T) on data N(m, s^2) with its exact eps-denoiser (1 = exact)."""
    d = GaussianDiffusion.from_config("linear", 1000)
    abar = torch.tensor(d.alphas_cumprod_np)

    def eps(x, t):
        ab = abar[t].view(-1, 1)
        return (torch.sqrt(1 - ab) / (ab * s**2 + 1 - ab) * (x - torch.sqrt(ab) * m)).float()

    x_T = torch.randn(n, 1, generator=torch.Generator().manual_seed(0))
    x = final_sample(dpm_solver(d, eps, x_T, spacing(name, d, steps), clip_denoised=False))
    return float(x.std() / (s * x_T.std()))


def score(x: torch.Tensor) -> tuple[float, float]:
    """Digits FID of float samples in [-1, 1] under digits extractor A (``ddpm-digits``) and B
    (``ddpm-digits-b``)."""
    from ddpm.services.metrics.digits_score import digits_scores

    q = digits_scores(to_uint8(x))
    return float(q["digits"]["fid"]), float(q["digits_b"]["fid"])


def load(args):
    if args.quick:
        from ddpm.core.nets import UNet

        torch.manual_seed(0)
        net = UNet(in_channels=1, out_channels=1, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                   dropout=0.0, resolution=8).eval()  # fmt: skip
        return net, GaussianDiffusion.from_config("linear", 1000), (1, 8, 8), "random tiny UNet (--quick)"
    from ddpm.services.loading import load_model

    m = load_model(ckpt_path=args.ckpt)
    prov = f"{m.provenance['model_path']} (global_step {m.provenance['global_step']}, EMA)"
    return m.model_fn(), m.diffusion, m.image_shape, prov


def run_study(args, fn, diffusion, shape, score) -> str:
    lines = ["FID under digits extractor A / B (ddpm-digits / ddpm-digits-b), against the train split.", "",
             "| timesteps | clip x_0 | steps | " + " | ".join(f"FID A / B seeds {s}" for s in args.seed_sets)
             + " | mean FID A / B |", "|---|---|---:|" + "---:|" * len(args.seed_sets) + "---:|"]  # fmt: skip
    for name in SPACINGS:
        for clip in (True, False):
            for steps in args.study_steps:
                ts = spacing(name, diffusion, steps)
                assert len(ts) == steps and all(a > b for a, b in zip(ts, ts[1:])), ts
                fids = []
                for base in args.seed_sets:
                    seeds = seeds_for(base, 0, args.n)
                    noise = SeededNoise(seeds)
                    x_T = noise.randn(*shape)  # then the solver's draws (none for the ODE) from the same seeds
                    x = final_sample(dpm_solver(diffusion, fn, x_T, ts, noise=noise, clip_denoised=clip))
                    fids.append(score(x))
                mean_a, mean_b = np.mean(fids, axis=0)
                line = (f"| {name} | {clip} | {steps} | " + " | ".join(f"{a:.3f} / {b:.3f}" for a, b in fids)
                        + f" | {mean_a:.3f} / {mean_b:.3f} |")  # fmt: skip
                print(line, flush=True)
                lines.append(line)
    gsteps = [5, 10, 15, 20, 50, 100, 250]
    lines += ["", "Std of the samples on Gaussian data with its exact denoiser, relative to the exact ODE map "
              "(1.000 = exact):", "", "| timesteps | " + " | ".join(f"{k} steps" for k in gsteps) + " |",
              "|---|" + "---:|" * len(gsteps)]  # fmt: skip
    for name in SPACINGS:
        lines.append(f"| {name} | " + " | ".join(f"{gaussian_std(name, k):.3f}" for k in gsteps) + " |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


@torch.no_grad()  # scoped: the smoke test calls main() inside pytest
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", default="outputs/qs", help="a run directory or checkpoint of the digits quickstart")
    p.add_argument("--n", type=int, default=256, help="images per seed set")
    p.add_argument("--seed-sets", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2, 3])
    p.add_argument("--study", action="store_true", help="DPM-Solver++ timestep spacing x clipping (the only mode)")
    p.add_argument("--study-steps", type=lambda s: [int(x) for x in s.split(",")], default=[10, 15, 20, 50])
    p.add_argument("--quick", action="store_true", help="random tiny network, few images and steps")
    p.add_argument("--out", default=None, help="also write the Markdown to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.seed_sets, args.study_steps = 8, [0], [3]
    fn, diffusion, shape, prov = load(args)
    cmd = "python bench/frontier_digits.py " + " ".join(sys.argv[1:] if argv is None else argv)
    head = ["# DPM-Solver++ timesteps study on digits "
            f"({datetime.date.today().isoformat()})", "", f"Command: `{cmd}`", "",
            f"Model: {prov}. {args.n} images per seed set, seed sets {args.seed_sets}, torch threads "
            f"{torch.get_num_threads()}.", ""]  # fmt: skip
    body = run_study(args, fn, diffusion, shape, score)
    text = "\n".join(head) + "\n" + body + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
