"""Negative log-likelihood in bits/dim (the paper's Table 1/2 NLL and Table 4 rate/distortion), its own command
(settings: conf/nll.yaml; ``--help`` lists them; console script ``ddpm-nll``)::

    python -m ddpm.nll ckpt_path=RUN                        # test split, EMA weights
    python -m ddpm.nll ckpt_path=RUN split=train max_images=10000 trainer.devices=4

The bound is the official ``calc_bpd_loop`` (diffusion_utils_2.py of the authors' code): for every code index
t = T-1 .. 0 a fresh ``x_t ~ q(x_t | x_0)`` and its term (posterior KL for t > 0, discretised-Gaussian decoder
for t = 0), plus the prior term, with ``clip_denoised=True`` and the EMA weights. Image ``i`` of the split
draws its noise from ``seeds_for(seed, i, i+1)`` only, so the result does not depend on the batch size or
on how the images are split over devices (each of ``trainer.devices x num_nodes`` processes takes images
``rank::world``).

Written to ``out_dir``:

* ``nll.json``: the summary (mean bits/dim and its standard error, prior, decoder L_0, rate, distortion, the
  Table 4 rows, provenance);
* ``nll_terms.csv`` / ``nll_terms.npz``: one row per code index ``t`` (paper time t+1): mean bits/dim of
  the term, x0-MSE, eps-MSE, and the rate/distortion columns of Table 4: ``rate_bpd`` = cumulative bits
  received from the prior side once the receiver holds x at code index t (prior + terms t+1 .. T-1),
  ``distortion_rmse`` = RMSE on the 0..255 scale of the prediction x0-hat made from that x_t
  (``sqrt(mean over images of mean-squared error) * 127.5``), ``reverse_step`` = T - t (Table 4's T-t+1);
  the npz also has per-image ``total_bpd``/``prior_bpd``/``decoder_bpd`` and ``index``;
* ``nll_bits_per_timestep.png``: bits per timestep (log scale) and the rate-distortion curve.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from ddpm.core.config import validate_config
from ddpm.core.data import uint8_to_model
from ddpm.core.diffusion import SeededNoise
from ddpm.core.io import atomic_savez, atomic_write, check_writable, write_json
from ddpm.services.generate import seeds_for
from ddpm.services.loading import load_model, model_datamodule
from ddpm.services.runtime import Progress, launch, provenance

__all__ = ["evaluate_nll", "main", "nll_of_images", "summarise"]

# a class-conditional model's bound: its network with the "no class" token, a bound on -log p(x) as an
# unconditional model's (the training's val/bpd gives the labels: -log p(x | y), lower)
NULL_TOKEN = "class-conditional model, no class given: the null token's bound on -log p(x)"


@torch.no_grad()
def nll_of_images(model_fn, diffusion, x_start: torch.Tensor, indices, seed: int, t_batch: int = 1) -> dict:
    """``calc_bpd_loop`` on a batch of model-space images, image ``indices[k]`` seeded by
    ``seeds_for(seed, i, i+1)``; returns CPU float64 numpy arrays."""
    seeds = [seeds_for(seed, int(i), int(i) + 1)[0] for i in indices]
    noise = SeededNoise(seeds, device=x_start.device)
    out = diffusion.calc_bpd_loop(model_fn, x_start, clip_denoised=True, noise_fn=noise, t_batch=t_batch)
    return {k: v.detach().cpu().double().numpy() for k, v in out.items()}


def summarise(parts: dict[str, np.ndarray], num_timesteps: int) -> tuple[dict, dict[str, np.ndarray]]:
    """Per-timestep table and summary from per-image arrays ``total_bpd [N]``, ``prior_bpd [N]``,
    ``vb [N, T]``, ``xstart_mse [N, T]``, ``mse [N, T]``."""
    T = num_timesteps
    vb, xmse, emse = parts["vb"], parts["xstart_mse"], parts["mse"]
    n = vb.shape[0]
    vb_mean = vb.mean(axis=0)
    prior = float(parts["prior_bpd"].mean())
    # rate at code index t: prior + sum of the KL terms s = t+1 .. T-1 (what was sent to reach x_t)
    after = np.concatenate([np.cumsum(vb_mean[::-1])[::-1][1:], [0.0]])  # after[t] = sum_{s>t} vb_mean[s]
    rate = prior + after  # the decoder term (t = 0) is distortion, never part of the rate
    distortion = np.sqrt(xmse.mean(axis=0)) * 127.5
    table = {
        "t": np.arange(T),
        "paper_t": np.arange(T) + 1,
        "reverse_step": T - np.arange(T),
        "bpd": vb_mean,
        "bpd_std": vb.std(axis=0, ddof=1) if n > 1 else np.zeros(T),
        "xstart_mse": xmse.mean(axis=0),
        "eps_mse": emse.mean(axis=0),
        "rate_bpd": rate,
        "distortion_rmse": distortion,
    }
    total = parts["total_bpd"]
    rows = []
    for k in sorted({max(1, round(T * f / 10)) for f in range(10, 0, -1)}, reverse=True):
        t = T - k
        rows.append({"reverse_step": k, "rate_bpd": float(rate[t]), "distortion_rmse": float(distortion[t])})
    summary = {
        "bpd": float(total.mean()),
        "bpd_sem": float(total.std(ddof=1) / math.sqrt(n)) if n > 1 else None,
        "prior_bpd": prior,
        "decoder_bpd": float(vb_mean[0]),
        "rate_bpd": float(prior + vb_mean[1:].sum()),
        "distortion_bpd": float(vb_mean[0]),
        "distortion_rmse": float(distortion[0]),
        "num_images": int(n),
        "num_timesteps": int(T),
        "table4": rows,
    }
    return summary, table


def _plot(table: dict[str, np.ndarray], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    bpd = np.maximum(table["bpd"], 1e-12)
    a.plot(table["paper_t"], bpd, lw=1)
    a.set_yscale("log")
    a.set_xlabel("t (paper time; 1 = decoder L_0)")
    a.set_ylabel("bits/dim of the term")
    a.set_title("bits per timestep")
    b.plot(table["rate_bpd"], table["distortion_rmse"], lw=1)
    b.set_xlabel("rate (bits/dim)")
    b.set_ylabel("distortion (RMSE, 0..255)")
    b.set_title("rate-distortion (Table 4)")
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_write(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def evaluate_nll(cfg: DictConfig) -> dict:
    """Run the NLL evaluation of ``cfg`` (conf/nll.yaml); returns the summary on rank 0, ``{}`` elsewhere.
    ``nll.json`` records the seed as ``nll_seed`` (the report pairs two rows' bounds by it)."""
    validate_config(cfg)
    out_dir = check_writable(cfg.out_dir)
    fabric = launch(cfg.trainer)
    rank, world = fabric.global_rank, fabric.world_size
    loaded = load_model(cfg.ckpt_path, cfg.pretrained, cfg.use_ema).to(fabric.device)
    split = cfg.split
    dm = model_datamodule(loaded, cfg.data, "the NLL")
    images = dm.splits()[split]
    n = len(images)
    if cfg.max_images is not None:
        n = min(n, int(cfg.max_images))
    if n < 1:
        raise ValueError(f"{dm.name} split {split!r} has no images")
    if tuple(dm.image_shape) != tuple(loaded.image_shape):
        raise ValueError(f"data images are {tuple(dm.image_shape)}, the model's {tuple(loaded.image_shape)}")
    mine = list(range(rank, n, world))
    bs, seed, t_batch = cfg.batch_size, cfg.seed, cfg.t_batch
    model_fn = loaded.model_fn()
    T = loaded.diffusion.num_timesteps
    start = time.time()
    acc: dict[str, list] = {}
    with Progress(len(mine), cfg.progress and rank == 0, f"bits/dim ({split}, rank 0 of {world})") as bar:
        for k in range(0, len(mine), bs):
            idx = mine[k : k + bs]
            x = torch.stack([uint8_to_model(images[i]) for i in idx]).to(fabric.device)
            with fabric.autocast():
                res = nll_of_images(model_fn, loaded.diffusion, x, idx, seed, t_batch)
            res["index"] = np.asarray(idx, dtype=np.int64)
            for key, v in res.items():
                acc.setdefault(key, []).append(v)
            bar.update(len(idx))
    part_dir = out_dir / "nll_parts"
    part_dir.mkdir(parents=True, exist_ok=True)
    part = {key: np.concatenate(v) for key, v in acc.items()} if acc else {}
    atomic_savez(part_dir / f"rank{rank:03d}_of{world:03d}.npz", **part)
    if world > 1:
        fabric.barrier()
    if rank != 0:
        return {}
    seconds = time.time() - start
    merged: dict[str, list] = {}
    for r in range(world):
        with np.load(part_dir / f"rank{r:03d}_of{world:03d}.npz", allow_pickle=False) as z:
            for key in z.files:
                merged.setdefault(key, []).append(z[key])
    parts = {key: np.concatenate(v) for key, v in merged.items()}
    order = np.argsort(parts["index"])
    parts = {key: v[order] for key, v in parts.items()}
    summary, table = summarise(parts, T)
    summary.update(
        split=split,
        dataset=dm.name,
        clip_denoised=True,
        nll_seed=seed,
        world_size=world,
        seconds=round(seconds, 2),
        **provenance(),
        note="an upper bound on the NLL (report as <= bpd); one Monte-Carlo x_t per term per image",
        **loaded.provenance,
        **({"conditioning": NULL_TOKEN} if loaded.num_classes else {}),
    )
    atomic_savez(
        out_dir / "nll_terms.npz",
        **table,
        index=parts["index"],
        total_bpd=parts["total_bpd"],
        prior_bpd=parts["prior_bpd"],
        decoder_bpd=parts["vb"][:, 0],
    )
    with atomic_write(out_dir / "nll_terms.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        cols = list(table)
        w.writerow(cols)
        for t in range(T):
            w.writerow([_fmt(table[c][t]) for c in cols])
    _plot(table, out_dir / "nll_bits_per_timestep.png", f"{dm.name} {split}: {summary['bpd']:.4f} bits/dim")
    write_json(out_dir / "nll.json", summary)
    print(f"[ddpm] NLL ({dm.name} {split}, {summary['num_images']} images): <= {summary['bpd']:.4f} bits/dim"
          + (f" ({NULL_TOKEN})" if loaded.num_classes else ""))
    return summary


def _fmt(v: Any) -> Any:
    return int(v) if isinstance(v, (np.integer, int)) else float(v)


def main() -> None:
    """``python -m ddpm.nll`` / ``ddpm-nll``: the Hydra app of conf/nll.yaml."""
    from ddpm.core.cli import hydra_app

    hydra_app("nll", evaluate_nll)


if __name__ == "__main__":
    main()
