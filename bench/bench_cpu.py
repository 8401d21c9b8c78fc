#!/usr/bin/env python
"""CPU benchmark: our DDPM (UNet + GaussianDiffusion) against diffusers' UNet2DModel + DDPMScheduler.

Run from the repository root (the full run takes tens of minutes on 2 cores; ``--skip-e2e`` drops the
quickstart ``train.py`` run, ``--quick`` shrinks everything to a smoke test of a few seconds per section)::

    python bench/bench_cpu.py --out bench/results/cpu.md

What is measured (one process, the implementations alternated round by round in ABBA order, medians of
``--repeats`` timed repeats after ``--warmup`` untimed ones):

* ``train``: one optimizer step of the paper's 35.7M CIFAR-10 UNet at batch 32, train mode, dropout 0.1.
  Ours: ``UNet`` + ``GaussianDiffusion.training_losses`` (eps, mse) + ``torch.optim.Adam`` + the EMA update of
  ``DiffusionModule`` (``torch._foreach_lerp_``). Diffusers: ``UNet2DModel`` (google/ddpm-cifar10-32
  config) + ``DDPMScheduler.add_noise`` + ``F.mse_loss`` + ``torch.optim.Adam`` +
  ``diffusers.training_utils.EMAModel``.
* ``sample``: one ancestral denoising step at batch 64 under ``no_grad``, eval mode. Ours:
  ``p_mean_variance`` + the noise of ``SAMPLERS["ancestral"].sample``; diffusers: ``UNet2DModel`` +
  ``DDPMScheduler.step``.
* peak memory: each implementation runs ``--mem-steps`` steps in a **fresh child process**; the figure is
  the peak resident set size during those steps (``VmHWM``, reset through ``/proc/self/clear_refs`` right
  before them; ``ru_maxrss`` where that is unavailable) minus the resident set size just before them, i.e.
  the extra memory the steps need on top of the built model (+ optimizer state / EMA, allocated before).
* ``sample1000``: 1000-step ancestral sampling of 64 digits (8x8x1) with the quickstart architecture
  (``conf/model/unet_small.yaml``), ours and a diffusers UNet2DModel of the same architecture and size.
* ``bpd``: ``calc_bpd_loop`` cost on the quickstart model: forward calls and time for several ``t_batch``,
  against the time of bare forward passes of the same batch (the loop should cost ~1 forward per (image, t)).
* ``e2e``: wall time of ``python train.py`` (the digits quickstart, default config) in a subprocess.

``--variants`` adds opt-in fast paths of ours to the train/sample rounds (channels_last, fused Adam,
torch.compile, inference_mode) so their effect is measured under the same noise.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ddpm.services.interop import unet_kwargs_from_diffusers_config

ROOT = Path(__file__).resolve().parents[1]

# The paper's CIFAR-10 model (35,746,307 parameters) as diffusers' UNet2DModel config (google/ddpm-cifar10-32).
CIFAR_DIFFUSERS = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    layers_per_block=2,
    attention_head_dim=None,
    norm_num_groups=32,
    norm_eps=1e-6,
    act_fn="silu",
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
    dropout=0.1,
)
# The quickstart model (conf/model/unet_small.yaml at 8x8x1) in the same spelling.
SMALL_DIFFUSERS = dict(
    sample_size=8,
    in_channels=1,
    out_channels=1,
    block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    layers_per_block=1,
    attention_head_dim=None,
    norm_num_groups=32,
    norm_eps=1e-6,
    act_fn="silu",
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
    dropout=0.0,
)
# Our constructor arguments for the same networks, from the converter that loads the published weights.
CIFAR_OURS = unet_kwargs_from_diffusers_config(CIFAR_DIFFUSERS)
SMALL_OURS = unet_kwargs_from_diffusers_config(SMALL_DIFFUSERS)
LR = 2e-4
EMA_DECAY = 0.9999
VARIANTS = ("cl", "fused_adam", "foreach_adam", "compile", "compile_frozen", "inference_mode", "diffusers_cl")


def _configs(quick: bool) -> tuple[dict, dict, str]:
    """(ours, diffusers, label) of the model under test: the CIFAR-10 model, or the small one for --quick."""
    if quick:
        return (
            dict(SMALL_OURS, dropout=0.1),
            dict(SMALL_DIFFUSERS, dropout=0.1),
            "quickstart UNet 8x8x1 (--quick)",
        )
    return CIFAR_OURS, CIFAR_DIFFUSERS, "CIFAR-10 UNet 35.7M, 32x32x3"


def _image_shape(cfg_ours: dict) -> tuple[int, int, int]:
    return cfg_ours["in_channels"], cfg_ours["resolution"], cfg_ours["resolution"]


def emit(report: str, out: Path | None) -> None:
    """Print a Markdown report, and write it to ``out`` too when given (``--out``)."""
    print(report)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report)


# ---------------------------------------------------------------------------------------------- models
def build_ours(cfg: dict, channels_last: bool = False):
    from ddpm.core.nets import UNet

    net = UNet(**cfg)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


def build_diffusers(cfg: dict):
    from diffusers import UNet2DModel

    return UNet2DModel(**cfg)


def same_weights(ours, theirs) -> float | None:
    """Copy the diffusers weights into ours (ddpm.services.interop) and return the max abs output difference (eval,
    batch 2), or None when the converter is unavailable. Speed does not depend on the weights; this only
    checks that the two networks compute the same function."""
    try:
        from ddpm.services.interop import convert_diffusers_state_dict

        ours.load_state_dict(convert_diffusers_state_dict(theirs.state_dict(), ours))
    except Exception as e:  # noqa: BLE001 - the converter is optional for the benchmark
        print(f"[bench] weights not shared ({type(e).__name__}: {e}); timing is unaffected", file=sys.stderr)
        return None
    was = ours.training, theirs.training
    ours.eval(), theirs.eval()
    g = torch.Generator().manual_seed(0)
    c, r = ours.in_channels, ours.resolution
    x = torch.randn(2, c, r, r, generator=g)
    t = torch.tensor([3, 900])
    with torch.no_grad():
        err = (
            (ours(x.contiguous(memory_format=torch.channels_last) if _is_cl(ours) else x, t) - theirs(x, t).sample)
            .abs()
            .max()
            .item()
        )
    ours.train(was[0]), theirs.train(was[1])
    return err


def _is_cl(net) -> bool:
    return (
        net.conv_in.weight.is_contiguous(memory_format=torch.channels_last) and not net.conv_in.weight.is_contiguous()
    )


def _diffusion(T: int = 1000):
    from ddpm.core.diffusion import GaussianDiffusion

    return GaussianDiffusion.from_config("linear", T, "eps", "fixed_large", "mse")


def _scheduler(T: int = 1000):
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=T,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        variance_type="fixed_large",
        clip_sample=True,
    )


def _data(shape: tuple[int, ...], seed: int = 0, channels_last: bool = False) -> torch.Tensor:
    x = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


# ---------------------------------------------------------------------------------------------- steps
class Impl:
    """One implementation of one measurement: ``step()`` runs it once."""

    name: str

    def step(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class TrainOurs(Impl):
    def __init__(self, cfg: dict, batch: int, variants: frozenset[str] = frozenset(), net=None):
        self.name = "ours" + "".join(f"+{v}" for v in sorted(variants))
        cl = "cl" in variants
        self.net = (net if net is not None else build_ours(cfg)).train()
        if cl:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.ema = copy.deepcopy(self.net).requires_grad_(False).eval()
        self.diffusion = _diffusion()
        adam = {}
        if "fused_adam" in variants:
            adam["fused"] = True
        elif "foreach_adam" in variants:
            adam["foreach"] = True
        self.opt = torch.optim.Adam(self.net.parameters(), lr=LR, **adam)
        self.params = list(self.net.parameters())
        self.ema_params = list(self.ema.parameters())
        self.model_fn = torch.compile(self.net) if "compile" in variants else self.net
        self.x = _data((batch, *_image_shape(cfg)), channels_last=cl)
        self.num_t = self.diffusion.num_timesteps

    def step(self) -> None:
        x = self.x
        t = torch.randint(0, self.num_t, (x.shape[0],))
        loss = self.diffusion.training_losses(self.model_fn, x, t)["loss"].mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        with torch.no_grad():  # DiffusionModule.update_ema
            torch._foreach_lerp_(self.ema_params, self.params, 1.0 - EMA_DECAY)


class TrainDiffusers(Impl):
    def __init__(self, cfg: dict, batch: int, net=None, channels_last: bool = False):
        from diffusers.training_utils import EMAModel

        self.name = "diffusers+cl" if channels_last else "diffusers"
        self.unet = (net if net is not None else build_diffusers(cfg)).train()
        if channels_last:
            self.unet = self.unet.to(memory_format=torch.channels_last)
        self.sched = _scheduler()
        self.opt = torch.optim.Adam(self.unet.parameters(), lr=LR)
        self.ema = EMAModel(self.unet.parameters(), decay=EMA_DECAY)
        c = cfg["in_channels"]
        self.x = _data((batch, c, cfg["sample_size"], cfg["sample_size"]), channels_last=channels_last)
        self.num_t = self.sched.config.num_train_timesteps

    def step(self) -> None:
        x = self.x
        noise = torch.randn_like(x)
        t = torch.randint(0, self.num_t, (x.shape[0],))
        noisy = self.sched.add_noise(x, noise, t)
        loss = F.mse_loss(self.unet(noisy, t).sample, noise)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.ema.step(self.unet.parameters())


SAMPLE_T = 500  # the code index of the timed denoising step (any t costs the same)


class SampleOurs(Impl):
    """One step of the ancestral sampler (p_mean_variance with x_0 clipping, then the noise)."""

    def __init__(self, cfg: dict, batch: int, variants: frozenset[str] = frozenset(), net=None):
        self.name = "ours" + "".join(f"+{v}" for v in sorted(variants))
        cl = "cl" in variants
        self.net = (net if net is not None else build_ours(cfg)).eval()
        if cl:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.model_fn = torch.compile(self.net) if "compile" in variants else self.net
        if "compile_frozen" in variants:  # what `python sample.py compile=true` runs
            from ddpm.services.runtime import compile_for_sampling

            self.model_fn = compile_for_sampling(self.net)
        self.grad_ctx = torch.inference_mode if "inference_mode" in variants else torch.no_grad
        self.diffusion = _diffusion()
        self.x = _data((batch, *_image_shape(cfg)), channels_last=cl)

    def step(self) -> None:
        with self.grad_ctx():
            x = self.x
            t = torch.full((x.shape[0],), SAMPLE_T, dtype=torch.long)
            out = self.diffusion.p_mean_variance(self.model_fn, x, t, clip_denoised=True)
            z = torch.randn_like(x)
            self.out = out["mean"] + torch.exp(0.5 * out["log_variance"]) * z


class SampleDiffusers(Impl):
    def __init__(self, cfg: dict, batch: int, net=None, channels_last: bool = False):
        self.name = "diffusers+cl" if channels_last else "diffusers"
        self.unet = (net if net is not None else build_diffusers(cfg)).eval()
        if channels_last:
            self.unet = self.unet.to(memory_format=torch.channels_last)
        self.sched = _scheduler()
        self.sched.set_timesteps(self.sched.config.num_train_timesteps)
        c, r = cfg["in_channels"], cfg["sample_size"]
        self.x = _data((batch, c, r, r), channels_last=channels_last)

    def step(self) -> None:
        with torch.no_grad():
            eps = self.unet(self.x, SAMPLE_T).sample
            self.out = self.sched.step(eps, SAMPLE_T, self.x).prev_sample


def make_impl(kind: str, which: str, quick: bool, batch: int, variants: frozenset[str] = frozenset(), nets=None):
    cfg_ours, cfg_theirs, _ = _configs(quick)
    nets = nets or {}
    if kind == "train":
        if which == "ours":
            return TrainOurs(cfg_ours, batch, variants, nets.get("ours"))
        return TrainDiffusers(cfg_theirs, batch, nets.get("diffusers"), "diffusers_cl" in variants)
    if which == "ours":
        return SampleOurs(cfg_ours, batch, variants, nets.get("ours"))
    return SampleDiffusers(cfg_theirs, batch, nets.get("diffusers"), "diffusers_cl" in variants)


# ---------------------------------------------------------------------------------------------- timing
CPU_TIMES: dict[str, list[float]] = {}  # CPU seconds (process_time) of the last alternate() call


def alternate(impls: list[Impl], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Time ``step()`` of each implementation, round by round, ABBA order; returns wall seconds per repeat.

    The process CPU seconds of each repeat go to ``CPU_TIMES``: with one intra-op thread that is the work
    done, which time slices lost to other processes on a shared machine do not inflate (wall time does).
    """
    for _ in range(warmup):
        for impl in impls:
            impl.step()
    times: dict[str, list[float]] = {impl.name: [] for impl in impls}
    CPU_TIMES.clear()
    CPU_TIMES.update({impl.name: [] for impl in impls})
    for r in range(repeats):
        order = impls if r % 2 == 0 else impls[::-1]
        for impl in order:
            gc.collect()
            c0, t0 = time.process_time(), time.perf_counter()
            impl.step()
            times[impl.name].append(time.perf_counter() - t0)
            CPU_TIMES[impl.name].append(time.process_time() - c0)
        print(
            f"[bench]   round {r + 1}/{repeats}: "
            + ", ".join(f"{k} {v[-1]:.3f}s (cpu {CPU_TIMES[k][-1]:.3f}s)" for k, v in times.items()),
            file=sys.stderr,
            flush=True,
        )
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


