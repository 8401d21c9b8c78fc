"""FID and IS of the first N images of a job's seed set, scored as the report scores it (every extractor: on the
digits A = ddpm-digits, then B = ddpm-digits-b): the check that a model is the one an earlier single-set report
measured (image i depends only on (seed, i), so the first N of a larger set are that report's N images).

    python bench/subset_fid.py multirun/table2_digits/mu_vlb_fixed --n 500     # 2026-11-30: FID 84.32, IS 3.52

Reads ``JOBDIR/eval/*/`` as written by ``python -m ddpm.report multirun_dir=... evaluate=true``; prints one line
per seed set.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ddpm.commands.report.findings import Scorers, set_images
from ddpm.commands.report.jobs import read_job
from ddpm.services.metrics.pooled import featurise, pooled_scores


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("jobs", nargs="+", type=Path, help="job directories (one row of a multirun each)")
    p.add_argument("--n", type=int, default=500, help="images from the start of each seed set")
    args = p.parse_args()
    scorers = Scorers()
    for path in args.jobs:
        job = read_job(path)
        if job is None or not job.seed_sets:
            raise SystemExit(f"Error: {path}: no job with seed sets (run the report with evaluate=true first)")
        for protocol, runs in job.seed_sets.items():
            for run in runs:
                _, _, splits = scorers(job, run)
                images = set_images(run)[: args.n]
                for extractor, ref, _ in scorers.all_extractors(job, run):
                    s = pooled_scores([featurise(images, extractor)], ref, extractor.name, splits=splits)
                    print(f"{path} seed set {run.seed}: first {len(images)} images FID {s['fid']:.2f}, "
                          f"IS {s['is']:.2f} ({extractor.name}; {protocol})")


if __name__ == "__main__":
    main()
