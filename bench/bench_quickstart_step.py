"""One optimizer step of the digits quickstart: a plain PyTorch loop vs our Lightning step, before and after.

    python bench/bench_quickstart_step.py                          # torch's default threads (2 on 2 cores)
    python bench/bench_quickstart_step.py --profile --out bench/results/quickstart_step_<date>.md
    python bench/bench_quickstart_step.py --quick                  # seconds: a smoke test

Arms, alternated round by round in ABBA order in one process (slow drifts of a shared machine hit all alike);
per-step wall time is the median over rounds of each round's median interval between consecutive steps:

* **raw**: the lower bound, a plain PyTorch loop doing the quickstart's arithmetic and nothing else: a batch
  indexed from the in-memory train split, ``GaussianDiffusion.training_losses`` (L_simple), backward, global
  norm clipping at 1.0 (foreach), Adam (fused), the EMA ``torch._foreach_lerp_``. Its step is also split
  into those parts (timed one after the other, so the parts add up to the step).
* **Lightning, before**: ``python train.py``'s training loop with ``DiffusionModule`` as it was at ``--before``
  (git revision; default: the commit before issue 14's work) and that revision's digits recipe settings
  (single-tensor Adam, every diagnostic ``self.log``-ged at every step), at batch 64.
* **Lightning, now**: the same loop with the current module and recipe; at batch 64 (per-step comparison
  with *before*) and at the recipe's own batch when it differs (what ``python train.py`` runs).

The Lightning arms run ``ddpm.commands.training.train`` itself with the default config (its callbacks, logger and
progress bar), with validation, periodic grids, checkpoints and final samples switched off (those are not
per-step costs; the whole-run wall time is ``bench/bench_quickstart.py``'s). ``--profile`` adds Lightning's
``SimpleProfiler`` (time per hook of the current step) and a ``torch.profiler`` table of the raw step (time per
operator).
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import lightning as L  # noqa: E402

BEFORE = "265493c"  # main before issue 14 (max_time cap, single-tensor Adam, per-step logging)
# what conf/recipe/digits.yaml set at BEFORE that the current recipe changes
BEFORE_OVERRIDES = ["data.batch_size=64", "optim.fused=null", "model.ch=32", "optim.ema_decay=0.995"]
# no periodic work inside the timed window: no validation, grids, checkpoints, final samples or time cap
QUIET = [
    "trainer.max_time=null", "final_samples=0", "trainer.val_check_interval=1000000",
    "callbacks.sample_grid.every_n_steps=0", "callbacks.model_checkpoint.every_n_train_steps=1000000",
]
QUICK_MODEL = ["model.ch=8"]


class StepTimer(L.Callback):
    """``perf_counter`` at the end of every training batch."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter())


