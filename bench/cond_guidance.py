"""The conditional quickstart and the trade-off of classifier-free guidance (issue 28), in one run.

    flock /tmp/ddpm-cpu.lock python bench/cond_guidance.py --out bench/results/cond_guidance_DATE.md

1. trains the unconditional quickstart (``python train.py``) and the conditional one
   (``python train.py model.num_classes=10``), same recipe and step budget, one after the other, and times both
   (``fit_seconds`` of their metrics.json and the process wall time);
   ``--uncond RUN --cond RUN`` reuses finished runs instead;
2. samples ``--sets`` seed sets of ``--n`` images (seed k = set k, balanced labels: image i is class i mod 10) at
   each guidance weight w of ``--w`` with the quickstart's own final sampler (200 respaced ancestral steps,
   posterior variance), and the unconditional model on the same seeds;
3. scores them with the project's digits classifier (extractor A): class accuracy (the share of images it
   assigns to their requested class) per set, and on the sets pooled: FID against the train split, FID against
   the class-balanced train split, IS (10 splits), mean confidence. Network evaluations per image: 200 at w = 0,
   400 at w > 0 (one batched pass of 2N images per step).
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


def train(run: Path, extra: list[str]) -> dict:
    start = time.time()
    subprocess.run([sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={run}",
                    *extra], cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["process_seconds"] = round(time.time() - start, 1)
    return metrics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/cond_guidance"))
    p.add_argument("--uncond", type=Path, default=None)
    p.add_argument("--cond", type=Path, default=None)
    p.add_argument("--sets", type=int, default=3)
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--w", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0, 4.0])
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()

    from ddpm.core.config import SamplerConfig
    from ddpm.core.data import model_to_uint8
    from ddpm.services.generate import class_labels, generate, seeds_for
    from ddpm.services.loading import load_model
    from ddpm.services.metrics.conditional import class_scores
    from ddpm.services.metrics.digits_classifier import DigitsExtractor
    from ddpm.services.metrics.digits_score import digits_quality
    from ddpm.services.metrics.features import extract_all
    from ddpm.services.metrics.fid import inception_score

    runs = {}
    for name, given, extra in (("uncond", args.uncond, []), ("cond", args.cond, ["model.num_classes=10"])):
        run = given or args.work / name
        runs[name] = {"run": run, "metrics": json.loads((run / "metrics.json").read_text()) if given
                      else train(run, extra)}
    sampler = SamplerConfig(name="respaced", steps=200, var_type="fixed_small")  # the quickstart's final sampler
    extractor = DigitsExtractor()
    rows, per_set = [], {}
    configs = [("uncond", None)] + [("cond", w) for w in args.w]
    for name, w in configs:
        loaded = load_model(runs[name]["run"])
        pooled, labels_all, accs, secs = [], [], [], 0.0
        for k in range(args.sets):
            seeds = seeds_for(k, 0, args.n)
            cond = {}
            if w is not None:
                y = class_labels("balanced", k, 0, args.n, 10)
                cond = {"labels": y, "guidance_scale": w, "num_classes": 10}
                labels_all.append(y.numpy())
            start = time.time()
            images = model_to_uint8(generate(loaded.model_fn(), loaded.diffusion, seeds, loaded.image_shape, sampler,
                                             **cond)).numpy()
            secs += time.time() - start
            pooled.append(images)
            if w is not None:
                accs.append(class_scores(images, cond["labels"], extractor)["class_accuracy"])
        images = np.concatenate(pooled)
        q = digits_quality(images, extractor=extractor)
        _, logits = extract_all(images, extractor, device="cpu")
        is_mean, _ = inception_score(logits, splits=10)
        row = {"model": name, "w": w, "fid": q["fid"], "is": is_mean, "confidence": q["confidence"],
               "sample_seconds": round(secs, 1), "evals_per_image": 200 if not w else 400}
        if w is not None:
            c = class_scores(images, np.concatenate(labels_all), extractor)
            row.update(accuracy=float(np.mean(accs)), accuracy_sets=accs, fid_balanced=c["fid_balanced"],
                       class_confidence=c["class_confidence"])
        else:
            row["fid_balanced"] = class_scores(images, np.arange(images.shape[0]) % 10, extractor)["fid_balanced"]
        rows.append(row)
        per_set[f"{name}_{w}"] = row
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
        f"Machine: {os.cpu_count()} CPUs shared with other sessions (torch threads {torch.get_num_threads()}), "
        f"torch {torch.__version__}.", "",
        "| run | command | fit_seconds | process seconds | digits/fid (final 256) | final class accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for name, cmd in (("uncond", "python train.py"), ("cond", "python train.py model.num_classes=10")):
        lines.append(f"| {name} | `{cmd}` | {m[name].get('fit_seconds')} | {m[name].get('process_seconds', '-')} | "
                     f"{m[name].get('digits/fid')} | {m[name].get('digits/class_accuracy', '-')} |")
    lines += ["", f"{args.sets} seed sets of {args.n} (seed k = set k), balanced labels, the quickstart's sampler "
              "(respaced, 200 steps, fixed_small). Accuracy: mean over the sets (each set's in brackets); the other "
              "columns on the sets pooled. Digits classifier A.", "",
              "| model | w | diffusers guidance_scale | class accuracy | FID (train) | FID (balanced train) | IS | "
              "confidence | evals/image | sample s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sets = ", ".join(f"{a:.3f}" for a in r.get("accuracy_sets", []))
        acc = "-" if "accuracy" not in r else f"{r['accuracy']:.4f} ({sets})"
        w = "-" if r["w"] is None else f"{r['w']:g}"
        gs = "-" if r["w"] is None else f"{1 + r['w']:g}"
        lines.append(f"| {r['model']} | {w} | {gs} | {acc} | {r['fid']:.3f} | {r['fid_balanced']:.3f} | "
                     f"{r['is']:.3f} | {r['confidence']:.4f} | {r['evals_per_image']} | {r['sample_seconds']} |")
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
    ax[0].plot(ws, [r["accuracy"] for r in cond], "o-")
    ax[0].set(xlabel="guidance weight w", ylabel="class accuracy", title="requested class hit")
    ax[1].plot(ws, [r["fid"] for r in cond], "o-", label="conditional")
    ax[1].axhline(base["fid"], color="gray", ls="--", label="unconditional")
    ax[1].set(xlabel="guidance weight w", ylabel="FID (digits features)", title="pooled FID")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
