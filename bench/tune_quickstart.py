"""Tune the digits quickstart recipe: one training run, scored at several step counts, EMA decays and samplers.

    python bench/tune_quickstart.py NAME [OVERRIDE ...] [--eval-steps 2000,3000] [--ema 0.995,0.999]
        [--samplers respaced:100] [--final-samplers ddim:50,respaced:100:fixed_small] [--jsonl FILE]
                                                                # one run; one JSON line per score
    python bench/tune_quickstart.py --table FILE [--out MD]     # the Markdown table of all lines in FILE

A run is ``python train.py OVERRIDE ...`` (the default config is the quickstart, class-conditional since
2026-12-07: the rows of ``results/quickstart_tuning_2026-12-07`` and ``quickstart_confidence_2026-12-07`` are
unconditional, ``model.num_classes=null`` now; a conditional model is scored with balanced labels, as
``sample.py`` samples it) trained in this process up to
the largest ``--eval-steps``, without grids, checkpoints, validation or final samples. Training at a fixed step
budget is deterministic, so a short run's weights are those of a long run at the same step, and scores at
several budgets come from one run: ``EMASnapshots`` copies the EMA weights at each of ``--eval-steps``, and
also keeps EMAs with the other decays of ``--ema`` (updated after every optimizer step exactly as
``DiffusionModule.update_ema``; the EMA never feeds back into training). Every (step, decay, sampler) is then
scored like the quickstart's final samples: ``final_samples`` (256) images from the run's seeds, then
:func:`ddpm.services.metrics.digits_score.digits_scores` (FID under digits extractor A, ``ddpm-digits``, and B,
``ddpm-digits-b``).

Scores depend on the thread count only through the weights (1 and 2 intra-op threads train slightly different
models, see bench/README.md), so tuning runs one thread each (``cpujob``) and the chosen recipe is then
timed as a user runs it.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import lightning as L  # noqa: E402


class EMASnapshots(L.Callback):
    """EMA weights at given optimizer steps, for the module's decay and for ``decays`` kept alongside it."""

    def __init__(self, steps: list[int], decays: list[float]) -> None:
        self.steps = sorted(int(s) for s in steps)
        self.decays = [float(d) for d in decays]
        self.extra: dict[float, torch.nn.Module] = {}
        self.snapshots: dict[tuple[int, float], dict[str, torch.Tensor]] = {}

    def on_fit_start(self, trainer, pl_module) -> None:
        self.extra = {d: copy.deepcopy(pl_module.ema) for d in self.decays if d != pl_module.ema_decay}

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        net = list(pl_module.net.parameters())
        for decay, ema in self.extra.items():  # as DiffusionModule.update_ema
            torch._foreach_lerp_(list(ema.parameters()), net, 1.0 - decay)
            for b_ema, b_net in zip(ema.buffers(), pl_module.net.buffers()):
                b_ema.copy_(b_net)
        step = trainer.global_step
        if step in self.steps:
            emas = {pl_module.ema_decay: pl_module.ema, **self.extra}
            for decay, ema in emas.items():
                self.snapshots[(step, decay)] = {k: v.clone() for k, v in ema.state_dict().items()}


def parse_samplers(text: str) -> list[dict]:
    """``respaced:100,ddim:50,ancestral,respaced:100:fixed_small`` -> SamplerConfig keyword dicts."""
    out = []
    for item in text.split(","):
        name, *rest = item.split(":")
        kw: dict = {"name": name}
        if rest:
            kw["steps"] = int(rest[0])
        if len(rest) > 1:
            kw["var_type"] = rest[1]
        out.append(kw)
    return out


def score_equal_n(module, sampler, sets: int, set_seed: int, set_size: int = 181, guidance: float = 0.0) -> dict:
    """The equal-n protocol of ``bench/results/quickstart_equal_n_2026-12-06.md`` on TUNING seeds: ``sets`` draws of
    ``set_size`` images, draw k with the run seed ``set_seed + k`` (``sample.py seed=set_seed+k``; the evaluation
    uses seeds 0-7, so tune with ``set_seed`` >= 8), scored under both extractors beside the real held-out digits
    (:func:`ddpm.services.metrics.digits_score.against_real`). A class-conditional model samples balanced labels
    (``sample.py``'s default) with the guidance weight ``guidance``."""
    from ddpm.core.data import model_to_uint8 as to_uint8
    from ddpm.services.generate import condition, generate, seeds_for
    from ddpm.services.metrics.digits_score import against_real

    t0 = time.time()
    cond = condition(module.num_classes, 0, set_size, guidance_scale=guidance)
    draws = [to_uint8(generate(module.model_fn(use_ema=True), module.diffusion, seeds_for(set_seed + k, 0, set_size),
                               module.image_shape, sampler, **cond)).cpu() for k in range(sets)]
    sample_seconds = (time.time() - t0) / sets
    r = against_real(draws)
    out = {"set_size": set_size, "set_seeds": [set_seed, set_seed + sets - 1], "guidance": guidance if cond else None,
           "sample_seconds_per_set": round(sample_seconds, 1)}
    for prefix, tag in (("digits", "a"), ("digits_b", "b")):
        fids = [q[prefix]["fid"] for q in r["sets"]]
        out |= {f"median_{tag}": round(statistics.median(fids), 3), f"fid_{tag}_sets": [round(f, 3) for f in fids],
                f"real_{tag}": round(r["real"][prefix]["fid"], 3),
                f"confidence_{tag}": round(statistics.mean(q[prefix]["confidence"] for q in r["sets"]), 4),
                f"real_confidence_{tag}": round(r["real"][prefix]["confidence"], 4),
                f"entropy_{tag}": round(statistics.mean(q[prefix]["class_entropy"] for q in r["sets"]), 3),
                f"real_entropy_{tag}": round(r["real"][prefix]["class_entropy"], 3)}
    return out


