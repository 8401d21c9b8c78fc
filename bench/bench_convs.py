#!/usr/bin/env python
"""How close the CPU convolutions already are to the machine's limit, and what Winograd in eager ops gives.

    python bench/bench_convs.py --threads 1                 # ~2 minutes on one core
    python bench/bench_convs.py --threads 1 --quick         # seconds: a smoke test

Why it exists: convolutions are ~80% of a CIFAR-10 UNet training step on a CPU, in ours and in diffusers
alike (``bench_cpu.py --profile``). A step much faster than diffusers' in fp32 would need the convolutions
themselves to get faster. This script measures, for the UNet's main 3x3 convolution shapes at the benchmark's
batch 32:

* oneDNN (PyTorch's CPU convolution): forward, backward to the input, backward to the weights; achieved
  GFLOP/s = 2 * MACs / time (direct-convolution MACs, the FLOPs every implementation of the same network does);
* a Winograd F(2x2, 3x3) convolution written with PyTorch ops (tile transforms as strided adds, then 16
  batched GEMMs): 2.25x fewer multiplications than direct convolution, checked against ``F.conv2d`` in float64;
  forward only, with its three parts timed (input transform, GEMMs, output transform).

Process CPU time, the median of ``--repeats`` calls after one warm-up. Prints a Markdown table; ``--out FILE``
also writes it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

SHAPES = (  # (C_in, C_out, H=W): the CIFAR-10 UNet's 3x3 convolutions that dominate its step
    (128, 128, 32),
    (256, 256, 32),  # the 16->32 upsampling convolution
    (256, 256, 16),
    (256, 256, 8),
)
# Winograd F(2x2, 3x3) (Lavin & Gray 2016): Y = A^T [(G g G^T) * (B^T d B)] A over 4x4 input tiles, stride 2
G = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])


def winograd_input(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` (H, W even) -> ``V = B^T d B`` for every tile, laid out ``[16, C, B * H/2 * W/2]``."""
    b, c, h, w = x.shape
    nh, nw = h // 2, w // 2
    xp = F.pad(x, (1, 1, 1, 1))
    de = xp.view(b, c, h + 2, nw + 1, 2).permute(4, 0, 1, 2, 3).contiguous()  # even / odd columns, unit stride
    ev, od = de[0], de[1]
    e = (ev[..., :nw], od[..., :nw], ev[..., 1:], od[..., 1:])  # tile columns 0..3
    cols = (e[0] - e[2], e[1] + e[2], e[2] - e[1], e[1] - e[3])
    v = torch.empty(4, 4, c, b, nh, nw, dtype=x.dtype)
    vp = v.permute(0, 1, 3, 2, 4, 5)
    for j, t in enumerate(cols):
        d = [t[:, :, r : r + 2 * nh : 2] for r in range(4)]  # tile rows 0..3
        torch.sub(d[0], d[2], out=vp[0, j])
        torch.add(d[1], d[2], out=vp[1, j])
        torch.sub(d[2], d[1], out=vp[2, j])
        torch.sub(d[1], d[3], out=vp[3, j])
    return v.view(16, c, b * nh * nw)


def winograd_weight(w: torch.Tensor) -> torch.Tensor:
    """``[K, C, 3, 3]`` -> ``U = G g G^T``, ``[16, K, C]``."""
    return torch.einsum("ai,kcij,bj->abkc", G.to(w.dtype), w, G.to(w.dtype)).reshape(16, *w.shape[:2])


def winograd_output(m: torch.Tensor, b: int, k: int, nh: int, nw: int) -> torch.Tensor:
    """``[16, K, B * nh * nw]`` -> ``Y = A^T m A`` interleaved into ``[B, K, 2 nh, 2 nw]``."""
    mm = m.view(4, 4, k, b, nh, nw).permute(0, 1, 3, 2, 4, 5)
    rows = (mm[0] + mm[1] + mm[2], mm[1] - mm[2] - mm[3])
    y = torch.empty(b, k, nh, 2, nw, 2, dtype=m.dtype)
    for a, r in enumerate(rows):
        torch.add(r[0] + r[1], r[2], out=y[:, :, :, a, :, 0])
        torch.sub(r[1] - r[2], r[3], out=y[:, :, :, a, :, 1])
    return y.view(b, k, 2 * nh, 2 * nw)


