"""Why the bound-trained rows of Table 2 lag on digits: per-t loss weights, gradient noise and clipping.

    python bench/table2_gradients.py                                   # every Table 2 objective at init
    python bench/table2_gradients.py --objectives mu_vlb_fixed eps_vlb_fixed simple \\
        --ckpt mu_vlb_fixed=RUN/checkpoints/last.ckpt ...               # + the raw weights of trained runs
    python bench/table2_gradients.py --quick                           # seconds: a smoke test

For each objective (a ``conf/objective`` option; the digits quickstart model ``unet_small`` and data), and for
each network state (its random init, seed 0, and any ``--ckpt OBJ=PATH`` checkpoint's raw weights), it prints:

1. **Loss weights per t** (analytic, no network): the factor that multiplies the mean-squared error of the
   network's mean output in the training loss, at code index t (paper time t+1). L_simple and ``mu_mse`` weigh
   every t alike (1); the bound's terms are ``1/(2 sigma_t^2 ln 2)`` on the mu-error (mu prediction) and
   ``beta_t^2 / (2 sigma_t^2 alpha_t (1 - abar_t) ln 2)`` on the eps-error (eps prediction), sigma_t^2 = beta_t
   (``fixed_large``, beta-tilde_1 at t = 0). Also each quarter's and the first 1 % of t's share of the weight.
2. **Per-t-bin statistics of the per-example gradient** (t drawn uniformly within each bin, ``--per-bin``
   training images each, per-example gradients by a loop of single-image backward passes): the loss (mean and
   RMS, the RMS being what improved-diffusion's ``LossSecondMomentResampler`` samples t by), the RMS of the
   per-example gradient norm, and, for the gradient of a uniform-t minibatch of ``--batch`` images, each bin's
   share of the **noise** (its part of E||g_i||^2) and of the **signal** (its part of ||E g||^2, estimated without
   bias as the dot product of two independent halves). From these: the signal-to-noise ratio of one minibatch
   gradient, ``||E g||^2 / trace Cov(g_B)``, for uniform t and for t importance-sampled with p_t proportional to
   sqrt(E[L_t^2]) (improved-diffusion's resampler at convergence of its loss history, bins homogeneous).
3. **Real minibatches** (``--batches`` of ``--batch`` images, uniform t, as a training step draws them): the
   global gradient norm (median / 90th percentile / max), the fraction above the clipping threshold 1.0 (the
   paper's ``gradient_clip_val``), the norms of batches that hold a t = 0 (decoder) example, and the mean cosine
   between the gradients of independent minibatches (0: noise only).

Everything is fp32 on CPU, deterministic for a seed. Prints Markdown; ``--out FILE`` also writes it.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

OBJECTIVES = ["mu_vlb_learned", "mu_vlb_fixed", "mu_mse", "eps_vlb_learned", "eps_vlb_fixed", "simple"]
# t bins (code index): the decoder, then ever wider bins (the bound's weights fall like 1/t)
EDGES = [0, 1, 5, 25, 100, 250, 500, 750, 1000]
CLIP = 1.0


def build(objective: str, overrides: list[str]):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from ddpm.core.config import compose
    from ddpm.core.module import DiffusionModule

    cfg = compose("train", [f"objective={objective}", *overrides])
    run = {k: OmegaConf.to_container(cfg[k], resolve=True, enum_to_str=True)
           for k in ("model", "diffusion", "objective", "optim")}
    dm = instantiate(cfg.data)
    torch.manual_seed(int(cfg.seed))
    module = DiffusionModule(
        model=run["model"], diffusion=run["diffusion"], objective=run["objective"], optim=run["optim"],
        image_shape=tuple(dm.image_shape), seed=int(cfg.seed), nan_policy=str(cfg.nan_policy),
        nan_max_consecutive=int(cfg.nan_max_consecutive),
    )
    return module, dm


def train_images(dm) -> torch.Tensor:
    from ddpm.core.data.base import uint8_to_model

    return uint8_to_model(dm.splits()["train"].images)


def loss_weights(diffusion, mean_type: str, loss_type: str, var_type: str) -> np.ndarray | None:
    """Per-t factor on the mean-squared error of the network's mean output (None: learned variance)."""
    T = diffusion.num_timesteps
    if loss_type == "mse":
        return np.ones(T)
    if var_type.startswith("learned"):
        return None
    betas = diffusion.betas_np
    abar = diffusion.alphas_cumprod_np
    var = np.append(diffusion.posterior_variance_np[1], betas[1:]) if var_type == "fixed_large" else np.append(
        diffusion.posterior_variance_np[1], diffusion.posterior_variance_np[1:])
    if mean_type == "mu":
        w = 1.0 / (2.0 * var)
    else:  # eps: (mu-tilde - mu_theta) = beta_t / (sqrt(alpha_t) sqrt(1 - abar_t)) (eps_theta - eps)
        w = betas**2 / (2.0 * var * (1.0 - betas) * (1.0 - abar))
    w = w / math.log(2.0)
    w[0] = np.nan  # t = 0 is the discretised decoder, not a squared error
    return w