def tune(name: str, overrides: list[str], eval_steps: list[int], decays: list[float], samplers: list[dict],
         jsonl: Path | None, final_samplers: list[dict] = (), sample_sets: int = 1, equal_n: int = 0,
         set_seed: int = 100, set_size: int = 181, guidance: list[float] = (0.0,)) -> list[dict]:
    from ddpm.commands.training import train
    from ddpm.core.config import SamplerConfig, compose
    from ddpm.core.data import model_to_uint8 as to_uint8
    from ddpm.services.generate import condition, generate, seeds_for
    from ddpm.services.metrics.digits_score import digits_scores

    rows = []
    with tempfile.TemporaryDirectory(prefix="ddpm-tune-") as tmp:
        base = [
            f"paths.output_dir={tmp}", f"trainer.max_steps={max(eval_steps)}", "trainer.max_time=null",
            "final_samples=0", "trainer.val_check_interval=1000000", "callbacks.sample_grid.every_n_steps=0",
            "callbacks.model_checkpoint.every_n_train_steps=1000000", "~callbacks.progress_bar",
            "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
            "+callbacks.ema_snapshots._target_=tune_quickstart.EMASnapshots",
            f"+callbacks.ema_snapshots.steps=[{','.join(map(str, eval_steps))}]",
            f"+callbacks.ema_snapshots.decays=[{','.join(map(str, decays))}]",
        ]
        cfg = compose("train", base + overrides)
        start = time.time()
        metrics, objects = train(cfg)
        fit_seconds = time.time() - start
        module = objects["module"]
        snaps = next(c for c in objects["trainer"].callbacks if type(c).__name__ == "EMASnapshots").snapshots
        n = int(compose("train", overrides).get("final_samples", 256))
        seeds = seeds_for(int(cfg.seed), 0, n * sample_sets)  # set 0: the quickstart's own final samples
        last = max(eval_steps)
        def emit(row: dict) -> None:
            rows.append(row)
            print(json.dumps(row), flush=True)
            if jsonl:
                with open(jsonl, "a") as f:
                    f.write(json.dumps(row) + "\n")

        for (step, decay), state in sorted(snaps.items()):
            module.ema.load_state_dict(state)
            for kw in samplers + (final_samplers if (step, decay) == (last, module.ema_decay) else []):
                sampler = SamplerConfig.from_node(kw)
                head = {"name": name, "overrides": overrides, "step": step, "ema_decay": decay,
                        "sampler": sampler.label + (f"/{kw['var_type']}" if kw.get("var_type") else ""),
                        "fit_seconds": round(fit_seconds, 1), "final_step": int(metrics["global_step"]),
                        "threads": torch.get_num_threads(), "final_loss": metrics.get("train/loss")}
                if equal_n:
                    for w in guidance:
                        emit(head | score_equal_n(module, sampler, equal_n, set_seed, set_size, w))
                    continue
                t0 = time.time()
                images = generate(module.model_fn(use_ema=True), module.diffusion, seeds, module.image_shape, sampler,
                                  **condition(module.num_classes, 0, len(seeds)))
                sample_seconds = (time.time() - t0) / sample_sets
                both = [digits_scores(to_uint8(chunk).cpu()) for chunk in images.split(n)]
                qs = [q["digits"] for q in both]  # extractor A (ddpm-digits); B (ddpm-digits-b) in fid_b
                fids = [q["fid"] for q in qs]
                emit(head | {
                    "fid": round(fids[0], 3), "confidence": round(qs[0]["confidence"], 4),
                    "class_entropy": round(qs[0]["class_entropy"], 3), "n": qs[0]["n"],
                    "fid_sets": [round(f, 3) for f in fids],
                    "fid_b": round(both[0]["digits_b"]["fid"], 3),
                    "fid_b_sets": [round(q["digits_b"]["fid"], 3) for q in both],
                    "entropy_sets": [round(q["class_entropy"], 3) for q in qs],
                    "sample_seconds": round(sample_seconds, 1),
                })
    return rows


