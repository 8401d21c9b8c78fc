#!/usr/bin/env python
"""GPU benchmark of our DDPM: training images/s + model FLOP utilisation, and sampling images/s.

Depends only on ``torch`` and ``ddpm.core.nets`` / ``ddpm.core.diffusion`` (no hydra, omegaconf, lightning, wandb,
diffusers, torch-fidelity), so it runs on a bare GPU machine with the repository on ``PYTHONPATH``::

    PYTHONPATH=src python bench/bench_gpu.py                  # CIFAR-10 35.7M UNet, batch 128, bf16
    PYTHONPATH=src python bench/bench_gpu.py --compile        # + torch.compile
    PYTHONPATH=src python bench/bench_gpu.py --sample-compile --sample-compile-mode reduce-overhead  # CUDA graphs
    bash bench/gpu_suite.sh                                    # all the GPU rows of bench/README.md, ~5 min
    python bench/bench_gpu.py --device cpu --quick            # smoke test on a CPU (tiny model, seconds)

Setup, as in a real run: bf16 autocast with fp32 master weights, channels_last, SDPA restricted to the flash
kernel (``--sdpa``), fused Adam, the EMA update of ``DiffusionModule`` (``torch._foreach_lerp_``), optional
``torch.compile``. Every timed loss and sample is checked to be finite.

* training: one optimizer step (L_simple forward, backward, Adam, EMA) at the paper's batch 128; images/s from
  the median of per-step times (CUDA events), achieved TFLOP/s = FLOPs of one forward+backward
  (``torch.utils.flop_counter.FlopCounterMode``, convolutions / matmuls / attention only) / step time, and
  MFU = that / the device's peak dense bf16 FLOP/s (table below by device name; ``--peak-tflops`` overrides).
* sampling: one ancestral step (``p_mean_variance`` + noise) under ``inference_mode`` at batch 128.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

try:  # a bare checkout without `pip install -e .`
    import ddpm  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ddpm.core.diffusion import GaussianDiffusion  # noqa: E402
from ddpm.core.nets import UNet  # noqa: E402

# Peak dense (no sparsity) bf16 tensor-core FLOP/s by device-name substring; first match wins.
PEAK_BF16_FLOPS = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("V100", 125e12),  # fp16 tensor cores (no bf16)
)
FORBIDDEN_IMPORTS = ("hydra", "omegaconf", "lightning", "wandb", "diffusers", "torch_fidelity")

CIFAR = dict(
    in_channels=3, out_channels=3, ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2,
    attn_resolutions=(16,), dropout=0.1, resolution=32,
)  # fmt: skip
TINY = dict(
    in_channels=3, out_channels=3, ch=32, ch_mult=(1, 2), num_res_blocks=1,
    attn_resolutions=(8,), dropout=0.1, resolution=16,
)  # fmt: skip


def peak_flops(device: torch.device, override_tflops: float | None) -> tuple[float | None, str]:
    if override_tflops:
        return override_tflops * 1e12, "--peak-tflops"
    if device.type != "cuda":
        return None, "unknown for this device (pass --peak-tflops)"
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS:
        if key.lower() in name.lower():
            return flops, f"table entry {key!r}"
    return None, f"{name!r} not in the table (pass --peak-tflops)"


def sdpa_context(kind: str, device: torch.device):
    if kind == "auto" or device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
    }[kind]
    return sdpa_kernel([backend])


class Timer:
    """Per-step wall time; CUDA events on a GPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn, n: int) -> list[float]:
        out = []
        for _ in range(n):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                out.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t0)
        return out


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="DDPM GPU benchmark (torch + ddpm.core.nets/ddpm.core.diffusion only)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny model, batch 4, 2 steps: a smoke test")
    p.add_argument("--batch", type=int, default=None, help="training batch (default 128, the paper's)")
    p.add_argument("--sample-batch", type=int, default=None, help="sampling batch (default 128)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 5; 10 with --compile)")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16", help="autocast dtype")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--sdpa", choices=("flash", "efficient", "cudnn", "math", "auto"), default="flash")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet (training and sampling)")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode for training, e.g. max-autotune")
    p.add_argument("--sample-compile", action="store_true", help="torch.compile the sampling network only")
    p.add_argument("--sample-compile-mode", default=None,
                   help="torch.compile mode for sampling, e.g. reduce-overhead (CUDA graphs); default --compile-mode")
    p.add_argument("--no-fused-adam", action="store_true", help="the default (foreach) Adam instead of fused")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak dense FLOP/s for MFU, in TFLOP/s")
    p.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    return p


