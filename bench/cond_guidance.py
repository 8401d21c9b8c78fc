"""The conditional quickstart and the trade-off of classifier-free guidance (issue 28), in one run.

    flock /tmp/ddpm-cpu.lock python bench/cond_guidance.py --out bench/results/cond_guidance_DATE.md

1. trains the unconditional quickstart (``python train.py model.num_classes=null``) and the conditional one (``python
   train.py model.num_classes=10``, the quickstart's default since 2026-12-07), same recipe and step budget, one
   after the other, and times both (``fit_seconds`` of their metrics.json and the process wall time); ``--uncond RUN
   --cond RUN`` reuses finished runs instead;
2. samples ``--sets`` seed sets of ``--n`` images (seed k = set k, balanced labels: image i is class i mod 10) at
   each guidance weight w of ``--w`` with the quickstart's own final sampler (200 respaced ancestral steps,
   posterior variance), and the unconditional model on the same seeds;
3. scores them with both digits extractors (A, the project's, and B, the independent one): class accuracy (the
   share of images each classifier assigns to their requested class), on the pooled sets and per set; FID and
   KID against the train split, FID against the class-balanced train split, IS (10 splits), mean confidence.
   Network evaluations per image: 200 at w = 0, 400 at w > 0 (one batched pass of 2N images per step);
4. compares each w with the unconditional model on the same seeds: the paired FID difference under each
   extractor with the interval and the verdict rule of every other claim (:mod:`ddpm.services.metrics.pooled`).

The samples are kept under ``--work``/samples (``arr_0`` images, ``arr_1`` labels): rerunning with ``--uncond``
and ``--cond`` pointing at the finished runs rescores them without sampling.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


# the two arms' train.py overrides, both explicit (the quickstart's own default is the conditional one)
ARMS = {"uncond": ["model.num_classes=null"], "cond": ["model.num_classes=10"]}


def train(run: Path, extra: list[str]) -> dict:
    start = time.time()
    subprocess.run([sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={run}",
                    *extra], cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["process_seconds"] = round(time.time() - start, 1)
    return metrics


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/cond_guidance"))
    p.add_argument("--uncond", type=Path, default=None)
    p.add_argument("--cond", type=Path, default=None)
    p.add_argument("--sets", type=int, default=3)
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--w", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0, 4.0])
    p.add_argument("--num-boot", type=int, default=200)
    p.add_argument("--steps", type=int, default=200, help="respaced steps of the sampler (the quickstart's: 200)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    from ddpm.core.config import SamplerConfig
    from ddpm.core.data import model_to_uint8
    from ddpm.services.generate import class_labels, generate, seeds_for
    from ddpm.services.loading import load_model
    from ddpm.services.metrics.conditional import class_scores
    from ddpm.services.metrics.digits_score import DIGITS_SCORERS, digits_quality, digits_train_ref_stats
    from ddpm.services.metrics.fid import inception_score
    from ddpm.services.metrics.pooled import featurise, paired_bootstrap, verdict, verdict_interval

    runs = {}
    for name, extra in ARMS.items():
        given = getattr(args, name)  # --uncond / --cond: a finished run
        run = given or args.work / name
        runs[name] = {"run": run, "metrics": json.loads((run / "metrics.json").read_text()) if given
                      else train(run, extra)}
    sampler = SamplerConfig(name="respaced", steps=args.steps, var_type="fixed_small")  # the quickstart's final one
    extractors = {prefix: cls() for prefix, cls in DIGITS_SCORERS.items()}
    refs = {prefix: digits_train_ref_stats(e) for prefix, e in extractors.items()}
    samples_dir = args.work / "samples"
    samples_dir.mkdir(parents=True, exist_ok=True)
    rows, feats = [], {}
    configs = [("uncond", None)] + [("cond", w) for w in args.w]
    for name, w in configs:
        loaded = load_model(runs[name]["run"])
        sets, labels, secs = [], [], 0.0
        for k in range(args.sets):
            # the samples are kept (arr_0 images, arr_1 labels): a rerun rescores them without sampling
            path = samples_dir / f"{name}_w{w}_set{k}_n{args.n}.npz"
            y = class_labels("balanced", k, 0, args.n, 10)
            if not path.is_file():
                cond = {} if w is None else {"labels": y, "guidance_scale": w, "num_classes": 10}
                start = time.time()
                images = model_to_uint8(generate(loaded.model_fn(), loaded.diffusion, seeds_for(k, 0, args.n),
                                                 loaded.image_shape, sampler, **cond)).numpy()
                secs += time.time() - start
                np.savez(path, arr_0=images, arr_1=y.numpy())
            with np.load(path) as z:
                sets.append(z["arr_0"])
                labels.append(z["arr_1"])
        images, y = np.concatenate(sets), np.concatenate(labels)
        row = {"model": name, "w": w, "sample_seconds": round(secs, 1), "evals_per_image": args.steps * (2 if w else 1)}
        for prefix, extractor in extractors.items():
            feats[(name, w, prefix)] = per_set = [featurise(s, extractor) for s in sets]
            q = digits_quality(images, extractor=extractor, ref=refs[prefix])
            c = class_scores(images, y, extractor)
            logits = np.concatenate([f.logits for f in per_set])
            row[prefix] = {"fid": q["fid"], "kid": q.get("kid"), "class_kl": q.get("class_kl"),
                           "is": inception_score(logits, splits=10)[0], "confidence": q["confidence"],
                           "class_entropy": q["class_entropy"], "fid_balanced": c["fid_balanced"]}
            if w is not None:  # each set's accuracy from the logits already extracted
                row[prefix].update(accuracy=c["class_accuracy"],
                                   accuracy_sets=[float((f.logits.argmax(axis=1) == l).mean())
                                                  for f, l in zip(per_set, labels)])
        if w is not None:  # FID(cond at w) - FID(uncond), paired on the same seeds, under each extractor
            readings = {}
            for prefix in extractors:
                d = paired_bootstrap(feats[(name, w, prefix)], feats[("uncond", None, prefix)], refs[prefix],
                                     num_boot=args.num_boot)
                row[prefix]["fid_minus_uncond"] = d["pooled"]
                row[prefix]["fid_minus_uncond_interval"] = verdict_interval(d["per_set"], d["ci"])
                readings[prefix] = (d["pooled"], row[prefix]["fid_minus_uncond_interval"])
            row["verdict_lower_than_uncond"] = verdict(readings, expected_sign=-1)
        rows.append(row)
        print(json.dumps(row), flush=True)

    text = report(args, runs, rows)
    print(text)
    if args.out:
        args.out.write_text(text)
        saved = {k: {"run": str(v["run"]), "metrics": v["metrics"]} for k, v in runs.items()}
        args.out.with_suffix(".json").write_text(json.dumps({"runs": saved, "rows": rows}, indent=1))
        plot(rows, args.out.with_suffix(".png"))


def report(args, runs, rows) -> str:
    m = {k: v["metrics"] for k, v in runs.items()}
    lines = [
        f"# Conditional quickstart and classifier-free guidance ({time.strftime('%Y-%m-%d')})", "",
        "```bash", f"flock /tmp/ddpm-cpu.lock python bench/cond_guidance.py --sets {args.sets} --n {args.n} "
        f"--w {' '.join(str(w) for w in args.w)} --out {args.out}", "```", "",
        f"Machine: {os.cpu_count()} CPUs (torch threads {torch.get_num_threads()}), torch {torch.__version__}. "
        f"Samples kept under {args.work / 'samples'}: a rerun with --uncond/--cond rescores them without sampling.", "",
        "| run | command | fit_seconds | process seconds | digits/fid (final) | digits_b/fid (final) |",
        "|---|---|---|---|---|---|",
    ]
    for name, extra in ARMS.items():
        cmd = " ".join(["python train.py", *extra])
        lines.append(f"| {name} | `{cmd}` | {m[name].get('fit_seconds')} | {m[name].get('process_seconds', '-')} | "
                     f"{m[name].get('digits/fid')} | {m[name].get('digits_b/fid', '-')} |")
    lines += ["", f"{args.sets} seed sets of {args.n} (seed k = set k; the unconditional model on the same seeds), "
              f"balanced labels, the quickstart's sampler (respaced, {args.steps} steps, fixed_small). A = extractor A "
              "(`digits`), B = extractor B (`digits_b`). Accuracy: on the sets pooled (each set's in brackets); "
              "FID, KID, IS, confidence on the pooled sets. FID - uncond: the paired difference on the same seeds "
              "with the interval the verdict rule uses (bootstrap within the draw, widened to the spread between "
              "sets); verdict on \"lower than the unconditional model\" by both extractors "
              "(`ddpm.services.metrics.pooled.verdict`).", "",
              "| model | w | diffusers guidance_scale | accuracy A | accuracy B | FID A | FID B | FID balanced A | "
              "KID A | IS A | confidence A | FID - uncond A | FID - uncond B | verdict | evals/image | sample s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def acc(r, prefix):
        if "accuracy" not in r[prefix]:
            return "-"
        return f"{r[prefix]['accuracy']:.4f} ({', '.join(f'{a:.3f}' for a in r[prefix]['accuracy_sets'])})"

    def diff(r, prefix):
        if "fid_minus_uncond" not in r[prefix]:
            return "-"
        lo, hi = r[prefix]["fid_minus_uncond_interval"]
        return f"{r[prefix]['fid_minus_uncond']:+.3f} [{lo:+.2f}, {hi:+.2f}]"

    for r in rows:
        a = r["digits"]
        w = "-" if r["w"] is None else f"{r['w']:g}"
        gs = "-" if r["w"] is None else f"{1 + r['w']:g}"
        kid = "-" if a.get("kid") is None else f"{a['kid']:.5f}"
        lines.append(f"| {r['model']} | {w} | {gs} | {acc(r, 'digits')} | {acc(r, 'digits_b')} | {a['fid']:.3f} | "
                     f"{r['digits_b']['fid']:.3f} | {a['fid_balanced']:.3f} | {kid} | {a['is']:.3f} | "
                     f"{a['confidence']:.4f} | {diff(r, 'digits')} | {diff(r, 'digits_b')} | "
                     f"{r.get('verdict_lower_than_uncond', '-')} | {r['evals_per_image']} | {r['sample_seconds']} |")
    return "\n".join(lines) + "\n"


def plot(rows, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    cond = [r for r in rows if r["w"] is not None]
    base = next(r for r in rows if r["w"] is None)
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    ws = [r["w"] for r in cond]
    ax[0].plot(ws, [r["digits"]["accuracy"] for r in cond], "o-", label="extractor A")
    ax[0].plot(ws, [r["digits_b"]["accuracy"] for r in cond], "s--", label="extractor B")
    ax[0].legend()
    ax[0].set(xlabel="guidance weight w", ylabel="class accuracy", title="requested class hit")
    ax[1].plot(ws, [r["digits"]["fid"] for r in cond], "o-", label="conditional")
    ax[1].axhline(base["digits"]["fid"], color="gray", ls="--", label="unconditional")
    ax[1].set(xlabel="guidance weight w", ylabel="FID (extractor A)", title="pooled FID")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
