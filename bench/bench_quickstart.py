"""The digits quickstart side by side with diffusers' unconditional training example, in the same CPU time.

    python bench/bench_quickstart.py                      # ours + diffusers' example recipe on the same small UNet
    python bench/bench_quickstart.py --example-arch       # + diffusers' example UNet as well (slow to sample)
    python bench/bench_quickstart.py --quick              # seconds: a smoke test

1. **ours**: ``python train.py model.num_classes=null``, the quickstart's recipe (a fixed optimizer-step budget)
   without its class labels, as every other arm is unconditional (``--conditional``: ``python train.py`` itself,
   class-conditional, sampled with balanced labels), in a temporary run directory. Its training wall time
   (``fit_seconds`` in metrics.json) on this machine is the budget of every other arm.
2. **diffusers recipe, small UNet**: the hyperparameters of diffusers' ``examples/unconditional_image_generation/
   train_unconditional.py`` defaults (batch 16; AdamW lr 1e-4, betas (0.95, 0.999), weight decay 1e-6, eps 1e-8;
   cosine schedule with 500 warmup steps over its 100 epochs; ``EMAModel`` with inv_gamma 1, power 3/4, max decay
   0.9999; ``DDPMScheduler`` linear, T=1000, epsilon prediction; plain MSE; the data scaled to [-1, 1]) on a
   ``UNet2DModel`` with the quickstart's architecture (the same 701,345 parameters as ours). It trains on the
   same digits train split until it has used the same training wall time. This isolates the recipe.
3. **diffusers example UNet** (``--example-arch``): the same recipe on the example's own ``UNet2DModel``
   (block_out_channels 128,128,256,256,512,512, layers_per_block 2, attention at the 5th level) at 8x8x1.
4. **lucidrains recipe, quickstart UNet** and 5. **lucidrains recipe + its Unet** (when
   ``denoising-diffusion-pytorch`` is installed: ``pip install -e .[bench]``): the README example of
   lucidrains' ``denoising-diffusion-pytorch`` (``GaussianDiffusion`` with its defaults: v-prediction, sigmoid
   beta schedule, T=1000, 250 DDIM sampling steps; ``Trainer``'s recipe: batch 32 x 2 accumulated, Adam lr 8e-5,
   betas (0.9, 0.99), grad-norm clip 1, ``ema_pytorch.EMA`` decay 0.995 every 10 steps) on our quickstart UNet
   (the same network, as for diffusers) and on its own ``Unet(dim=16, dim_mults=(1, 2, 4))`` (721,185
   parameters, the quickstart's size; the README's dim=64, (1, 2, 4, 8) has 35.7M and is far too slow for this
   budget on a CPU). Deviations, both in its favour or neutral: fp32 (its ``amp=True`` is a GPU setting) and no
   horizontal flips (its default; mirrored digits are not digits).

Every arm is scored the same way: ``--n`` samples from its EMA weights, drawn with the example's sampler (1000
DDPM steps, ``DDPMScheduler.step``) for diffusers and with the quickstart's own final sampler for ours, then
:func:`ddpm.services.metrics.digits_score.digits_scores`: under both digits extractors (A ``ddpm-digits``, B ``ddpm-digits-b``,
trained apart) FID and unbiased KID in the classifier's feature space against the train split (lower is better), the
class mix (KL of the predicted classes from the train split's), confidence and class entropy (A). Reference scores at
the same n (real held-out digits, noise) give the scale. Prints a Markdown table; ``--out FILE`` also writes it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

EXAMPLE = dict(  # train_unconditional.py defaults
    batch_size=16, lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8, warmup=500, epochs=100,
    ema_inv_gamma=1.0, ema_power=0.75, ema_max_decay=0.9999, T=1000, inference_steps=1000,
)
EXAMPLE_UNET = dict(
    sample_size=8, in_channels=1, out_channels=1, layers_per_block=2,
    block_out_channels=(128, 128, 256, 256, 512, 512),
    down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
)


UNCONDITIONAL = ["model.num_classes=null"]  # the quickstart's recipe without its labels, as the other arms


def run_ours(quick: bool, overrides: list[str]) -> tuple[dict, float]:
    """The quickstart as a user runs it (plus ``overrides``); returns (metrics.json + its parameter count and batch,
    training seconds)."""
    with tempfile.TemporaryDirectory(prefix="ddpm-qs-") as tmp:
        cmd = [sys.executable, str(ROOT / "train.py"), *overrides, f"hydra.run.dir={tmp}"]
        if quick:
            cmd += ["trainer.max_steps=20", "final_samples=16", "sampler.steps=10"]
        t0 = time.time()
        subprocess.run(cmd, cwd=tmp, check=True, capture_output=True, text=True)
        wall = time.time() - t0
        metrics = json.loads((Path(tmp) / "metrics.json").read_text())
        ckpt = torch.load(Path(tmp) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    metrics["wall_seconds"] = round(wall, 1)
    metrics["params"] = sum(v.numel() for k, v in ckpt["state_dict"].items() if k.startswith("net."))
    metrics["batch"] = ckpt["cfg"]["data"]["batch_size"]
    sampler = ckpt["cfg"]["sampler"]
    metrics["sampler_label"] = " ".join(
        str(v) for v in (sampler["name"], sampler.get("steps"), "steps", sampler.get("var_type")) if v is not None)
    return metrics, float(metrics["fit_seconds"])


def train_diffusers(unet_cfg: dict, seconds: float, n: int, quick: bool, seed: int = 0) -> dict:
    """diffusers' example recipe for ``seconds`` of training wall time, then ``n`` samples scored."""
    from diffusers import DDPMScheduler, UNet2DModel
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel

    from ddpm.core.data import DigitsDataModule, model_to_uint8, uint8_to_model

    torch.manual_seed(seed)
    # the quickstart's train split, in its order, scaled to [-1, 1] (the example's Normalize([0.5]) does the same)
    images = uint8_to_model(DigitsDataModule().splits()["train"].images)  # type: ignore[union-attr]
    model = UNet2DModel(**unet_cfg)
    sched = DDPMScheduler(num_train_timesteps=EXAMPLE["T"], beta_schedule="linear")
    opt = torch.optim.AdamW(model.parameters(), lr=EXAMPLE["lr"], betas=EXAMPLE["betas"],
                            weight_decay=EXAMPLE["weight_decay"], eps=EXAMPLE["eps"])
    steps_per_epoch = math.ceil(images.shape[0] / EXAMPLE["batch_size"])
    lr_sched = get_cosine_schedule_with_warmup(opt, EXAMPLE["warmup"], steps_per_epoch * EXAMPLE["epochs"])
    ema = EMAModel(model.parameters(), decay=EXAMPLE["ema_max_decay"], use_ema_warmup=True,
                   inv_gamma=EXAMPLE["ema_inv_gamma"], power=EXAMPLE["ema_power"])
    model.train()
    step, start = 0, time.time()
    while time.time() - start < seconds:
        for idx in torch.randperm(images.shape[0]).split(EXAMPLE["batch_size"]):  # shuffle, last batch kept
            x = images[idx]
            noise = torch.randn_like(x)
            t = torch.randint(0, EXAMPLE["T"], (x.shape[0],))
            loss = torch.nn.functional.mse_loss(model(sched.add_noise(x, noise, t), t).sample, noise)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # accelerator.clip_grad_norm_(..., 1.0)
            opt.step()
            lr_sched.step()
            opt.zero_grad()
            ema.step(model.parameters())
            step += 1
            if time.time() - start >= seconds:
                break
    fit_seconds = time.time() - start
    ema.copy_to(model.parameters())  # the example saves and samples the EMA weights
    model.eval()
    steps = 10 if quick else EXAMPLE["inference_steps"]
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, 1, 8, 8), generator=g)
    t0 = time.time()
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(model(x, t).sample, t, x, generator=g).prev_sample
    return arm_result(model_to_uint8(x), model, step, fit_seconds, time.time() - t0,
                      batch=str(EXAMPLE["batch_size"]), sampler=f"DDPM {steps} steps")