def module_at(rev: str) -> type:
    """``DiffusionModule`` as ``src/ddpm/module.py`` was at git revision ``rev``."""
    src = subprocess.run(["git", "show", f"{rev}:src/ddpm/module.py"], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout
    src = src.replace("from ddpm.core.diffusion.noise import derive_seed", "from ddpm.core.seeds import derive_seed")  # moved
    mod = types.ModuleType(f"ddpm_module_{rev}")
    mod.__file__ = f"{rev}:src/ddpm/module.py"
    exec(compile(src, mod.__file__, "exec"), mod.__dict__)
    cls = mod.DiffusionModule
    takes = inspect.signature(cls).parameters

    def build(**kwargs):  # train() passes today's constructor arguments; older modules took fewer
        module = cls(**{k: v for k, v in kwargs.items() if k in takes})
        if "config" not in takes:
            module.run_config = kwargs.get("config")  # how older modules received the seed and the NaN policy
        return module

    return build


def lightning_intervals(overrides: list[str], steps: int, warmup: int, module_cls: type | None = None,
                        profiler: str | None = None) -> tuple[list[float], object]:
    """Run ``train()`` for ``steps`` steps; the step-to-step intervals after ``warmup`` steps, and the trainer."""
    from ddpm.commands import training
    from ddpm.core.config import compose

    with tempfile.TemporaryDirectory(prefix="ddpm-step-") as tmp:
        extra = [f"paths.output_dir={tmp}", f"trainer.max_steps={steps}", *QUIET,
                 "+callbacks.step_timer._target_=bench_quickstart_step.StepTimer"]
        if profiler:
            extra.append(f"+trainer.profiler={profiler}")
        cfg = compose("train", overrides + extra)
        saved = training.DiffusionModule
        try:
            if module_cls is not None:
                training.DiffusionModule = module_cls
            _, objects = training.train(cfg)
        finally:
            training.DiffusionModule = saved
    trainer = objects["trainer"]
    times = next(c for c in trainer.callbacks if type(c).__name__ == "StepTimer").times
    return [b - a for a, b in zip(times[warmup:], times[warmup + 1 :])], trainer


PARTS = ("data", "forward + loss", "backward", "clip", "Adam", "EMA")


class RawLoop:
    """The quickstart's arithmetic as a plain loop (see the module docstring), on the composed config."""

    def __init__(self, overrides: list[str]) -> None:
        from hydra.utils import instantiate

        from ddpm.core.config import compose, to_container
        from ddpm.core.data import uint8_to_model
        from ddpm.core.module import DiffusionModule

        cfg = compose("train", [*overrides, "paths.output_dir=unused"])  # nothing is written
        run = to_container(cfg)
        datamodule = instantiate(cfg.data)
        self.images = uint8_to_model(datamodule.splits()["train"].images)
        self.batch = int(cfg.data.batch_size)
        m = DiffusionModule(run["model"], run["diffusion"], run["objective"], run["optim"], datamodule.image_shape,
                            **{k: run[k] for k in ("seed", "nan_policy", "nan_max_consecutive")})
        self.net, self.ema, self.diffusion = m.net, m.ema, m.diffusion
        self.opt = torch.optim.Adam(self.net.parameters(), lr=float(run["optim"]["lr"]), fused=True)
        self.params = list(self.net.parameters())
        self.ema_params = list(self.ema.parameters())
        self.decay = float(run["optim"]["ema_decay"])
        self.gen = torch.Generator().manual_seed(0)

    def step(self, parts: dict[str, float] | None = None) -> None:
        marks = [time.perf_counter()]
        x = self.images[torch.randint(0, self.images.shape[0], (self.batch,), generator=self.gen)]
        t = torch.randint(0, self.diffusion.num_timesteps, (self.batch,))
        marks.append(time.perf_counter())
        loss = self.diffusion.training_losses(self.net, x, t)["loss"].mean()
        marks.append(time.perf_counter())
        loss.backward()
        marks.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(self.params, 1.0, foreach=True)
        marks.append(time.perf_counter())
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
        with torch.no_grad():
            torch._foreach_lerp_(self.ema_params, self.params, 1.0 - self.decay)
        marks.append(time.perf_counter())
        if parts is not None:
            for name, a, b in zip(PARTS, marks, marks[1:]):
                parts.setdefault(name, []).append(b - a)  # type: ignore[attr-defined]

    def intervals(self, steps: int, warmup: int, parts: dict | None = None) -> list[float]:
        for _ in range(warmup):
            self.step()
        out = []
        for _ in range(steps - warmup):
            t0 = time.perf_counter()
            self.step(parts)
            out.append(time.perf_counter() - t0)
        return out


def hook_table(profiler, steps: int, top: int = 16) -> str:
    """The ``top`` actions of a Lightning ``SimpleProfiler`` by total time, per training step."""
    rows = sorted(((k, sum(v), len(v)) for k, v in profiler.recorded_durations.items()), key=lambda r: -r[1])
    lines = ["| action | ms per step | calls |", "|---|---|---|"]
    lines += [f"| `{name}` | {1000 * total / steps:.2f} | {calls} |" for name, total, calls in rows[:top]]
    return "\n".join(lines)


def raw_profile(loop: RawLoop, steps: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        loop.step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            loop.step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=80, help="steps per arm and round")
    p.add_argument("--warmup", type=int, default=15, help="steps left out at the start of each round")
    p.add_argument("--batches", type=lambda v: [int(b) for b in v.split(",")], default=[],
                   help="more batch sizes for the raw and current arms (64 and the recipe's are always there)")
    p.add_argument("--before", default=BEFORE, help="git revision of the 'before' module")
    p.add_argument("--profile", action="store_true", help="+ SimpleProfiler hooks and torch.profiler ops")
    p.add_argument("--quick", action="store_true", help="a tiny model, few steps: a smoke test")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.rounds, args.steps, args.warmup = 2, 8, 2
    from bench_cpu import emit

    from ddpm.core.config import compose

    base = QUICK_MODEL if args.quick else []
    recipe_batch = int(compose("train", base).data.batch_size)
    before_cls = module_at(args.before)
    arms: dict[str, tuple] = {  # label -> (kind, overrides, module class)
        "raw loop, batch 64": ("raw", [*base, "data.batch_size=64"], None),
        f"Lightning before ({args.before}), batch 64": ("lightning", [*BEFORE_OVERRIDES, *base], before_cls),
        "Lightning now, batch 64": ("lightning", [*base, "data.batch_size=64"], None),
    }
    for batch in sorted({recipe_batch, *args.batches} - {64}):
        ov = [*base, f"data.batch_size={batch}"]
        mark = " (python train.py)" if batch == recipe_batch else ""
        arms[f"raw loop, batch {batch}"] = ("raw", ov, None)
        arms[f"Lightning now, batch {batch}{mark}"] = ("lightning", ov, None)
    batches = {label: int(label.split("batch ")[1].split(" ")[0]) for label in arms}
    loops = {label: RawLoop(ov) for label, (kind, ov, _) in arms.items() if kind == "raw"}
    medians: dict[str, list[float]] = {label: [] for label in arms}
    parts: dict[str, dict[str, list[float]]] = {label: {} for label in loops}
    order = list(arms)
    for r in range(args.rounds):
        for label in order if r % 2 == 0 else order[::-1]:
            kind, ov, cls = arms[label]
            if kind == "raw":
                d = loops[label].intervals(args.steps, args.warmup, parts[label])
            else:
                d, _ = lightning_intervals(ov, args.steps, args.warmup, cls)
            medians[label].append(statistics.median(d))
            print(f"[bench] round {r} {label}: {1000 * medians[label][-1]:.1f} ms", file=sys.stderr, flush=True)

    ref = statistics.median(medians[order[0]])
    lines = [
        f"## Quickstart training step ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"Command: `python bench/bench_quickstart_step.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        f"Machine: {torch.get_num_threads()} torch threads, torch {torch.__version__}, lightning {L.__version__}. "
        f"{args.rounds} rounds x {args.steps} steps per arm (first {args.warmup} of each round left out), ABBA order.",
        "",
        "| arm | ms/step (median of rounds) | rounds | images/s | vs raw loop, batch 64 |",
        "|---|---|---|---|---|",
    ]
    for label, batch in batches.items():
        m = statistics.median(medians[label])
        rounds = ", ".join(f"{1000 * v:.1f}" for v in medians[label])
        lines.append(f"| {label} | **{1000 * m:.1f}** | {rounds} | {batch / m:.0f} | {m / ref:.2f}x |")
    for label, pt in parts.items():
        lines += ["", f"Parts of the {label} step (medians, ms): " + ", ".join(
            f"{name} {1000 * statistics.median(v):.2f}" for name, v in pt.items()) + "."]
    if args.profile:
        label = next(k for k in arms if k.startswith("Lightning now"))
        _, trainer = lightning_intervals(arms[label][1], args.steps, args.warmup, profiler="simple")
        lines += ["", f"### Lightning hooks, {label} (`trainer.profiler=simple`, {args.steps} steps; nested: a hook's "
                  "time includes the hooks it calls)", "", hook_table(trainer.profiler, args.steps)]
        first_raw = next(iter(loops))
        lines += ["", f"### Operators of the {first_raw} step (torch.profiler, {min(args.steps, 20)} steps)", "",
                  "```", raw_profile(loops[first_raw], min(args.steps, 20)).strip(), "```"]
    emit("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
