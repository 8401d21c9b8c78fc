"""The quickstart's acceptance check: the README's first command, exactly, and the bounds the README states.

    python bench/quickstart_check.py                     # ~6 min on 2 cores: python train.py + its NLL
    python bench/quickstart_check.py --out bench/results/quickstart_check_DATE.md

1. ``python train.py`` with no argument, in a temporary run directory (``--run-dir`` keeps it): it must leave
   ``checkpoints/last.ckpt``, ``samples.png`` and ``metrics.json`` after exactly the recipe's ``trainer.max_steps``
   optimizer steps (a step budget, no time cap: the same model on every machine).
2. Its final samples against the recipe's targets (issues 14 and 33; the conditional recipe since 2026-12-07 scores
   2.03, 3.321 and 0.971): digits FID <= 4 on its 256 samples (real held-out digits: 2.80 at n=181, noise: ~190),
   class entropy >= 3.28 bits (at most log2(10) = 3.32), classifier confidence >= 0.95 (real held-out digits:
   0.964; the unconditional recipe's 0.946 fails it; noise: 0.70).
3. ``python -m ddpm.nll`` on 32 held-out digits: all 1000 terms, the prior and the decoder; finite and below 6
   bits/dim (a uniform code: 8).

Exit status 1 when a bound fails, with each failure on its own line. This is the quickstart's end-to-end run,
kept out of the test suite (it alone is half the suite's time budget on 2 cores); the suite checks the same
recipe at a reduced step budget (``tests/test_quickstart.py``) and :func:`check` itself.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FID_MAX = 4.0
ENTROPY_MIN = 3.28
CONFIDENCE_MIN = 0.95
BPD_MAX = 6.0


def check(metrics: dict, max_steps: int, max_time, nll: dict | None) -> list[str]:
    """The failed bounds of one quickstart run, as lines (empty: every bound holds)."""
    failures = []
    if max_time is not None:
        failures.append(f"trainer.max_time={max_time}: the quickstart must be a step budget, not a time cap")
    if metrics.get("global_step") != max_steps:
        failures.append(f"global_step {metrics.get('global_step')} != trainer.max_steps {max_steps}")
    if not metrics.get("digits/fid", float("inf")) <= FID_MAX:
        failures.append(f"digits FID {metrics.get('digits/fid')} > {FID_MAX}")
    if not metrics.get("digits/class_entropy", 0.0) >= ENTROPY_MIN:
        failures.append(f"class entropy {metrics.get('digits/class_entropy')} < {ENTROPY_MIN} bits")
    if not metrics.get("digits/confidence", 0.0) >= CONFIDENCE_MIN:
        failures.append(f"confidence {metrics.get('digits/confidence')} < {CONFIDENCE_MIN}")
    if nll is not None:
        if nll.get("num_images") != 32 or nll.get("num_timesteps") != 1000:
            failures.append(f"NLL on {nll.get('num_images')} images, {nll.get('num_timesteps')} terms (want 32, 1000)")
        if not 0 < nll.get("bpd", float("nan")) < BPD_MAX:
            failures.append(f"NLL {nll.get('bpd')} bits/dim not in (0, {BPD_MAX})")
    return failures


def _run(args: list[str], cwd: Path) -> None:
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"Error: `python {' '.join(args)}` exited {proc.returncode}:\n{proc.stderr[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", type=Path, default=None, help="where python train.py writes (default: a temp dir)")
    p.add_argument("--out", type=Path, default=None, help="also write the Markdown report here")
    args = p.parse_args(argv)

    import torch

    from ddpm.core.config import compose
    from ddpm.services.metrics.digits_score import digits_reference_scores

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run_dir = args.run_dir or work / "run"
        start = time.perf_counter()
        _run([str(ROOT / "train.py"), f"hydra.run.dir={run_dir}"], cwd=work)
        wall = time.perf_counter() - start
        missing = [f for f in ("checkpoints/last.ckpt", "samples.png", "metrics.json") if not (run_dir / f).is_file()]
        metrics = json.loads((run_dir / "metrics.json").read_text()) if "metrics.json" not in missing else {}
        nll_dir = work / "nll"
        _run(["-m", "ddpm.nll", f"ckpt_path={run_dir}", "max_images=32", "t_batch=100", "batch_size=32",
              f"out_dir={nll_dir}", f"hydra.run.dir={nll_dir}", "progress=false"], cwd=work)
        nll = json.loads((nll_dir / "nll.json").read_text())

    recipe = compose("train", ["paths.output_dir=unused"])
    ref = digits_reference_scores()
    failures = [f"missing {f}" for f in missing] + check(metrics, recipe.trainer.max_steps, recipe.trainer.max_time,
                                                         nll)
    noise_fid = min(ref["uniform_noise"]["fid"], ref["blurred_noise"]["fid"])
    lines = [
        "# The quickstart's acceptance check",
        "",
        f"Command: `python bench/quickstart_check.py` (torch threads: {torch.get_num_threads()})",
        "",
        "| what | value | bound |",
        "|---|---|---|",
        f"| optimizer steps | {metrics.get('global_step')} | = trainer.max_steps {recipe.trainer.max_steps} |",
        f"| digits FID (256 samples) | {metrics.get('digits/fid', float('nan')):.3f} | <= {FID_MAX} "
        f"(real held-out {ref['real_test']['fid']:.2f}, noise {noise_fid:.1f}) |",
        f"| class entropy (bits) | {metrics.get('digits/class_entropy', float('nan')):.3f} | >= {ENTROPY_MIN} |",
        f"| confidence | {metrics.get('digits/confidence', float('nan')):.3f} | >= {CONFIDENCE_MIN} (real held-out "
        f"{ref['real_test']['confidence']:.3f}, noise {ref['uniform_noise']['confidence']:.3f}) |",
        f"| NLL, 32 test digits (bits/dim) | {nll['bpd']:.3f} | < {BPD_MAX} |",
        f"| training / sampling / whole run (s) | {metrics.get('fit_seconds')} / {metrics.get('sample_seconds')} / "
        f"{wall:.0f} | (wall time, not a bound) |",
        "",
        "**All bounds hold.**" if not failures else "**Failed:**\n" + "\n".join(f"- {f}" for f in failures),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