def arm_result(images, net: torch.nn.Module, steps: int, fit_seconds: float, sample_seconds: float, **extra) -> dict:
    """One arm's row: the digits score of its uint8 samples, its steps, times and parameter count."""
    from ddpm.services.metrics.digits_score import digits_scores

    q = digits_scores(images)
    return {**q["digits"], "b": q["digits_b"], "steps": steps, "fit_seconds": round(fit_seconds, 1),
            "sample_seconds": round(sample_seconds, 1), "params": sum(p.numel() for p in net.parameters()),
            **extra}


LUCIDRAINS = dict(  # the README example's Trainer/GaussianDiffusion arguments and Trainer defaults
    batch_size=32, accumulate=2, lr=8e-5, betas=(0.9, 0.99), max_grad_norm=1.0, ema_decay=0.995, ema_update_every=10,
    T=1000, sampling_timesteps=250,
)
LUCIDRAINS_UNET = dict(dim=16, dim_mults=(1, 2, 4), channels=1)


class _LucidrainsAdapter(torch.nn.Module):
    """Our UNet behind the attributes and call signature lucidrains' GaussianDiffusion expects."""

    channels = out_dim = 1
    self_condition = False
    random_or_learned_sinusoidal_cond = False

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x, t, x_self_cond=None):
        return self.net(x, t)


