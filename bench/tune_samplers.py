"""Choose the stochastic samplers' settings by measurement: pooled FID of a grid of settings at a few network
evaluations, on tuning seeds disjoint from the frontier's.

    python bench/tune_samplers.py --run outputs/qs --out bench/results/tune_samplers_DATE.md
    python bench/tune_samplers.py --run outputs/qs --steps 10 20 --grid restart --seed-sets 100 101 102

Every configuration samples the same ``--seed-sets`` x ``--n`` seeds (set ``s`` is what ``sample.py seed=s``
draws) and is scored like the frontier (:mod:`ddpm.services.metrics.pooled`, the dataset's FID extractor and, on the
digits, extractor B beside it: :func:`ddpm.services.metrics.samples.all_extractors`): the FID of all sets pooled and the
per-set FIDs, per extractor. The default tuning seeds (100-102) are not the frontier's (0-2), so the
frontier measures the chosen settings on fresh seeds. The grid ``restart`` varies the restart interval
(``restart_t_min``, ``restart_t_max``, code indices), the passes ``restart_k`` and ``restart_share`` (the
fraction of the evaluations spent in restart passes); ``sde`` runs SDE-DPM-Solver++ and DPM-Solver++ for
reference. ``--full-chain`` adds the 1000-step chain on the same seeds (slow: T evaluations per image).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ddpm.core.config import SamplerConfig, compose  # noqa: E402
from ddpm.core.data import model_to_uint8  # noqa: E402
from ddpm.services.generate import condition, generate, seeds_for  # noqa: E402
from ddpm.services.loading import load_model, model_datamodule  # noqa: E402
from ddpm.services.metrics.pooled import featurise, pooled_scores  # noqa: E402
from ddpm.services.metrics.samples import all_extractors, load_extractor, reference_for  # noqa: E402

RESTART_GRID = {
    "restart_t_min": [20, 60],
    "restart_t_max": [200, 400],
    "restart_k": [1, 2],
    "restart_share": [0.2, 0.4],
}


def grid(name: str, steps: list[int], restart_grid: dict | None = None, etas: list[float] = ()) -> list[SamplerConfig]:
    out = []
    if name in ("sde", "all"):
        out += [SamplerConfig(name=n, steps=s) for n in ("dpm_solver", "dpm_solver_sde") for s in steps]
    out += [SamplerConfig(name="ddim", steps=s, params={"eta": e}) for s in steps for e in etas]
    if name in ("restart", "all"):
        restart_grid = restart_grid or RESTART_GRID
        keys = list(restart_grid)
        for s in steps:
            for values in itertools.product(*restart_grid.values()):
                params = dict(zip(keys, values))
                if params["restart_t_min"] < params["restart_t_max"]:
                    out.append(SamplerConfig(name="restart", steps=s, params=params))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a run directory or checkpoint")
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20])
    p.add_argument("--grid", choices=["restart", "sde", "all"], default="all")
    p.add_argument("--seed-sets", type=int, nargs="+", default=[100, 101, 102])
    p.add_argument("--n", type=int, default=512, help="images per seed set")
    p.add_argument("--batch-size", type=int, default=512)
    for key, values in RESTART_GRID.items():
        p.add_argument(f"--{key.removeprefix('restart_').replace('_', '-')}", dest=key, nargs="+",
                       type=float if key == "restart_share" else int, default=values, help=f"{key} values tried")
    p.add_argument("--ddim-eta", type=float, nargs="*", default=[], help="also DDIM with these eta")
    p.add_argument("--full-chain", action="store_true", help="also the full ancestral chain on the same seeds")
    p.add_argument("--final-sampler", action="store_true",
                   help="also the quickstart's final sampler (200 respaced steps, the posterior variance)")
    p.add_argument("--out", type=Path, default=None, help="Markdown table (and a .json beside it)")
    args = p.parse_args(argv)

    loaded = load_model(args.run, None, True)
    diffusion, T = loaded.diffusion, loaded.diffusion.num_timesteps
    cfg = compose("frontier", [f"ckpt_path={args.run}"])
    datamodule = model_datamodule(loaded, cfg.data, "the tuning")
    extractor = load_extractor(cfg.fid, datamodule.name, "cpu")
    ref = reference_for(cfg.fid, extractor, datamodule, cfg.paths.cache_dir, "cpu")
    scorers = all_extractors(cfg.fid, extractor, ref, datamodule, cfg.paths.cache_dir, "cpu")
    restart_grid = {k: getattr(args, k) for k in RESTART_GRID}
    samplers = ([SamplerConfig(name="ancestral")] if args.full_chain else []) + grid(args.grid, args.steps,
                                                                                       restart_grid, args.ddim_eta)
    if args.final_sampler:
        samplers.insert(0, SamplerConfig(name="respaced", steps=200, var_type="fixed_small"))
    rows = []
    for sampler in samplers:
        try:
            sampler.check(diffusion)
        except ValueError as e:  # a split that does not fit this step count
            print(f"skip {sampler.describe(T)}: {e}", flush=True)
            continue
        images, start = [], time.time()
        for s in args.seed_sets:
            parts = []
            for i in range(0, args.n, args.batch_size):
                j = min(i + args.batch_size, args.n)
                x = generate(loaded.model_fn(), diffusion, seeds_for(s, i, j), loaded.image_shape, sampler,
                             **condition(loaded.num_classes, i, j))  # a conditional model: balanced labels
                parts.append(model_to_uint8(x.float()).cpu().numpy())
            images.append(np.concatenate(parts))
        seconds = (time.time() - start) / (args.n * len(args.seed_sets))
        views = {e.name: pooled_scores([featurise(x, e) for x in images], r, e.name) for e, r, _ in scorers}
        pooled = views[extractor.name]
        row = {"sampler": sampler.describe(T), "fid": pooled["fid"], "fid_sets": pooled["fid_sets"],
               "is": pooled["is"], "seconds_per_image": seconds,
               "extractors": {k: {"fid": v["fid"], "fid_sets": v["fid_sets"]} for k, v in views.items()}}
        rows.append(row)
        print(json.dumps(row), flush=True)

    rows.sort(key=lambda r: (r["sampler"]["steps"], r["fid"]))
    names = [e.name for e, _, _ in scorers]
    lines = [f"Pooled FID ({', '.join(names)} features) over seed sets {args.seed_sets} x {args.n} images, "
             f"model {args.run}; `python bench/tune_samplers.py {' '.join(argv or sys.argv[1:])}` "
             f"({datetime.date.today()}, torch threads {torch.get_num_threads()}).", "",
             "| steps | sampler | settings | " + " | ".join(f"FID {n} (pooled) | FID {n} per set" for n in names)
             + " | IS |", "|---|---|---|" + "---|---|" * len(names) + "---|"]
    for r in rows:
        d = r["sampler"]
        settings = ", ".join(f"{k}={v}" for k, v in d.items() if k.startswith(("restart_", "eta", "var_type")) and v)
        cells = " | ".join(f"{v['fid']:.3f} | {', '.join(f'{f:.2f}' for f in v['fid_sets'])}"
                           for v in r["extractors"].values())
        lines.append(f"| {d['steps']} | {d['name']} | {settings or '-'} | {cells} | {r['is']:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