def equal_n_table(rows: list[dict], baseline: str) -> str:
    """The equal-n rows (``--equal-n``): per run, median FID over the draws under A and B, the real held-out
    digits' one draw beside them, confidence and class entropy, and each run paired draw by draw (same seeds)
    with ``baseline``'s row of the same step, EMA, sampler and guidance under the verdict rule."""
    from ddpm.services.metrics.pooled import draws_interval, verdict

    key = lambda r: (r["step"], r["ema_decay"], r["sampler"], r.get("guidance"))  # noqa: E731
    base = {key(r): r for r in rows if r["name"] == baseline}
    real = rows[0]
    lines = [f"Draws of {real['set_size']} images, run seeds {real['set_seeds'][0]}-{real['set_seeds'][1]} (tuning "
             f"seeds; the evaluation uses 0-7). The real held-out digits' one draw (the test split): FID "
             f"{real['real_a']:.2f} / {real['real_b']:.2f}, confidence {real['real_confidence_a']:.3f}, entropy "
             f"{real['real_entropy_a']:.3f} bits. Paired: the run's FID minus `{baseline}`'s, draw by draw, mean "
             "and 95% interval over the draws; the verdict rule on \"lower than the baseline\".", "",
             "| run | overrides | step | EMA | w | median FID A / B | minus baseline A | minus baseline B | verdict "
             "| confidence A | entropy A |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b, paired, cells = base.get(key(r)), {}, ["-", "-", "-"]
        if b is not None and b is not r:
            for tag, prefix in (("a", "digits"), ("b", "digits_b")):
                d = [x - y for x, y in zip(r[f"fid_{tag}_sets"], b[f"fid_{tag}_sets"])]
                paired[prefix] = (statistics.mean(d), draws_interval(d))
            cells = [f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}]" for m, (lo, hi) in paired.values()]
            cells.append(verdict(paired, -1))
        w = "-" if r.get("guidance") is None else f"{r['guidance']:g}"
        lines.append(f"| {r['name']} | `{' '.join(r['overrides']) or '-'}` | {r['step']} | {r['ema_decay']} | {w} | "
                     f"{r['median_a']:.2f} / {r['median_b']:.2f} | {' | '.join(cells)} | {r['confidence_a']:.3f} | "
                     f"{r['entropy_a']:.3f} |")
    return "\n".join(lines) + "\n"


def table(jsonl: Path, baseline: str | None = None) -> str:
    rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    if rows and "median_a" in rows[0]:
        return equal_n_table([r for r in rows if "median_a" in r], baseline or rows[0]["name"])
    lines = [
        "| run | overrides | step | EMA | sampler | FID A (n=256), seeds 0-255 | FID A mean +- sd over sets (sets) "
        "| FID B, seeds 0-255 | entropy | s/step (1 thread) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fids = r.get("fid_sets", [r["fid"]])
        spread = (f"{statistics.mean(fids):.2f} +- {statistics.stdev(fids):.2f} ({len(fids)})" if len(fids) > 1
                  else "-")
        fid_b = f"{r['fid_b']:.2f}" if "fid_b" in r else "-"  # lines written before extractor B: none
        lines.append(
            f"| {r['name']} | `{' '.join(r['overrides']) or '-'}` | {r['step']} | {r['ema_decay']} | {r['sampler']} "
            f"| {r['fid']:.2f} | {spread} | {fid_b} | {r['class_entropy']:.2f} "
            f"| {r['fit_seconds'] / r['final_step']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name", nargs="?", help="a label for this run")
    p.add_argument("overrides", nargs="*", help="train.py overrides (the recipe under test)")
    p.add_argument("--eval-steps", default="2000,3000")
    p.add_argument("--ema", default="0.995", help="EMA decays to score (the recipe's own is always kept)")
    p.add_argument("--samplers", default="respaced:100", help="scored at every (step, decay)")
    p.add_argument("--final-samplers", default="", help="also scored at the last step with the recipe's decay")
    p.add_argument("--sample-sets", type=int, default=1,
                   help="score this many disjoint sets of final_samples seeds (set 0 is the quickstart's)")
    p.add_argument("--equal-n", type=int, default=0, metavar="K",
                   help="score instead K draws of --set-size images with run seeds --set-seed+k (the equal-n protocol)")
    p.add_argument("--set-seed", type=int, default=100, help="the first draw's run seed (evaluation uses 0-7)")
    p.add_argument("--set-size", type=int, default=181)
    p.add_argument("--guidance", default="0", help="a class-conditional run: the guidance weights w to score")
    p.add_argument("--jsonl", type=Path, default=None, help="append one JSON line per score")
    p.add_argument("--table", type=Path, default=None, help="print the table of a --jsonl file and exit")
    p.add_argument("--baseline", default=None, help="--table of equal-n rows: the run each row is paired with")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if args.table:
        from bench_cpu import emit

        emit(table(args.table, args.baseline), args.out)
        return
    if not args.name:
        p.error("a run name is needed (or --table FILE)")
    tune(args.name, args.overrides, [int(s) for s in args.eval_steps.split(",")],
         [float(d) for d in args.ema.split(",")], parse_samplers(args.samplers), args.jsonl,
         parse_samplers(args.final_samplers) if args.final_samplers else [], args.sample_sets, args.equal_n,
         args.set_seed, args.set_size, [float(w) for w in args.guidance.split(",")])


if __name__ == "__main__":
    main()
