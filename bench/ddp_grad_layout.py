"""Two-process gloo DDP training steps of the quickstart UNet: 1x1 convs as plain ``nn.Conv2d`` (before issue 29)
vs the network's own 1x1 convs (``ddpm.core.nets.layers.Conv1x1``, whose weight gradients keep the weights' strides).

    python bench/ddp_grad_layout.py                        # the quickstart: batch 256 = 128 per rank, ch=32
    python bench/ddp_grad_layout.py --out bench/results/ddp_grad_layout_<date>.md
    python bench/ddp_grad_layout.py --quick                # seconds: a smoke test

Both arms run in the same two processes (one thread each, as ``trainer=ddp trainer.devices=2`` on a 2-core CPU),
alternated round by round in ABBA order; each arm has its own DDP wrapper around the same initial weights. A step
is ``DiffusionModule``'s arithmetic without Lightning: L_simple on a digits-shaped batch, backward (DDP's
all-reduce), clipping at 1.0, Adam. Reported per arm: the median over rounds of the median step time, whether
torch warned "Grad strides do not match bucket view strides" (it warns once per process: the new arm runs first),
and the number of parameters whose gradient strides differ from the parameter's after a step (each one a strided
copy into and out of DDP's bucket at every step). The outputs of both arms are checked to be bitwise equal.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ddpm.core.diffusion import GaussianDiffusion  # noqa: E402
from ddpm.core.nets import UNet  # noqa: E402
from ddpm.core.nets.layers import Conv1x1  # noqa: E402

STRIDES_WARNING = "Grad strides do not match bucket view strides"


def plain_convs(net: nn.Module) -> nn.Module:
    """``net`` with every 1x1 conv a plain ``nn.Conv2d`` again (same parameters): the layout before issue 29."""
    for m in net.modules():
        if type(m) is Conv1x1:
            m.__class__ = nn.Conv2d
    return net


def worker(rank: int, world: int, args: argparse.Namespace, init_file: str, results: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    base = UNet(in_channels=1, out_channels=1, resolution=8, ch=args.ch, ch_mult=(1, 2), num_res_blocks=1,
                attn_resolutions=(4,), dropout=0.0)
    diffusion = GaussianDiffusion.from_config("linear", 1000, "eps", "fixed_large", "mse")
    arms = {"after (Conv1x1)": copy.deepcopy(base), "before (nn.Conv2d)": plain_convs(copy.deepcopy(base))}
    ddp = {name: nn.parallel.DistributedDataParallel(net) for name, net in arms.items()}
    opts = {name: torch.optim.Adam(net.parameters(), lr=1e-4) for name, net in arms.items()}
    per_rank = args.batch // world
    gen = torch.Generator().manual_seed(1 + rank)
    batches = [torch.rand(per_rank, 1, 8, 8, generator=gen) * 2 - 1 for _ in range(args.steps)]
    ts = [torch.randint(0, 1000, (per_rank,), generator=gen) for _ in range(args.steps)]

    def step(name: str, i: int) -> None:
        model, opt = ddp[name], opts[name]
        torch.manual_seed(i)
        loss = diffusion.training_losses(model, batches[i], ts[i])["loss"].mean()
        opt.zero_grad(set_to_none=False)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()

    warned: dict[str, bool] = {}
    times: dict[str, list[float]] = {name: [] for name in arms}
    for name in arms:  # warm-up, and the warning (once per process: the new arm first)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for i in range(2):
                step(name, i)
        warned[name] = any(STRIDES_WARNING in str(w.message) for w in caught)
    mismatched = {name: sum(p.grad is not None and p.grad.stride() != p.stride() for p in net.parameters())
                  for name, net in arms.items()}
    names = list(arms)
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            dist.barrier()
            stamps = [time.perf_counter()]
            for i in range(args.steps):
                step(name, i)
                stamps.append(time.perf_counter())
            times[name].append(statistics.median(b - a for a, b in zip(stamps, stamps[1:])))
    with torch.no_grad():  # the same network either way: bitwise the same outputs on the same weights
        same = copy.deepcopy(arms[names[0]])
        plain = plain_convs(copy.deepcopy(same))
        x, t = batches[0], ts[0]
        identical = torch.equal(same(x, t), plain(x, t))
    if rank == 0:
        results.update(times=times, warned=warned, mismatched=mismatched, identical=identical)
    dist.destroy_process_group()


def table(results: dict, args: argparse.Namespace) -> str:
    rows = [f"2-process gloo DDP, quickstart UNet (ch={args.ch}, 8x8), global batch {args.batch} "
            f"({args.batch // 2} per rank), 1 thread per process; median over {args.rounds} ABBA rounds of the "
            f"median of {args.steps} steps; torch {torch.__version__}", "",
            "| arm | ms per step | torch warned grad strides | parameters with mismatched grad strides |",
            "|---|---|---|---|"]
    for name, ts in results["times"].items():
        rows.append(f"| {name} | {1000 * statistics.median(ts):.1f} | {'yes' if results['warned'][name] else 'no'} | "
                    f"{results['mismatched'][name]} |")
    before, after = (statistics.median(results["times"][n]) for n in ("before (nn.Conv2d)", "after (Conv1x1)"))
    rows += ["", f"after / before: {after / before:.3f}; outputs bitwise equal: {results['identical']}"]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256, help="global batch (the quickstart's 256)")
    parser.add_argument("--ch", type=int, default=32, help="UNet base width (the quickstart's 32)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per arm and round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--quick", action="store_true", help="a smoke test: tiny width, 2 rounds of 2 steps")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    if args.quick:
        args.ch, args.batch, args.steps, args.rounds = 8, 64, 2, 2
    with tempfile.TemporaryDirectory() as tmp, mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(worker, args=(2, args, os.path.join(tmp, "init"), results), nprocs=2, join=True)
        text = table(dict(results), args)
    print(text)
    if args.out:
        args.out.write_text(f"`python bench/ddp_grad_layout.py {' '.join(argv or sys.argv[1:])}`\n\n{text}\n")
    return text


if __name__ == "__main__":
    main()