# ---------------------------------------------------------------------------------------------- memory
def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_kb() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux


def child_memory(spec: str, quick: bool, batch: int, steps: int, threads: int) -> dict:
    """Run in a fresh process: build one implementation, then ``steps`` steps; peak RSS over them minus RSS
    before them."""
    torch.set_num_threads(threads)
    kind, which, *var = spec.split(":")
    impl = make_impl(kind, which, quick, batch, frozenset(v for v in var if v))
    gc.collect()
    before = _rss_kb()
    reset = _reset_peak()
    for _ in range(steps):
        impl.step()
    peak = _peak_kb()
    return {
        "spec": spec,
        "rss_before_mb": before / 1024,
        "peak_mb": peak / 1024,
        "delta_mb": (peak - before) / 1024,
        "method": "VmHWM after clear_refs" if reset else "ru_maxrss",
    }


def measure_memory(spec: str, args) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        spec,
        "--mem-steps",
        str(args.mem_steps),
        "--threads",
        str(args.threads),
        "--train-batch",
        str(args.train_batch),
        "--sample-batch",
        str(args.sample_batch),
    ]
    if args.quick:
        cmd.append("--quick")
    kind = spec.split(":")[0]
    batch = args.train_batch if kind == "train" else args.sample_batch
    print(f"[bench] memory child {spec} (batch {batch}) ...", file=sys.stderr, flush=True)
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        raise RuntimeError(f"memory child {spec} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- sections
def profile_step(impl: Impl, rows: int) -> str:
    """torch.profiler table (self CPU time) of one step."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        impl.step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=44)


def section_pair(kind: str, args, rows: list, notes: list, fast_rows: list, profiles: list) -> None:
    quick = args.quick
    cfg_ours, cfg_theirs, label = _configs(quick)
    batch = args.train_batch if kind == "train" else args.sample_batch
    torch.manual_seed(0)
    theirs_net = build_diffusers(cfg_theirs)
    ours_net = build_ours(cfg_ours)
    err = same_weights(ours_net, theirs_net)
    n_ours = sum(p.numel() for p in ours_net.parameters())
    n_theirs = sum(p.numel() for p in theirs_net.parameters())
    notes.append(
        f"{kind}: {label}; parameters ours {n_ours:,} / diffusers {n_theirs:,}; "
        + (
            f"same weights, eval outputs differ by at most {err:.1e}"
            if err is not None
            else "independent random weights"
        )
    )
    impls: list[Impl] = [
        make_impl(kind, "ours", quick, batch, nets={"ours": ours_net}),
        make_impl(kind, "diffusers", quick, batch, nets={"diffusers": theirs_net}),
    ]
    applicable = {
        "train": {"cl", "fused_adam", "foreach_adam", "compile", "diffusers_cl"},
        "sample": {"cl", "compile", "compile_frozen", "inference_mode", "diffusers_cl"},
    }[kind]
    for v in args.variants:
        if v in applicable:
            which = "diffusers" if v == "diffusers_cl" else "ours"
            impls.append(make_impl(kind, which, quick, batch, frozenset([v])))
    print(
        f"[bench] {kind}: batch {batch}, {args.repeats} repeats ({args.warmup} warmup), {[i.name for i in impls]}",
        file=sys.stderr,
        flush=True,
    )
    times = alternate(impls, args.repeats, args.warmup)
    if args.profile:
        for impl in impls[:2]:
            profiles.append((f"{kind} {impl.name}", profile_step(impl, args.profile_rows)))
    del impls, ours_net, theirs_net
    gc.collect()
    med = {k: median(v) for k, v in times.items()}
    cpu = {k: median(v) for k, v in CPU_TIMES.items()}
    what = "one optimizer step (fwd, loss, bwd, Adam, EMA)" if kind == "train" else "one denoising step, no_grad"
    spread = {k: f"{min(v):.2f}-{max(v):.2f}" for k, v in times.items()}
    rows.append(
        (
            f"{kind} b{batch}: {what}",
            "images/s",
            f"{batch / med['ours']:.2f}",
            f"{batch / med['diffusers']:.2f}",
            f"{med['ours'] / med['diffusers']:.2f}x time",
            "<= 0.85x" if not quick else "-",
        )
    )
    rows.append(
        (
            f"{kind} b{batch}",
            "s/step median (min-max)",
            f"{med['ours']:.3f} ({spread['ours']})",
            f"{med['diffusers']:.3f} ({spread['diffusers']})",
            "",
            "",
        )
    )
    rows.append(
        (
            f"{kind} b{batch}",
            f"CPU s/step median ({args.threads} thread{'s' if args.threads > 1 else ''})",
            f"{cpu['ours']:.3f}",
            f"{cpu['diffusers']:.3f}",
            f"{cpu['ours'] / cpu['diffusers']:.2f}x CPU time",
            "",
        )
    )
    for name, m in med.items():
        if name not in ("ours", "diffusers"):
            fast_rows.append(
                (
                    kind,
                    name,
                    f"{m:.3f}",
                    f"{m / med['ours']:.2f}x",
                    f"{m / med['diffusers']:.2f}x",
                    f"{cpu[name]:.3f}",
                    f"{cpu[name] / cpu['ours']:.2f}x",
                    f"{cpu[name] / cpu['diffusers']:.2f}x",
                )
            )
    if not args.skip_memory:
        mem = {w: measure_memory(f"{kind}:{w}", args) for w in ("ours", "diffusers")}
        notes.append(
            f"{kind} memory method: {mem['ours']['method']}; RSS before the steps "
            f"ours {mem['ours']['rss_before_mb']:.0f} MB, "
            f"diffusers {mem['diffusers']['rss_before_mb']:.0f} MB"
        )
        rows.append(
            (
                f"{kind} b{batch}",
                f"peak RSS delta MB ({args.mem_steps} steps, fresh process)",
                f"{mem['ours']['delta_mb']:.0f}",
                f"{mem['diffusers']['delta_mb']:.0f}",
                f"{mem['ours']['delta_mb'] / mem['diffusers']['delta_mb']:.2f}x",
                "<= 1.00x" if not quick else "-",
            )
        )


def section_sample1000(args, rows: list, notes: list) -> None:
    """Full ancestral sampling of 64 digits with the quickstart architecture (random weights: the cost does
    not depend on them)."""
    from diffusers import UNet2DModel

    from ddpm.core.diffusion import SAMPLERS

    steps = 20 if args.quick else 1000
    n = args.digits
    torch.manual_seed(0)
    theirs_net = UNet2DModel(**SMALL_DIFFUSERS).eval()
    ours_net = build_ours(SMALL_OURS).eval()
    err = same_weights(ours_net, theirs_net)
    diffusion = _diffusion(steps)
    sched = _scheduler(steps)
    sched.set_timesteps(steps)

    class Ours(Impl):
        name = "ours"

        def step(self) -> None:
            SAMPLERS["ancestral"].sample(diffusion, ours_net, (n, 1, 8, 8), generator=torch.Generator().manual_seed(0))

    class Theirs(Impl):
        name = "diffusers"

        def step(self) -> None:
            g = torch.Generator().manual_seed(0)
            x = torch.randn((n, 1, 8, 8), generator=g)
            with torch.no_grad():
                for t in sched.timesteps:
                    x = sched.step(theirs_net(x, t).sample, t, x, generator=g).prev_sample

    n_params = sum(p.numel() for p in ours_net.parameters())
    notes.append(
        f"sample{steps}: quickstart UNet ({n_params:,} parameters, diffusers twin "
        f"{sum(p.numel() for p in theirs_net.parameters()):,}"
        + (f", same weights, outputs differ by {err:.1e}" if err is not None else "")
        + ")"
    )
    print(f"[bench] sample{steps}: {n} digits", file=sys.stderr, flush=True)
    times = alternate([Ours(), Theirs()], args.e2e_repeats, 0)
    mo, mt = median(times["ours"]), median(times["diffusers"])
    co, ct = median(CPU_TIMES["ours"]), median(CPU_TIMES["diffusers"])
    rows.append(
        (
            f"{steps}-step sampling of {n} digits 8x8x1",
            "wall s (median)",
            f"{mo:.2f}",
            f"{mt:.2f}",
            f"{mo / mt:.2f}x time",
            "-",
        )
    )
    rows.append(
        (
            f"{steps}-step sampling of {n} digits 8x8x1",
            "CPU s (median)",
            f"{co:.2f}",
            f"{ct:.2f}",
            f"{co / ct:.2f}x CPU time",
            "-",
        )
    )


def section_bpd(args, bpd_rows: list) -> None:
    """calc_bpd_loop: forward calls and time for several t_batch, vs bare forwards of the same batch."""
    T = 50 if args.quick else 1000
    n = args.bpd_images
    torch.manual_seed(0)
    net = build_ours(SMALL_OURS).eval()
    diffusion = _diffusion(T)
    x0 = _data((n, 1, 8, 8))
    calls = {"n": 0}

    def model_fn(x, t):
        calls["n"] += 1
        return net(x, t)

    for tb in args.t_batches:
        if tb > T:
            continue
        reps = []
        for _ in range(args.bpd_repeats):
            calls["n"] = 0
            t0 = time.perf_counter()
            diffusion.calc_bpd_loop(model_fn, x0, t_batch=tb)
            reps.append(time.perf_counter() - t0)
        n_calls = calls["n"]
        loop_s = median(reps)
        # bare forward passes at the same batch (k * n images; the last chunk may be smaller)
        xb = _data((min(tb, T) * n, 1, 8, 8))
        tt = torch.zeros(xb.shape[0], dtype=torch.long)
        with torch.no_grad():
            net(xb, tt)
            fw = []
            for _ in range(max(3, args.bpd_repeats)):
                t0 = time.perf_counter()
                net(xb, tt)
                fw.append(time.perf_counter() - t0)
        fwd_s = median(fw) * (T / min(tb, T))
        bpd_rows.append(
            (
                tb,
                n_calls,
                n * T,
                f"{loop_s:.2f}",
                f"{1e3 * loop_s / (n * T):.3f}",
                f"{fwd_s:.2f}",
                f"{loop_s / fwd_s:.2f}x",
            )
        )
        print(
            f"[bench] bpd t_batch={tb}: {n_calls} calls, {loop_s:.2f}s (bare forwards {fwd_s:.2f}s)",
            file=sys.stderr,
            flush=True,
        )


def section_e2e(args, rows: list, notes: list) -> None:
    with tempfile.TemporaryDirectory(prefix="ddpm-bench-e2e-") as tmp:
        cmd = [sys.executable, "train.py", f"hydra.run.dir={tmp}"]
        if args.quick:
            cmd += ["trainer.max_steps=3", "trainer.val_check_interval=3", "final_samples=0"]
        print(f"[bench] e2e: {' '.join(cmd)}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if res.returncode != 0:
            notes.append(f"e2e FAILED (rc {res.returncode}): {res.stderr.strip().splitlines()[-1:]}")
            print(res.stderr[-3000:], file=sys.stderr)
            return
    rows.append(
        (
            "quickstart `python train.py` (default config)" + (" [quick overrides]" if args.quick else ""),
            "wall s",
            f"{wall:.0f}",
            "-",
            "-",
            "-",
        )
    )


# ---------------------------------------------------------------------------------------------- report
def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return (
        f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} intra-op threads, {torch.backends.cpu.get_cpu_capability()}), "
        f"Python {platform.python_version()}, load average {load[0]:.1f} at the end"
    )


def table(header: tuple, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny models / few repeats: a smoke test (seconds)")
    p.add_argument(
        "--sections",
        default="train,sample,sample1000,bpd,e2e",
        help="comma list of train,sample,sample1000,bpd,e2e",
    )
    p.add_argument("--skip-e2e", action="store_true", help="skip the quickstart train.py run (minutes)")
    p.add_argument("--skip-memory", action="store_true", help="skip the peak-memory child processes")
    p.add_argument("--variants", default="", help=f"comma list of opt-in fast paths of ours: {','.join(VARIANTS)}")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per implementation (default 5)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--profile", action="store_true", help="append a torch.profiler table of one step of each")
    p.add_argument("--profile-rows", type=int, default=15)
    p.add_argument("--train-batch", type=int, default=None, help="default 32 (4 with --quick)")
    p.add_argument("--sample-batch", type=int, default=None, help="default 64 (4 with --quick)")
    p.add_argument("--mem-steps", type=int, default=2)
    p.add_argument("--digits", type=int, default=64, help="images in the 1000-step sampling run")
    p.add_argument("--e2e-repeats", type=int, default=None, help="repeats of the 1000-step sampling (default 3)")
    p.add_argument("--bpd-images", type=int, default=4)
    p.add_argument("--bpd-repeats", type=int, default=None)
    p.add_argument("--t-batches", default="1,10,100")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads for every implementation (default: torch's default; 1 with --quick)",
    )
    p.add_argument("--out", type=Path, default=None, help="also write the Markdown report here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    args.train_batch = args.train_batch or (4 if args.quick else 32)
    args.sample_batch = args.sample_batch or (4 if args.quick else 64)
    args.repeats = args.repeats or (2 if args.quick else 5)
    args.threads = args.threads or (1 if args.quick else torch.get_num_threads())
    args.e2e_repeats = args.e2e_repeats or (1 if args.quick else 3)
    args.bpd_repeats = args.bpd_repeats or (1 if args.quick else 3)
    args.t_batches = [int(s) for s in args.t_batches.split(",") if s]
    args.variants = [v for v in args.variants.split(",") if v]
    bad = set(args.variants) - set(VARIANTS)
    if bad:
        p.error(f"unknown variants {sorted(bad)}; choose from {VARIANTS}")
    torch.set_num_threads(args.threads)

    if args.child:
        kind = args.child.split(":")[0]
        batch = args.train_batch if kind == "train" else args.sample_batch
        print(json.dumps(child_memory(args.child, args.quick, batch, args.mem_steps, args.threads)))
        return

    sections = [s for s in args.sections.split(",") if s]
    if args.skip_e2e and "e2e" in sections:
        sections.remove("e2e")
    started = time.time()
    rows: list = []
    notes: list = []
    fast_rows: list = []
    bpd_rows: list = []
    profiles: list = []
    for s in sections:
        if s in ("train", "sample"):
            section_pair(s, args, rows, notes, fast_rows, profiles)
        elif s == "sample1000":
            section_sample1000(args, rows, notes)
        elif s == "bpd":
            section_bpd(args, bpd_rows)
        elif s == "e2e":
            section_e2e(args, rows, notes)
        else:
            p.error(f"unknown section {s!r}")

    cmd = "python bench/bench_cpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = [
        f"## CPU benchmark, fp32 ({datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, "
        f"{(time.time() - started) / 60:.1f} min)",
        "",
        f"Command: `{cmd.strip()}`",
        "",
        f"Machine: {machine()}",
        "",
    ]
    if rows:
        out += [table(("benchmark", "metric", "ours", "diffusers", "ours/diffusers", "target"), rows), ""]
    if fast_rows:
        out += [
            "Opt-in fast paths of ours (same rounds):",
            "",
            table(
                ("section", "variant", "s/step", "vs ours", "vs diffusers", "CPU s/step", "vs ours", "vs diffusers"),
                fast_rows,
            ),
            "",
        ]
    if bpd_rows:
        out += [
            f"`calc_bpd_loop` on the quickstart model ({args.bpd_images} images, T={50 if args.quick else 1000}):",
            "",
            table(
                (
                    "t_batch",
                    "forward calls",
                    "(image, t) terms",
                    "loop s",
                    "ms per (image, t)",
                    "bare forwards s",
                    "loop / forwards",
                ),
                bpd_rows,
            ),
            "",
        ]
    out += [f"- {n}" for n in notes]
    for title, prof in profiles:
        out += [
            "",
            f"Profile of one step, {title} (torch.profiler, self CPU time):",
            "",
            "```",
            prof.strip(),
            "```",
        ]
    emit("\n".join(out) + "\n", args.out)


if __name__ == "__main__":
    main()
