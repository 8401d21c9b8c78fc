"""The quickstart's samples against real held-out digits at the same sample count, under both digits extractors,
with the verdict rule (the README's quickstart table): restated from stored seed sets, nothing is sampled.

    # the seed sets (once; sample.py stores samples.npz in each):
    for k in 0 1 2 3 4 5 6 7; do
      python sample.py ckpt_path=RUN num_samples=181 seed=$k compute_fid=true sampler=respaced sampler.steps=200 \
          sampler.var_type=fixed_small out_dir=RUN/eval/n181_seed$k
    done
    # the table and the verdict, from those samples:
    python bench/quickstart_vs_real.py RUN/eval/n181_seed* --out bench/results/quickstart_equal_n_DATE.md

Each argument is a sample.py output directory (its ``samples.npz``), one independent draw each. Per draw and per
extractor (A ``ddpm-digits``, B ``ddpm-digits-b``): FID and unbiased KID against the train split and the class KL;
the real held-out digits at the same n beside them; then :func:`ddpm.services.metrics.digits_score.against_real`'s verdict
on "the samples score worse than real digits": stated only when both extractors' intervals (over the draws) lie
above 0. Last, what real digits score at that n draw to draw (:func:`ddpm.services.metrics.digits_score.real_draws`,
random subsets of all 360 held-out digits), where the test split's one draw ranks among them, and the samples'
median beside them; then all draws pooled as one sample, and the confidence and class entropy per draw.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def load_set(path: Path) -> np.ndarray:
    """uint8 ``[N, 1, 8, 8]`` of a sample.py output directory's ``samples.npz`` (``arr_0`` is ``[N, H, W, 3]``)."""
    with np.load(path / "samples.npz", allow_pickle=False) as z:
        arr = z["arr_0"]
    return np.ascontiguousarray(arr[..., :1].transpose(0, 3, 1, 2))


def table(dirs: list[Path], result: dict, draws: dict | None = None, pooled: dict | None = None) -> str:
    names = {"digits": "A", "digits_b": "B"}
    lines = [f"Samples against the real held-out digits at n={result['n']} (FID and KID against the train split; "
             "A = ddpm-digits, B = ddpm-digits-b; class KL: of the predicted classes from the train split's, nats).",
             "", "| draw | FID A | FID B | KID A | KID B | class KL A / B |", "|---|---|---|---|---|---|"]

    def row(label: str, q: dict) -> str:
        a, b = q["digits"], q["digits_b"]
        return (f"| {label} | {a['fid']:.2f} | {b['fid']:.2f} | {a['kid']:.3g} | {b['kid']:.3g} | "
                f"{a['class_kl']:.3f} / {b['class_kl']:.3f} |")

    for d, q in zip(dirs, result["sets"]):
        lines.append(row(d.name, q))
    lines.append(row(f"real held-out digits (n={result['n']})", result["real"]))
    lines.append("")
    for prefix, d in result["diff"].items():
        lo, hi = d["interval"]
        lines.append(f"FID(samples) - FID(real), extractor {names.get(prefix, prefix)}: mean {d['mean']:+.2f} over "
                     f"{len(d['per_set'])} draws, 95% interval over the draws [{lo:+.2f}, {hi:+.2f}].")
    lines += ["", f"Verdict on \"the samples score worse than real digits\": **{result['verdict']}** (the verdict "
              "rule: stated only when both extractors' intervals exclude 0 on one side)."]
    if pooled:
        def mean(key: str, prefix: str) -> float:
            return float(np.mean([q[prefix][key] for q in result["sets"]]))

        lines += ["", f"All {len(dirs)} draws as one sample ({pooled['digits']['n']} images): FID A "
                  f"{pooled['digits']['fid']:.2f} / B {pooled['digits_b']['fid']:.2f}. Per draw on average: confidence "
                  f"A {mean('confidence', 'digits'):.3f} / B {mean('confidence', 'digits_b'):.3f}, class entropy (A) "
                  f"{mean('class_entropy', 'digits'):.3f} bits; the real held-out digits: "
                  f"{result['real']['digits']['confidence']:.3f} / {result['real']['digits_b']['confidence']:.3f}, "
                  f"{result['real']['digits']['class_entropy']:.3f} bits."]
    if draws:
        lines += ["", f"What real digits score at n={result['n']}, draw to draw: {len(draws['digits']['fids'])} random "
                  f"{result['n']}-subsets of the 360 held-out digits (val + test; `real_draws`) against the samples' "
                  f"{len(dirs)} draws:", "",
                  "| extractor | real subsets: median (range) | the test split's draw above: its rank | samples: "
                  "median (range) |", "|---|---|---|---|"]
        for prefix, d in draws.items():
            fids = [q[prefix]["fid"] for q in result["sets"]]
            below = sum(f < result["real"][prefix]["fid"] for f in d["fids"])
            lines.append(f"| {names.get(prefix, prefix)} | {d['median']:.2f} ({d['min']:.2f}-{d['max']:.2f}) | "
                         f"{below} of {len(d['fids'])} subsets lower | {np.median(fids):.2f} "
                         f"({min(fids):.2f}-{max(fids):.2f}) |")
        lines += ["", "Confidence and class entropy (bits) on the same draws (medians, range), the real subsets "
                  "against the samples':", "",
                  "| extractor | confidence: real subsets | confidence: samples | class entropy: real subsets | "
                  "class entropy: samples |", "|---|---|---|---|---|"]
        for prefix, d in draws.items():
            cells = []
            for key in ("confidence", "class_entropy"):
                mine = [q[prefix][key] for q in result["sets"]]
                r = d[key]
                cells += [f"{r['median']:.3f} ({r['min']:.3f}-{r['max']:.3f})",
                          f"{np.median(mine):.3f} ({min(mine):.3f}-{max(mine):.3f})"]
            lines.append(f"| {names.get(prefix, prefix)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", type=Path, help="sample.py output directories, one draw (seed) each")
    p.add_argument("--out", type=Path, default=None, help="also write the Markdown to this file")
    args = p.parse_args(argv)
    from ddpm.services.metrics.digits_score import against_real, digits_scores, held_out_digits, real_draws

    missing = [str(d) for d in args.dirs if not (d / "samples.npz").is_file()]
    if missing:
        raise SystemExit(f"Error: no samples.npz in {', '.join(missing)}; give sample.py output directories")
    sets = [load_set(d) for d in args.dirs]
    result = against_real(sets)
    text = table(args.dirs, result, real_draws(result["n"]) if result["n"] <= len(held_out_digits()) else None,
                 digits_scores(np.concatenate(sets)) if len(sets) > 1 else None)
    print(text, end="")
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