def winograd_conv3x3(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Same as ``F.conv2d(x, w, padding=1)`` (stride 1, even H and W)."""
    b, _, h, wd = x.shape
    m = torch.bmm(winograd_weight(w), winograd_input(x))
    return winograd_output(m, b, w.shape[0], h // 2, wd // 2)


def cpu_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return max(statistics.median(times), 1e-9)


def measure(c: int, k: int, h: int, batch: int, repeats: int) -> str:
    """One table row: a ``c -> k`` 3x3 convolution on ``h x h`` images."""
    cb = torch.ops.aten.convolution_backward
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, c, h, h, generator=gen)
    w = torch.randn(k, c, 3, 3, generator=gen) / (9 * c) ** 0.5
    g = torch.randn(batch, k, h, h, generator=gen)
    exact = F.conv2d(x.double(), w.double(), padding=1)
    err_direct = (F.conv2d(x, w, padding=1).double() - exact).abs().max().item()
    err_wino = (winograd_conv3x3(x, w).double() - exact).abs().max().item()
    gflop = 2 * batch * h * h * c * k * 9 / 1e9

    def bwd(mask):
        return lambda: cb(g, x, w, [k], [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)

    fwd = cpu_time(lambda: F.conv2d(x, w, padding=1), repeats)
    bin_ = cpu_time(bwd([True, False, False]), repeats)
    bw = cpu_time(bwd([False, True, False]), repeats)
    wino = cpu_time(lambda: winograd_conv3x3(x, w), repeats)
    u, v = winograd_weight(w), winograd_input(x)
    m = torch.bmm(u, v)
    t_in = cpu_time(lambda: winograd_input(x), repeats)
    t_mm = cpu_time(lambda: torch.bmm(u, v), repeats)
    t_out = cpu_time(lambda: winograd_output(m, batch, k, h // 2, h // 2), repeats)
    return (
        f"| {c}->{k}, {h}x{h} | {gflop:.2f} | {fwd * 1e3:.1f} ({gflop / fwd:.0f}) | {bin_ * 1e3:.1f} "
        f"({gflop / bin_:.0f}) | {bw * 1e3:.1f} ({gflop / bw:.0f}) | {wino * 1e3:.1f} ({wino / fwd:.2f}x) "
        f"| {t_in * 1e3:.1f} / {t_mm * 1e3:.1f} / {t_out * 1e3:.1f} | {err_direct:.1e} / {err_wino:.1e} |"
    )


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="batch 2, the two smallest shapes, 1 repeat")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    batch, repeats = (2, 1) if args.quick else (args.batch, args.repeats)
    shapes = SHAPES[2:] if args.quick else SHAPES
    rows = []
    for c, k, h in shapes:
        rows.append(measure(c, k, h, batch, repeats))
        print(rows[-1], file=sys.stderr, flush=True)
    cmd = "python bench/bench_convs.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"## CPU 3x3 convolutions at batch {batch} ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"Command: `{cmd.strip()}`; torch {torch.__version__}, {torch.get_num_threads()} thread(s); process CPU "
        f"time, median of {repeats}.",
        "",
        "| conv | GFLOP (direct) | oneDNN fwd ms (GFLOP/s) | bwd input ms (GFLOP/s) | bwd weight ms (GFLOP/s) "
        "| Winograd F(2,3) fwd ms (vs oneDNN) | its input / GEMM / output ms | max error direct / Winograd |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "GFLOP/s counts direct-convolution FLOPs. Winograd does 2.25x fewer multiplications in its GEMMs; the "
        "error column is the max abs difference from a float64 convolution.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return text


if __name__ == "__main__":
    main()