def weights_table(objectives: list[str]) -> str:
    lines = ["| objective | w(t=1) | w(t=10) | w(t=100) | w(t=999) | max/min (t>=1) | share t in 1..10 "
             "| share q0 | share q1 | share q2 | share q3 |", "|" + "---|" * 11]
    for obj in objectives:
        module, _ = build(obj, [])
        d = module.diffusion
        w = loss_weights(d, d.mean_type.value, d.loss_type.value, d.var_type.value)
        if w is None:
            lines.append(f"| {obj} | learned sigma_t: 1/(2 sigma_theta^2), set by the network |" + " |" * 9)
            continue
        v = w[1:]
        tot = v.sum()
        q = [w[max(1, k * 250): (k + 1) * 250].sum() / tot for k in range(4)]
        lines.append(
            f"| {obj} | {w[1]:.3g} | {w[10]:.3g} | {w[100]:.3g} | {w[999]:.3g} | {v.max() / v.min():.3g} "
            f"| {w[1:11].sum() / tot:.1%} | " + " | ".join(f"{x:.1%}" for x in q) + " |"
        )
    return "\n".join(lines)


def flat_grad(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in net.parameters()])


def example_grads(module, x: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example losses ``[n]`` and flattened gradients ``[n, P]`` (one backward pass per image)."""
    net = module.net
    losses, grads = [], []
    for i in range(x.shape[0]):
        net.zero_grad(set_to_none=True)
        loss = module.diffusion.training_losses(net, x[i : i + 1], t[i : i + 1], noise=noise[i : i + 1])["loss"]
        loss.sum().backward()
        losses.append(float(loss.detach()))
        grads.append(flat_grad(net))
    net.zero_grad(set_to_none=True)
    return torch.tensor(losses, dtype=torch.float64), torch.stack(grads).double()


def bin_stats(module, images: torch.Tensor, per_bin: int, batch: int, gen: torch.Generator) -> tuple[str, dict]:
    T = module.diffusion.num_timesteps
    edges = [e for e in EDGES if e < T] + [T]
    stats = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        n = per_bin if per_bin % 2 == 0 else per_bin + 1
        idx = torch.randint(0, images.shape[0], (n,), generator=gen)
        t = torch.randint(lo, hi, (n,), generator=gen)
        noise = torch.randn(images[idx].shape, generator=gen)
        losses, g = example_grads(module, images[idx], t, noise)
        half = n // 2
        ga, gb = g[:half].mean(0), g[half:].mean(0)
        stats.append(dict(lo=lo, hi=hi, p=(hi - lo) / T, loss=float(losses.mean()),
                          loss_rms=float(losses.pow(2).mean().sqrt()), g2=float(g.pow(2).sum(1).mean()),
                          ga=ga, gb=gb))
    # uniform-t estimator: E||g_i||^2 = sum_b p_b E_b||g||^2 ; E g = sum_b p_b E_b g (two independent halves)
    second = sum(s["p"] * s["g2"] for s in stats)
    mean_a = sum(s["p"] * s["ga"] for s in stats)
    mean_b = sum(s["p"] * s["gb"] for s in stats)
    signal = float(mean_a @ mean_b)  # unbiased estimate of ||E g||^2
    noise_b = (second - signal) / batch  # trace Cov of the mean of `batch` i.i.d. examples
    # improved-diffusion's resampler: q_t proportional to sqrt(E L_t^2); importance weight p_t / q_t
    rms = np.array([s["loss_rms"] for s in stats])
    p = np.array([s["p"] for s in stats])
    q = p * rms / (p * rms).sum()
    q = 0.999 * q + 0.001 * p  # its uniform_prob = 0.001
    second_is = float(sum(pb**2 / qb * s["g2"] for pb, qb, s in zip(p, q, stats)))
    noise_is = (second_is - signal) / batch
    g_rms = np.array([math.sqrt(s["g2"]) for s in stats])
    second_opt = float((p * g_rms).sum() ** 2)  # the variance-optimal q_b ~ p_b sqrt(E_b||g||^2)
    noise_opt = (second_opt - signal) / batch
    lines = [
        "| t (code index) | P(t in bin) | loss mean | loss RMS | RMS per-example grad norm | share of noise "
        "E||g||^2 | share of signal ||E g||^2 | P under loss-second-moment IS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s, qb in zip(stats, q):
        share = float(0.5 * (s["p"] * s["ga"] @ mean_b + s["p"] * s["gb"] @ mean_a))
        sig_share = share / signal if signal else float("nan")
        t_label = "0 (decoder)" if s["hi"] - s["lo"] == 1 and s["lo"] == 0 else f"{s['lo']}..{s['hi'] - 1}"
        lines.append(
            f"| {t_label} | {s['p']:.3g} | {s['loss']:.4g} | {s['loss_rms']:.4g} | {math.sqrt(s['g2']):.4g} "
            f"| {s['p'] * s['g2'] / second:.1%} | {sig_share:+.1%} | {qb:.3g} |"
        )
    quarters = []
    for k in range(4):
        inq = [s for s in stats if k * T / 4 <= s["lo"] < (k + 1) * T / 4]
        quarters.append(sum(s["p"] * s["g2"] for s in inq) / second)
    summary = dict(
        signal=signal, second=second, snr=signal / noise_b if noise_b > 0 else float("inf"),
        snr_is=signal / noise_is if noise_is > 0 else float("inf"),
        snr_opt=signal / noise_opt if noise_opt > 0 else float("inf"), noise_quarters=quarters,
    )
    lines.append(
        f"\nOne minibatch of {batch} (uniform t): ||E g||^2 = {signal:.3g}, trace Cov = {noise_b:.3g}, "
        f"SNR = {summary['snr']:.3g}; with loss-second-moment importance sampling of t: SNR = {summary['snr_is']:.3g} "
        f"(variance-optimal q: {summary['snr_opt']:.3g}). Noise by quarter of t: "
        + ", ".join(f"q{k} {x:.1%}" for k, x in enumerate(quarters)) + "."
    )
    return "\n".join(lines), summary


def minibatches(module, images: torch.Tensor, batches: int, batch: int, gen: torch.Generator) -> tuple[str, dict]:
    T = module.diffusion.num_timesteps
    net = module.net
    norms, has0, small, grads = [], [], [], []
    for _ in range(batches):
        idx = torch.randint(0, images.shape[0], (batch,), generator=gen)
        t = torch.randint(0, T, (batch,), generator=gen)
        noise = torch.randn(images[idx].shape, generator=gen)
        net.zero_grad(set_to_none=True)
        module.diffusion.training_losses(net, images[idx], t, noise=noise)["loss"].mean().backward()
        g = flat_grad(net).double()
        grads.append(g)
        norms.append(float(g.norm()))
        has0.append(bool((t == 0).any()))
        small.append(int((t < 25).sum()))
    net.zero_grad(set_to_none=True)
    norms_a = np.array(norms)
    G = torch.stack(grads)
    Gn = G / G.norm(dim=1, keepdim=True)
    cos = Gn @ Gn.T
    k = len(grads)
    mean_cos = float((cos.sum() - k) / (k * (k - 1))) if k > 1 else float("nan")
    with0 = norms_a[np.array(has0)] if any(has0) else np.array([])
    out = dict(
        median=float(np.median(norms_a)), p90=float(np.percentile(norms_a, 90)), max=float(norms_a.max()),
        clipped=float((norms_a > CLIP).mean()), mean_cos=mean_cos, n_with0=len(with0),
        median_with0=float(np.median(with0)) if len(with0) else float("nan"),
    )
    # where the clipped update's weight goes: each batch contributes g / max(1, ||g||/CLIP)
    scale = np.minimum(1.0, CLIP / norms_a)
    out["clip_scale_median"] = float(np.median(scale))
    corr = np.corrcoef(np.array(small), norms_a)[0, 1] if np.std(small) > 0 else float("nan")
    out["corr_small_t_norm"] = float(corr)
    text = (
        f"{batches} minibatches of {batch} (uniform t): gradient norm median {out['median']:.3g}, 90% "
        f"{out['p90']:.3g}, max {out['max']:.3g}; clipped at {CLIP}: {out['clipped']:.0%} of the batches (median "
        f"scale {out['clip_scale_median']:.3g}); {out['n_with0']} held a t=0 example (median norm "
        f"{out['median_with0']:.3g}); correlation of the norm with the number of t<25 examples "
        f"{out['corr_small_t_norm']:+.2f}; mean cosine between independent minibatch gradients {mean_cos:+.3f}."
    )
    return text, out


def load_raw(module, path: str) -> None:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    sd = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    module.net.load_state_dict(sd)
    return int(ckpt.get("global_step", -1))


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objectives", nargs="+", default=OBJECTIVES)
    ap.add_argument("--ckpt", nargs="*", default=[], help="OBJ=PATH: also measure these trained raw weights")
    ap.add_argument("--no-init", action="store_true", help="skip the random-init state")
    ap.add_argument("--per-bin", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overrides", nargs="*", default=[], help="extra train.yaml overrides (model, diffusion)")
    ap.add_argument("--quick", action="store_true", help="tiny: 2 objectives, 4 per bin, 4 batches of 8")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.objectives, args.per_bin, args.batches, args.batch = ["mu_vlb_fixed", "simple"], 4, 4, 8
    ckpts = {}
    for item in args.ckpt:
        obj, _, path = item.partition("=")
        ckpts.setdefault(obj, []).append(path)
    out = ["# Table 2 objectives on digits: loss weights, gradient noise, clipping\n",
           f"`python bench/table2_gradients.py {' '.join(argv if argv is not None else sys.argv[1:])}` "
           f"(torch {torch.__version__}, {torch.get_num_threads()} thread(s))\n",
           "## Loss weight per t on the squared error of the network's mean output\n",
           weights_table(args.objectives), ""]
    summary_rows = []
    for obj in args.objectives:
        states = ([] if args.no_init else [("init", None)]) + [(p, p) for p in ckpts.get(obj, [])]
        for label, path in states:
            module, dm = build(obj, args.overrides)
            step = 0
            if path is not None:
                step = load_raw(module, path)
                label = f"step {step} ({Path(path).parent.parent.name})"
            module.train()
            images = train_images(dm)
            gen = torch.Generator().manual_seed(args.seed)
            t0 = time.time()
            table, s = bin_stats(module, images, args.per_bin, args.batch, gen)
            text, m = minibatches(module, images, args.batches, args.batch, gen)
            out += [f"## {obj}, {label}\n", table, "", text, f"({time.time() - t0:.0f} s)\n"]
            summary_rows.append(
                f"| {obj} | {label} | {s['snr']:.3g} | {s['snr_is']:.3g} | {s['snr_opt']:.3g} | "
                + ", ".join(f"{x:.0%}" for x in s["noise_quarters"])
                + f" | {m['median']:.3g} | {m['clipped']:.0%} | {m['median_with0']:.3g} | {m['mean_cos']:+.3f} |"
            )
            print(f"[table2_gradients] {obj} {label} done", file=sys.stderr)
    out += [
        "## Summary\n",
        f"SNR = ||E g||^2 / trace Cov(g) of one minibatch gradient of {args.batch}; IS = t importance-sampled "
        "with p_t ~ sqrt(E L_t^2); noise q0..q3 = share of E||g_i||^2 by quarter of t; norms of real minibatches.\n",
        "| objective | state | SNR uniform t | SNR IS | SNR optimal q | noise by quarter q0..q3 | median grad norm "
        "| clipped at 1.0 | median norm, batches with t=0 | mean cos of two minibatch grads |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *summary_rows,
    ]
    text = "\n".join(out)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()