def main(argv: list[str] | None = None) -> dict:
    p = make_parser()
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("CUDA is not available; use --device cpu --quick for a smoke test")
    cfg = TINY if args.quick else CIFAR
    batch = args.batch or (4 if args.quick else 128)
    sample_batch = args.sample_batch or (4 if args.quick else 128)
    steps = args.steps or (2 if args.quick else 20)
    sample_compile = args.compile or args.sample_compile
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else (10 if sample_compile else 5))
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[args.dtype]
    channels_last = not args.no_channels_last
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=amp_dtype)

    torch.manual_seed(0)
    net = UNet(**cfg).to(device)
    mf = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=mf)
    ema = copy.deepcopy(net).requires_grad_(False).eval()
    params, ema_params = list(net.parameters()), list(ema.parameters())
    n_params = sum(q.numel() for q in params)
    diffusion = GaussianDiffusion.from_config("linear", 1000, "eps", "fixed_large", "mse").to(device)
    fused = device.type in ("cuda", "cpu") and not args.no_fused_adam
    opt = torch.optim.Adam(params, lr=2e-4, fused=fused or None)
    model_fn = torch.compile(net, mode=args.compile_mode) if args.compile else net
    sample_mode = args.sample_compile_mode or args.compile_mode
    res = cfg["resolution"]
    shape = (batch, cfg["in_channels"], res, res)
    x0 = (torch.rand(shape, device=device) * 2 - 1).contiguous(memory_format=mf)
    sdpa = sdpa_context(args.sdpa, device)
    losses: list[torch.Tensor] = []

    def train_step() -> None:
        t = torch.randint(0, diffusion.num_timesteps, (batch,), device=device)
        with autocast():
            loss = diffusion.training_losses(model_fn, x0, t)["loss"].float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1.0 - 0.9999)
        losses.append(loss.detach())

    # FLOPs of one forward+backward (the optimizer and EMA are elementwise and not counted)
    with sdpa:
        net.train()
        with FlopCounterMode(display=False) as fc:
            t = torch.randint(0, diffusion.num_timesteps, (batch,), device=device)
            with autocast():
                loss = diffusion.training_losses(net, x0, t)["loss"].float().mean()
            loss.backward()
        train_flops = fc.get_total_flops()
        opt.zero_grad(set_to_none=True)

        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        timer = Timer(device)
        timer(train_step, warmup)
        train_times = timer(train_step, steps)
        if device.type == "cuda":
            train_mem = torch.cuda.max_memory_allocated(device) / 2**30
        bad = [i for i, v in enumerate(torch.stack(losses).tolist()) if v != v or abs(v) == float("inf")]
        assert not bad, f"non-finite training loss at steps {bad}"
        assert all(torch.isfinite(q).all() for q in params), "non-finite weights after training steps"

        # sampling: one ancestral step with the EMA weights
        sample_fn = torch.compile(ema, mode=sample_mode) if sample_compile else ema
        cudagraphs = sample_compile and sample_mode is not None and "reduce-overhead" in sample_mode
        xs = torch.randn((sample_batch, cfg["in_channels"], res, res), device=device)
        xs = xs.contiguous(memory_format=mf)
        tt = torch.full((sample_batch,), 500, dtype=torch.long, device=device)
        outs: list[torch.Tensor] = []

        def sample_step() -> None:
            if cudagraphs:  # each call is a new step: the graph may reuse the previous step's output memory
                torch.compiler.cudagraph_mark_step_begin()
            with torch.inference_mode(), autocast():
                out = diffusion.p_mean_variance(sample_fn, xs, tt, clip_denoised=True)
                x = out["mean"].float() + torch.exp(0.5 * out["log_variance"]) * torch.randn_like(xs)
            outs.append(x.abs().amax())

        with torch.inference_mode(), autocast(), FlopCounterMode(display=False) as fc:
            ema(xs, tt)
        sample_flops = fc.get_total_flops()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        timer(sample_step, warmup)
        sample_times = timer(sample_step, steps)
        if device.type == "cuda":
            sample_mem = torch.cuda.max_memory_allocated(device) / 2**30
        assert torch.isfinite(torch.stack(outs)).all(), "non-finite sample"

    peak, peak_src = peak_flops(device, args.peak_tflops)
    tr, sa = statistics.median(train_times), statistics.median(sample_times)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU ({torch.get_num_threads()} threads)"
    tflops_train, tflops_sample = train_flops / tr / 1e12, sample_flops / sa / 1e12
    rows = [
        ("training step (fwd+bwd+Adam+EMA)", batch, f"{batch / tr:.1f}", f"{tr * 1e3:.1f}",
         f"{train_flops / 1e9:.1f}", f"{tflops_train:.3g}",
         f"{100 * tflops_train * 1e12 / peak:.1f}%" if peak else "n/a",
         f"{train_mem:.2f}" if device.type == "cuda" else "n/a"),
        ("sampling step (fwd, no grad)", sample_batch, f"{sample_batch / sa:.1f}", f"{sa * 1e3:.1f}",
         f"{sample_flops / 1e9:.1f}", f"{tflops_sample:.3g}",
         f"{100 * tflops_sample * 1e12 / peak:.1f}%" if peak else "n/a",
         f"{sample_mem:.2f}" if device.type == "cuda" else "n/a"),
    ]  # fmt: skip
    header = ("measurement", "batch", "images/s", "ms/step", "GFLOP/step", "TFLOP/s", "MFU", "peak GiB")
    cmd = "python bench/bench_gpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"## GPU benchmark: {name}",
        "",
        f"Command: `{cmd.strip()}`",
        "",
        f"Model: {'tiny UNet (--quick)' if args.quick else 'CIFAR-10 UNet'} {n_params:,} parameters; "
        f"autocast {args.dtype} (fp32 master weights), channels_last {channels_last}, SDPA {args.sdpa}, "
        f"fused Adam {fused}, compile: training {args.compile} (mode {args.compile_mode}), sampling "
        f"{sample_compile} (mode {sample_mode}); {steps} timed steps after {warmup} warmup; torch "
        f"{torch.__version__}; peak FLOP/s: {f'{peak / 1e12:.0f} TFLOP/s' if peak else 'n/a'} ({peak_src}).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(str(c) for c in r) + " |" for r in rows),
        "",
        "FLOPs: FlopCounterMode (convolutions, matmuls, attention) over one forward+backward (training) or "
        "one forward (sampling); MFU = achieved FLOP/s / peak dense bf16 FLOP/s.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    loaded = [m for m in FORBIDDEN_IMPORTS if m in sys.modules]
    if loaded:
        print(f"WARNING: bench_gpu.py imported {loaded}; the GPU machine does not have them", file=sys.stderr)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return {"train_images_per_s": batch / tr, "sample_images_per_s": sample_batch / sa, "loaded": loaded}


if __name__ == "__main__":
    main()