def train_lucidrains(own_unet: bool, seconds: float, n: int, quick: bool, seed: int = 0) -> dict:
    """lucidrains' README recipe for ``seconds`` of training wall time, then ``n`` samples scored."""
    from bench_cpu import SMALL_OURS
    from denoising_diffusion_pytorch import GaussianDiffusion, Unet
    from ema_pytorch import EMA

    from ddpm.core.data import DigitsDataModule, model_to_uint8
    from ddpm.core.nets import UNet

    torch.manual_seed(seed)
    images = DigitsDataModule().splits()["train"].images.float() / 255.0  # type: ignore[union-attr]  # its [0, 1]
    net = Unet(**LUCIDRAINS_UNET) if own_unet else _LucidrainsAdapter(UNet(**dict(SMALL_OURS, dropout=0.0)))
    sampling_steps = 10 if quick else LUCIDRAINS["sampling_timesteps"]
    diffusion = GaussianDiffusion(net, image_size=8, timesteps=LUCIDRAINS["T"], sampling_timesteps=sampling_steps)
    opt = torch.optim.Adam(diffusion.parameters(), lr=LUCIDRAINS["lr"], betas=LUCIDRAINS["betas"])
    ema = EMA(diffusion, beta=LUCIDRAINS["ema_decay"], update_every=LUCIDRAINS["ema_update_every"])
    bs, acc = LUCIDRAINS["batch_size"], LUCIDRAINS["accumulate"]

    def batches():  # its DataLoader(shuffle=True), cycled; the last partial batch is kept, as there
        while True:
            yield from (images[idx] for idx in torch.randperm(images.shape[0]).split(bs))

    data = batches()
    step, start = 0, time.time()
    while time.time() - start < seconds:
        diffusion.train()
        for _ in range(acc):
            (diffusion(next(data)) / acc).backward()
        torch.nn.utils.clip_grad_norm_(diffusion.parameters(), LUCIDRAINS["max_grad_norm"])
        opt.step()
        opt.zero_grad()
        ema.update()
        step += 1
    fit_seconds = time.time() - start
    model = ema.ema_model.eval()
    torch.manual_seed(seed)
    t0 = time.time()
    with torch.inference_mode():
        x = torch.cat([model.sample(batch_size=min(64, n - i)) for i in range(0, n, 64)])
    return arm_result(model_to_uint8(x * 2 - 1), net, step, fit_seconds, time.time() - t0,  # its [0, 1] output
                      batch=f"{bs}x{acc}", sampler=f"DDIM {sampling_steps} steps")


