"""Quality versus network evaluations on the digits quickstart model: every sampler, the same seeds.

    python bench/frontier_digits.py --ckpt outputs/qs --out bench/results/frontier_digits_DATE.md
    python bench/frontier_digits.py --ckpt outputs/qs --study --out ...   # DPM-Solver++ timesteps x clipping
    python bench/frontier_digits.py --quick                                # seconds: a smoke test (random net)

**Frontier** (default): ancestral with all T steps (the paper), then respaced ancestral, DDIM (eta=0) and
DPM-Solver++(2M) at ``--steps`` (default 10, 20, 50, 100, 250), each through :func:`ddpm.generate.generate` with
the sampler's defaults (x_0 clipped to [-1, 1]). Every configuration samples the same ``--n`` seeds
(``seeds_for(s, 0, n)``) for each base seed ``s`` of ``--seed-sets`` (disjoint sets of images), and is scored
with :func:`ddpm.metrics.digits_score.digits_quality` (FID in the digits classifier's feature space against the train
split; lower is better). FID on a few hundred samples is noisy: the table gives it per seed set, their mean,
the mean ratio to the ancestral FID of the same seed set, and the FID of all seed sets pooled. ``s/img`` is
the sampling wall time per image (the first seed set, batch = n, this process's threads: run it under
``cpujob -x`` for timings).

**Study** (``--study``): DPM-Solver++ at ``--study-steps`` (default 10, 15, 20, 50) with four choices of the
evaluated timesteps, clipped and not, scored the same way; and, as a check of the ODE solution itself, the
standard deviation of its samples on 1-D Gaussian data N(0.3, 0.2^2) with the exact denoiser (4000 samples, no
clipping; the exact probability-flow map gives 0.2 times the std of x_T):

* ``logsnr`` (the sampler's choice, :func:`ddpm.diffusion.dpm_solver_timesteps`): uniform in
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
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ddpm.config import SamplerConfig  # noqa: E402
from ddpm.data import model_to_uint8 as to_uint8  # noqa: E402
from ddpm.diffusion import (  # noqa: E402
    GaussianDiffusion,
    SeededNoise,
    dpm_solver_sample,
    dpm_solver_timesteps,
    space_timesteps,
)
from ddpm.generate import generate, seeds_for  # noqa: E402


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
    x = dpm_solver_sample(d, eps, (n, 1), timesteps=spacing(name, d, steps), x_start_t=x_T, clip_denoised=False)
    return float(x.std() / (s * x_T.std()))


def score(x: torch.Tensor) -> float:
    """Digits FID of float samples in [-1, 1]."""
    from ddpm.metrics.digits_score import digits_quality

    return float(digits_quality(to_uint8(x))["fid"])


def load(args):
    if args.quick:
        from ddpm.nets import UNet

        torch.manual_seed(0)
        net = UNet(in_channels=1, out_channels=1, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                   dropout=0.0, resolution=8).eval()  # fmt: skip
        return net, GaussianDiffusion.from_config("linear", 1000), (1, 8, 8), "random tiny UNet (--quick)"
    from ddpm.loading import load_model

    m = load_model(ckpt_path=args.ckpt)
    prov = f"{m.provenance['model_path']} (global_step {m.provenance['global_step']}, EMA)"
    return m.model_fn(), m.diffusion, m.image_shape, prov


def run_frontier(args, fn, diffusion, shape, score) -> list[dict]:
    configs = [("ancestral", None)] + [(name, s) for name in ("respaced", "ddim", "dpm_solver") for s in args.steps]
    configs = [c for c in configs if c[0] in args.samplers]
    rows = []
    for name, steps in configs:
        fids, secs, xs = [], [], []
        for base in args.seed_sets:
            seeds = seeds_for(base, 0, args.n)
            t0 = time.perf_counter()
            x = generate(fn, diffusion, seeds, shape, SamplerConfig(name=name, steps=steps))
            secs.append((time.perf_counter() - t0) / args.n)
            fids.append(score(x))
            xs.append(x)
        pooled = score(torch.cat(xs)) if len(xs) > 1 else fids[0]
        row = {"sampler": name, "nfe": steps or diffusion.num_timesteps, "fids": fids, "pooled": pooled,
               "s_per_img": secs[0]}  # fmt: skip
        rows.append(row)
        print(f"{name:10s} {row['nfe']:5d}  FID {' / '.join(f'{f:.3f}' for f in fids)}  all {pooled:.3f}  "
              f"{secs[0]:.4f} s/img", flush=True)  # fmt: skip
    return rows


def frontier_table(rows: list[dict], seed_sets: list[int], n: int) -> str:
    if rows[0]["sampler"] != "ancestral":  # a partial run (e.g. re-timing): no ratios
        rows = [{"sampler": "(no ancestral run)", "nfe": 0, "fids": [float("nan")] * len(seed_sets),
                 "pooled": float("nan"), "s_per_img": float("nan")}, *rows]  # fmt: skip
    anc = rows[0]["fids"]
    head = " | ".join(f"FID seeds {s}" for s in seed_sets)
    lines = [f"| sampler | steps (= network evaluations) | {head} | mean FID | mean FID / ancestral | "
             f"FID all {n * len(seed_sets)} | / ancestral | s/img |",
             "|---|---:|" + "---:|" * len(seed_sets) + "---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        ratio = float(np.mean([f / a for f, a in zip(r["fids"], anc, strict=True)]))
        per = " | ".join(f"{f:.3f}" for f in r["fids"])
        lines.append(f"| {r['sampler']} | {r['nfe']} | {per} | {np.mean(r['fids']):.3f} | {ratio:.3f} | "
                     f"{r['pooled']:.3f} | {r['pooled'] / rows[0]['pooled']:.3f} | {r['s_per_img']:.4f} |")  # fmt: skip
    lines.append("")
    lines.append("Smallest step count within 10% of the ancestral FID (mean ratio <= 1.10; per seed set in brackets):")
    lines.append("")
    for name in ("respaced", "ddim", "dpm_solver"):
        ok = [r for r in rows if r["sampler"] == name and np.mean([f / a for f, a in zip(r["fids"], anc)]) <= 1.10]
        per = []
        for j in range(len(anc)):
            hit = [r["nfe"] for r in rows if r["sampler"] == name and r["fids"][j] <= 1.10 * anc[j]]
            per.append(str(min(hit)) if hit else "none")
        lines.append(f"- {name}: {min(r['nfe'] for r in ok) if ok else 'none of the step counts'} "
                     f"[{', '.join(per)}]")  # fmt: skip
    return "\n".join(lines)


def run_study(args, fn, diffusion, shape, score) -> str:
    lines = ["| timesteps | clip x_0 | steps | " + " | ".join(f"FID seeds {s}" for s in args.seed_sets)
             + " | mean FID |", "|---|---|---:|" + "---:|" * len(args.seed_sets) + "---:|"]  # fmt: skip
    for name in SPACINGS:
        for clip in (True, False):
            for steps in args.study_steps:
                ts = spacing(name, diffusion, steps)
                assert len(ts) == steps and all(a > b for a, b in zip(ts, ts[1:])), ts
                fids = []
                for base in args.seed_sets:
                    seeds = seeds_for(base, 0, args.n)
                    x = dpm_solver_sample(diffusion, fn, (args.n, *shape), timesteps=ts, noise=SeededNoise(seeds),
                                          clip_denoised=clip)  # fmt: skip
                    fids.append(score(x))
                line = (f"| {name} | {clip} | {steps} | " + " | ".join(f"{f:.3f}" for f in fids)
                        + f" | {np.mean(fids):.3f} |")  # fmt: skip
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
    p.add_argument("--steps", type=lambda s: [int(x) for x in s.split(",")], default=[10, 20, 50, 100, 250])
    p.add_argument("--samplers", type=lambda s: s.split(","), default=["ancestral", "respaced", "ddim", "dpm_solver"],
                   help="which samplers (the ratios need ancestral first)")  # fmt: skip
    p.add_argument("--study", action="store_true", help="DPM-Solver++ timestep spacing x clipping instead")
    p.add_argument("--study-steps", type=lambda s: [int(x) for x in s.split(",")], default=[10, 15, 20, 50])
    p.add_argument("--quick", action="store_true", help="random tiny network, few images and steps")
    p.add_argument("--out", default=None, help="also write the Markdown to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.seed_sets, args.steps, args.study_steps = 8, [0], [3], [3]
    fn, diffusion, shape, prov = load(args)
    cmd = "python bench/frontier_digits.py " + " ".join(sys.argv[1:] if argv is None else argv)
    head = [f"# {'DPM-Solver++ timesteps study' if args.study else 'Sampler frontier'} on digits "
            f"({datetime.date.today().isoformat()})", "", f"Command: `{cmd}`", "",
            f"Model: {prov}. {args.n} images per seed set, seed sets {args.seed_sets}, torch threads "
            f"{torch.get_num_threads()}.", ""]  # fmt: skip
    if args.study:
        body = run_study(args, fn, diffusion, shape, score)
    else:
        body = frontier_table(run_frontier(args, fn, diffusion, shape, score), args.seed_sets, args.n)
    text = "\n".join(head) + "\n" + body + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
