"""Where and how the evaluation applications run: Lightning Fabric on the configured devices, torch.compile
for sampling, a progress bar, and the provenance of a result (library versions, git commit)."""

from __future__ import annotations

import datetime
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch


def device_of(name: str) -> torch.device:
    """The ``device`` setting of the tools: ``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda``, ``cuda:1``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_fabric(trainer_cfg: Any):
    """A Lightning Fabric for ``trainer_cfg`` (accelerator, devices, num_nodes, strategy, precision,
    dist_timeout_s); several processes (CPU: gloo) are started by ``fabric.launch()``."""
    from lightning.fabric import Fabric
    from lightning.fabric.strategies import DDPStrategy

    t = trainer_cfg
    multi = not (isinstance(t.devices, int) and t.devices * int(t.num_nodes) == 1)
    strategy = t.strategy
    if strategy in ("auto", "ddp") and multi:
        strategy = DDPStrategy(timeout=datetime.timedelta(seconds=int(t.dist_timeout_s)))
    return Fabric(accelerator=t.accelerator, devices=t.devices, num_nodes=int(t.num_nodes), strategy=strategy,
                  precision=str(t.precision))


def launch(trainer_cfg: Any):
    """:func:`make_fabric`, launched: in each of its processes, the Fabric of that rank."""
    fabric = make_fabric(trainer_cfg)
    fabric.launch()
    return fabric


# What torch.distributed raises in a surviving process when a peer process died (gloo: the socket closed; NCCL:
# the communicator aborted or the watchdog saw the peer go).
_PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "remote process exited",
              "NCCL communicator was aborted", "Connection refused")


def peer_lost(e: BaseException) -> bool:
    """Whether ``e`` (or an exception it came from) says that another process of a distributed job died."""
    import torch.distributed as dist

    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, getattr(dist, "DistNetworkError", ())) or any(p in str(e) for p in _PEER_LOST):
            return True
        e = e.__cause__ or e.__context__
    return False


def dead_ranks(trainer: Any, wait_s: float = 3.0) -> str:
    """Which other process of ``trainer``'s run died, as far as this one can know: the processes this one started
    (Lightning starts ranks 1.. from rank 0) with how each ended; for the others, the one other rank of a
    2-process run; else "rank unknown"."""
    import signal
    import time

    procs = list(getattr(trainer.strategy.launcher, "procs", None) or [])
    if procs:
        deadline = time.time() + wait_s
        while time.time() < deadline and all(p.poll() is None for p in procs):
            time.sleep(0.05)
        first = trainer.node_rank * trainer.num_devices
        dead = []
        for local, p in enumerate(procs, start=1):
            code = p.poll()
            if code is not None and code != 0:
                how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
                dead.append(f"rank {first + local}, {how}")
        if dead:
            return "; ".join(dead)
    if trainer.world_size == 2:
        return f"rank {1 - trainer.global_rank}"
    return "rank unknown: see the other processes' output"


def compile_for_sampling(net: torch.nn.Module, backend: str = "inductor", mode: str | None = None,
                         freeze: bool = True) -> torch.nn.Module:
    """``torch.compile`` a network that only runs without autograd (sampling).

    ``freeze`` (inductor only) treats the weights as constants: on CPU the convolutions get prepacked oneDNN
    weights (~10% faster no-grad forwards of the CIFAR-10 UNet, bench/README.md). ``mode="reduce-overhead"``
    uses CUDA graphs on GPUs. Numerics agree with the eager network to float rounding, not bitwise.
    """
    if freeze and backend == "inductor":
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # read when the first call compiles; a sampling process has no training
    return torch.compile(net, backend=backend, mode=mode)  # type: ignore[return-value]


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("ddpm", "torch", "lightning", "torch-fidelity", "torchmetrics", "numpy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    """The commit of the code that runs (``+dirty`` with uncommitted changes), or ``None`` outside a git
    checkout or without git."""
    root = Path(__file__).resolve().parents[3]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def provenance() -> dict[str, Any]:
    """What produced a result: library versions, the git commit, and the time (UTC)."""
    return {
        "versions": library_versions(),
        "git_commit": git_commit(),
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


class Progress:
    """Progress of ``total`` units (images, steps) with rate and ETA, only when ``enabled``.

    On a terminal a tqdm bar; otherwise (a log file, a batch job, a test) a plain line at a tenth of the work
    at most every 5 seconds, and one at the end, so the output holds a handful of lines instead of a bar
    redrawn hundreds of times.
    """

    def __init__(self, total: int, enabled: bool, desc: str, unit: str = "img", initial: int = 0):
        import sys
        import time

        self.total, self.desc, self.unit, self.n = int(total), desc, unit, int(initial)
        self.enabled = bool(enabled) and self.total > 0
        self.bar = None
        self.start, self.start_n, self.next_report = time.time(), self.n, 0
        self.last_line = self.start
        self.postfix = ""
        if self.enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, initial=self.n, unit=unit, desc=desc, dynamic_ncols=True,
                            smoothing=0.1)
        elif self.enabled:
            self.next_report = self._next_tenth(self.n)

    def _next_tenth(self, n: int) -> int:
        tenth = max(1, self.total // 10)
        return (n // tenth + 1) * tenth

    def update(self, n: int = 1, postfix: str = "") -> None:
        self.set(self.n + n, postfix)

    def set(self, n: int, postfix: str = "") -> None:
        """Move to ``n`` done (e.g. the global step)."""
        import time

        if not self.enabled or n == self.n:
            return
        delta, self.n, self.postfix = n - self.n, n, postfix or self.postfix
        if self.bar is not None:
            self.bar.update(delta)
            if postfix:
                self.bar.set_postfix_str(postfix, refresh=False)
            return
        now = time.time()
        if self.n >= self.total or (self.n >= self.next_report and now - self.last_line >= 5.0):
            self.last_line = now
            elapsed = now - self.start
            rate = (self.n - self.start_n) / elapsed if elapsed > 0 else float("nan")
            eta = (self.total - self.n) / rate if rate > 0 else float("nan")
            extra = f", {self.postfix}" if self.postfix else ""
            print(f"[ddpm] {self.desc}: {self.n}/{self.total} {self.unit}, {rate:.2f} {self.unit}/s, "
                  f"ETA {_clock(eta)}{extra}", flush=True)
            self.next_report = self._next_tenth(self.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _clock(seconds: float) -> str:
    import math

    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