def _cells(a: dict, b: dict, bold: bool = False) -> str:
    """FID A, FID B, KID A, KID B, class KL A / B, confidence A, class entropy A of two digits scores."""
    nan = float("nan")
    fid = f"**{a.get('fid', nan):.2f}**" if bold else f"{a.get('fid', nan):.2f}"
    return (f"{fid} | {b.get('fid', nan):.2f} | {a.get('kid', nan):.3g} | {b.get('kid', nan):.3g} | "
            f"{a.get('class_kl', nan):.3f} / {b.get('class_kl', nan):.3f} | {a.get('confidence', nan):.3f} | "
            f"{a.get('class_entropy', nan):.2f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="20 steps / 16 samples: a smoke test")
    p.add_argument("--example-arch", action="store_true", help="also diffusers' example UNet (slow to sample)")
    p.add_argument("--skip-lucidrains", action="store_true", help="leave out the denoising-diffusion-pytorch arms")
    p.add_argument("--n", type=int, default=256, help="samples per arm (ours: the quickstart's final_samples)")
    p.add_argument("--conditional", action="store_true",
                   help="our arm is python train.py as it is (class-conditional), not model.num_classes=null")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    n = 16 if args.quick else args.n
    overrides = [] if args.conditional else UNCONDITIONAL

    from bench_cpu import SMALL_DIFFUSERS, emit

    from ddpm.services.metrics.digits_classifier import DigitsExtractorB
    from ddpm.services.metrics.digits_score import digits_reference_scores

    ours, budget = run_ours(args.quick, overrides)
    print(f"[bench] ours: {ours.get('global_step')} steps in {budget:.0f} s, FID {ours.get('digits/fid')}",
          file=sys.stderr, flush=True)
    arms = {"diffusers recipe, quickstart UNet": dict(SMALL_DIFFUSERS, dropout=0.0)}
    if args.example_arch:
        arms["diffusers recipe + example UNet"] = EXAMPLE_UNET
    results = {}
    for name, cfg in arms.items():
        results[name] = train_diffusers(cfg, budget, n, args.quick)
        print(f"[bench] {name}: {results[name]}", file=sys.stderr, flush=True)
    missing = []
    if not args.skip_lucidrains:
        try:
            import denoising_diffusion_pytorch  # noqa: F401
        except ImportError:
            missing.append("lucidrains' denoising-diffusion-pytorch is not installed (pip install -e .[bench]): "
                           "its arms were left out.")
        else:
            for name, own in (("lucidrains recipe, quickstart UNet", False), ("lucidrains recipe + its Unet", True)):
                results[name] = train_lucidrains(own, budget, n, args.quick)
                print(f"[bench] {name}: {results[name]}", file=sys.stderr, flush=True)
    ref = digits_reference_scores(n)
    ref_b = digits_reference_scores(n, extractor=DigitsExtractorB())

    lines = [
        f"## Digits quickstart side by side ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"Command: `python bench/bench_quickstart.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        f"Machine: {os.cpu_count()} logical cores, torch {torch.__version__}, {torch.get_num_threads()} threads. "
        f"Training budget: ours' training wall time, {budget:.0f} s, for every arm.",
        "",
        "Extractor A: ddpm-digits (the project's digits CNN); B: ddpm-digits-b (trained apart). KID: unbiased, "
        "cubic kernel; class KL: of the predicted classes from the train split's (nats).",
        "",
        f"| arm | params | steps (batch) | sampler | FID A (n={n}) | FID B | KID A | KID B | class KL A / B "
        "| confidence A | class entropy A (bits) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| ours: `{' '.join(['python train.py', *overrides])}` | {ours['params']:,} "
        f"| {ours.get('global_step')} ({ours['batch']}) "
        f"| {ours['sampler_label']} | " + _cells({k[len("digits/"):]: v for k, v in ours.items()
                                                   if k.startswith("digits/")},
                                                  {k[len("digits_b/"):]: v for k, v in ours.items()
                                                   if k.startswith("digits_b/")}, bold=True),
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['params']:,} | {r['steps']} ({r['batch']}) | {r['sampler']} | "
                     + _cells(r, r["b"], bold=True))
    for key, label in (("real_test", "real held-out digits"), ("uniform_noise", "uniform noise")):
        r = ref[key]
        lines.append(f"| {label} (n={r['n']}) | - | - | - | " + _cells(r, ref_b[key]))
    lines += ["", f"ours, whole run: {ours['wall_seconds']} s wall (training, then {ours.get('final_samples')} "
              f"samples in {ours.get('sample_seconds')} s and the score)."]
    lines += [""] + [f"Sampling time per arm: {name}: {r['sample_seconds']} s." for name, r in results.items()]
    lines += missing
    emit("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
