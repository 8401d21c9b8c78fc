"""Two quickstart checkpoints on the equal-n protocol's TUNING seeds, paired draw by draw and pooled by groups.

    python bench/quickstart_pooled.py NEW_RUN OLD_RUN [--sets 24] [--set-seed 100] [--group 8] [--out MD]

Each run draws ``--sets`` sets of 181 images with its own final sampler (200 respaced steps, the posterior
variance), set k with the run seed ``--set-seed + k`` (``sample.py seed=...``; the evaluation uses 0-7). Then,
under both digits extractors and the verdict rule on "NEW scores lower than OLD":

* per set: FID(NEW) - FID(OLD) at n=181, over the sets (FID at that n is mostly the class mix's binomial noise);
* pooled: the FID of each group of ``--group`` consecutive sets as one sample (8 x 181 = 1448 images), paired
  over the groups, as the Table 2 report pools its seed sets.

How bench/results/quickstart_tuning_2026-12-07.md chose the quickstart's schedule and lr decay.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def draws(run: str, sets: int, set_seed: int, n: int = 181, steps: int = 200) -> torch.Tensor:
    """uint8 ``[sets, n, 1, 8, 8]``."""
    from ddpm.core.config import SamplerConfig
    from ddpm.core.data import model_to_uint8
    from ddpm.services.generate import condition, generate, seeds_for
    from ddpm.services.loading import load_checkpoint_model

    m = load_checkpoint_model(run)
    sampler = SamplerConfig(name="respaced", steps=steps, var_type="fixed_small")
    cond = condition(m.num_classes, 0, n)  # a conditional model: balanced labels, as sample.py
    return torch.stack([model_to_uint8(generate(m.model_fn(), m.diffusion, seeds_for(set_seed + k, 0, n),
                                                m.image_shape, sampler, **cond)) for k in range(sets)])


def compare(new: torch.Tensor, old: torch.Tensor, group: int) -> dict:
    """Each set's features extracted once per extractor; the per-set and pooled FIDs both come from them."""
    import numpy as np

    from ddpm.services.metrics.digits_score import DIGITS_SCORERS, digits_fid, digits_train_ref_stats
    from ddpm.services.metrics.features import extract_all
    from ddpm.services.metrics.pooled import draws_interval, verdict

    out: dict = {"per_set": {}, "pooled": {}}
    for prefix, cls in DIGITS_SCORERS.items():
        ext = cls()
        ref = digits_train_ref_stats(ext)
        feats = {arm: [np.asarray(extract_all(s, ext, device="cpu")[0], np.float64) for s in sets]
                 for arm, sets in (("new", new), ("old", old))}
        for kind, size in (("per_set", 1), ("pooled", group)):
            fids = {arm: [digits_fid(np.concatenate(f[i:i + size]), ref) for i in range(0, len(f) - size + 1, size)]
                    for arm, f in feats.items()}
            d = [x - y for x, y in zip(fids["new"], fids["old"])]
            out[kind][prefix] = {**fids, "mean": statistics.mean(d), "interval": draws_interval(d),
                                 "lower": sum(x < 0 for x in d), "of": len(d)}
    for kind in ("per_set", "pooled"):
        out[kind]["verdict"] = verdict({p: (v["mean"], v["interval"]) for p, v in out[kind].items()}, -1)
    return out


def report(res: dict, args) -> str:
    names = {"digits": "A", "digits_b": "B"}
    lines = [f"NEW = `{args.new}`, OLD = `{args.old}`; {args.sets} sets of {args.n}, run seeds {args.set_seed}-"
             f"{args.set_seed + args.sets - 1}; pooled: groups of {args.group} sets.", "",
             "| comparison | extractor | NEW: median (mean) | OLD: median (mean) | NEW - OLD, mean [95% interval] | "
             "NEW lower in |", "|---|---|---|---|---|---|"]
    for kind in ("per_set", "pooled"):
        for prefix, v in res[kind].items():
            if prefix == "verdict":
                continue
            lo, hi = v["interval"]
            lines.append(f"| {kind.replace('_', ' ')} | {names[prefix]} | {statistics.median(v['new']):.2f} "
                         f"({statistics.mean(v['new']):.2f}) | {statistics.median(v['old']):.2f} "
                         f"({statistics.mean(v['old']):.2f}) | {v['mean']:+.2f} [{lo:+.2f}, {hi:+.2f}] | "
                         f"{v['lower']} of {v['of']} |")
    lines += ["", f"Verdict on \"NEW scores lower than OLD\": per set **{res['per_set']['verdict']}**, pooled "
              f"**{res['pooled']['verdict']}**."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("new")
    p.add_argument("old")
    p.add_argument("--sets", type=int, default=24)
    p.add_argument("--set-seed", type=int, default=100)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--n", type=int, default=181, help="images per set (the held-out test split's size)")
    p.add_argument("--steps", type=int, default=200, help="respaced sampling steps (the quickstart's 200)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.sets < 2 * args.group:
        p.error(f"--sets {args.sets} gives fewer than two groups of --group {args.group}")
    new, old = (draws(run, args.sets, args.set_seed, args.n, args.steps) for run in (args.new, args.old))
    text = report(compare(new, old, args.group), args)
    print(text, end="")
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
