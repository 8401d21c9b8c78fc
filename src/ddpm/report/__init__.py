"""``python -m ddpm.report multirun_dir=DIR``: the paper's Table 2 as Markdown, our numbers beside the paper's.

A Hydra app: its settings, their defaults and comments are in ``conf/report.yaml`` (``--help`` lists them).

Each job directory of a multirun (``python train.py -m sweep=table2``) is read for

* its objective and training settings (``.hydra/config.yaml``);
* its training summary (``metrics.json``: optimizer steps, the validation estimate ``val/bpd`` and, on digits, the
  quality score of the run's final samples ``digits/fid``);
* the evaluations written below it by ``sample.py``. Where: ``JOBDIR/eval/<name>/`` by convention, e.g.
  ``python sample.py ckpt_path=JOBDIR out_dir=JOBDIR/eval/fid500_respaced100 num_samples=500 compute_fid=true
  sampler=respaced sampler.steps=100`` (its ``metrics.json``: ``fid_<n>[_<sampler>]``, ``is_<n>[_<sampler>]`` and
  ``..._std``) and ``python -m ddpm.nll ckpt_path=JOBDIR out_dir=JOBDIR/eval/nll_test64 max_images=64``
  (its ``nll.json``). Any ``metrics.json`` / ``nll.json`` below the job directory is read.

Columns: IS and FID from the sample.py evaluations (the run's own final-sample score where there is none); NLL
from the full bound (``nll.json``, all T terms; the one over the most images) where there is one, else the
training run's one-t-per-image validation estimate. Every figure carries a letter that says, once, under the
table, what stands behind it: sample count, sampler and steps for FID/IS, the estimate and the image count for
NLL. The settings that every row shares are printed above the table; settings in which rows differ besides the
objective are flagged.

``evaluate=true`` first runs the evaluations of every job that has finished training (``python sample.py`` and
``python -m ddpm.nll`` as a user would, one process per evaluation): ``seed_sets=K`` sets of ``fid_samples=N``
images (``seed=0..K-1``, into ``JOBDIR/eval/fid<N>_<sampler>_seed<k>``) and the full NLL bound
(``JOBDIR/eval/nll_test<M>``). An evaluation
whose output exists and is newer than the job's checkpoint is skipped, so a rerun continues set by set where a
killed one stopped.

Seed sets: sample.py outputs with ``samples.npz`` that differ only in ``seed`` are one protocol's seed sets. The
report scores them with the extractor and reference statistics sample.py used (:mod:`ddpm.metrics.samples`) and
gives FID and IS pooled over all sets with the per-set values and their spread (:mod:`ddpm.metrics.pooled`), and
for the digits the classifier's confidence and class entropy (:mod:`ddpm.metrics.digits_score`), which still
separate rows where FID on 8x8 digits is near the real-data level.

Paper findings: each is one or more paired comparisons (:data:`FINDINGS`): rows share seeds, so image ``i`` of
seed set ``k`` has the same noise in both rows, and the NLL is a bound per test image on the same images and
noise. On the digits every comparison is made under both digits extractors (A ``ddpm-digits``, B
``ddpm-digits-b``), each with an interval that covers resampling the images and the spread between seed sets,
and one rule gives the verdict (:func:`ddpm.metrics.pooled.verdict`): *reproduced* only when every extractor's
interval excludes 0 on the paper's side, *the opposite* when all exclude it on the other side,
*extractor-dependent* when the extractors point opposite ways, and *not established* otherwise; each line shows
the numbers it rests on. A table beside the seed sets gives, per extractor, FID pooled and extrapolated to
infinite n, unbiased KID and the class mix (KL of the predicted classes, FID and KID against the reweighted
reference). The report rescores the stored ``samples.npz`` of every seed set: restating it with both extractors
resamples nothing.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, fields
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ddpm.cli import hydra_app
from ddpm.config import CONF_DIR, NLLConfig, SamplerConfig, validate_config
from ddpm.io import atomic_write
from ddpm.report.findings import compare, pool_jobs
from ddpm.report.jobs import find_jobs, objective_fields
from ddpm.report.render import render
from ddpm.rundir import last_checkpoint

SAMPLE_PY = CONF_DIR.parent / "sample.py"  # the entry point beside conf/
NLL_KEYS = {f.name for f in fields(NLLConfig)} | {"hydra"}  # the sample_args that python -m ddpm.nll takes too


@dataclass
class Options:
    """Everything the report takes: ``conf/report.yaml`` (its defaults and comments), checked by :func:`options`."""

    multirun_dir: Path
    out: Path | None
    evaluate: bool
    seed_sets: int
    fid_samples: int
    nll_images: int
    sampler: SamplerConfig
    batch_size: int
    sample_args: list[str]
    num_boot: int
    rows: tuple[str, ...] | None


def options(cfg: DictConfig) -> Options:
    """The report's :class:`Options` from its composed config (``conf/report.yaml``); a bad value is a
    ``ValueError`` naming the key."""
    if OmegaConf.is_missing(cfg, "multirun_dir"):
        raise ValueError("multirun_dir=PATH is required: the sweep's directory (hydra.sweep.dir of "
                         "python train.py -m ...), one job directory per row")
    root = Path(str(cfg.multirun_dir)).expanduser()
    if not root.is_dir():
        raise ValueError(f"multirun_dir={cfg.multirun_dir}: not a directory")
    validate_config(cfg)  # the values (ddpm.checks); what is below needs the files or the Table 2 rows
    rows = None if cfg.rows is None else tuple(str(r) for r in cfg.rows)
    valid = sorted(objective_fields())
    for r in rows or ():
        if r not in valid:
            raise ValueError(f"rows: {r!r} is not a Table 2 row; valid: {', '.join(valid)} (e.g. rows=[{valid[0]}])")
    return Options(
        rows=rows, multirun_dir=root, out=Path(str(cfg.out)) if cfg.out else None, evaluate=bool(cfg.evaluate),
        seed_sets=int(cfg.seed_sets), fid_samples=int(cfg.fid_samples), nll_images=int(cfg.nll_images),
        sampler=SamplerConfig.from_node(cfg.sampler), batch_size=int(cfg.batch_size),
        sample_args=[str(a) for a in cfg.sample_args], num_boot=int(cfg.num_boot),
    )


def sampler_overrides(sampler: SamplerConfig) -> list[str]:
    """``sampler`` as sample.py's command line: ``sampler=NAME`` and every setting of it."""
    settings = {"steps": sampler.steps, "clip_denoised": sampler.clip_denoised, "var_type": sampler.var_type,
                **sampler.params}
    return [f"sampler={sampler.name}",
            *(f"sampler.{k}={'null' if v is None else str(v).lower() if isinstance(v, bool) else v}"
              for k, v in settings.items())]


def evaluations(job: Path, opts: Options) -> list[tuple[Path, str, list[str]]]:
    """``(output dir, output file, overrides)`` of a job's evaluations: ``opts.seed_sets`` sets of
    ``opts.fid_samples`` images with ``opts.sampler`` (``metrics.json`` of sample.py, seed ``k`` for set ``k``,
    scored with the dataset's extractor), and the full NLL bound on the first ``opts.nll_images`` test images
    (``nll.json`` of ``python -m ddpm.nll``)."""
    out = []
    for k in range(opts.seed_sets):
        out.append((job / "eval" / f"fid{opts.fid_samples}_{opts.sampler.num_steps_label}_seed{k}", "metrics.json",
                    [f"num_samples={opts.fid_samples}", f"seed={k}", f"batch_size={opts.batch_size}",
                     "compute_fid=true", *sampler_overrides(opts.sampler)]))
    out.append((job / "eval" / f"nll_test{opts.nll_images}", "nll.json",
                ["split=test", f"max_images={opts.nll_images}", f"batch_size={opts.batch_size}"]))
    return out


def command_for(out_file: str, opts: Options) -> tuple[list[str], list[str]]:
    """The program (after the interpreter) that writes ``out_file`` and the ``opts.sample_args`` it takes:
    ``nll.json`` is ``python -m ddpm.nll`` (the sample_args of settings it has), the rest ``sample.py``."""
    if out_file == "nll.json":
        return ["-m", "ddpm.nll"], [a for a in opts.sample_args if a.lstrip("+~").split("=")[0].split(".")[0]
                                    in NLL_KEYS]
    return [str(SAMPLE_PY)], list(opts.sample_args)


def evaluate_jobs(opts: Options) -> list[list[str]]:
    """Run the missing evaluations of every finished job under ``opts.multirun_dir``; returns the commands it
    ran."""
    ran = []
    for job in find_jobs(opts.multirun_dir, opts.rows):
        ckpt = last_checkpoint(job.path)
        if not ckpt.is_file() or job.steps is None:
            print(f"[report] {job.path.name}: not finished training (no metrics.json / last.ckpt), skipped",
                  file=sys.stderr)
            continue
        if job.stopped_early:  # a preempted run also writes metrics.json and last.ckpt
            print(f"[report] {job.path.name}: training stopped at step {job.steps} of "
                  f"{job.settings['trainer.max_steps']} (preempted?), skipped; resume it first (rerun the sweep: "
                  "ckpt_path=last continues it)", file=sys.stderr)
            continue
        for out_dir, out_file, overrides in evaluations(job.path, opts):
            done = out_dir / out_file
            if done.is_file() and done.stat().st_mtime >= ckpt.stat().st_mtime:
                print(f"[report] {job.path.name}: {done.relative_to(job.path)} exists, skipped", file=sys.stderr)
                continue
            program, extra = command_for(out_file, opts)
            cmd = [sys.executable, *program, f"ckpt_path={job.path}", *overrides, f"out_dir={out_dir}",
                   f"hydra.run.dir={out_dir}", "progress=false", *extra]
            print(f"[report] {job.path.name}: {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:  # the command's own "Error: ..." (or traceback) says why
                raise ValueError(f"evaluation of {job.path} failed; rerun it to see why: {' '.join(cmd[1:])}\n"
                                 + (proc.stdout + proc.stderr)[-2000:].strip())
            ran.append(cmd)
    return ran


def report(opts: Options) -> str:
    """The report of ``opts.multirun_dir`` (after running the evaluations with ``opts.evaluate``)."""
    if opts.evaluate:
        evaluate_jobs(opts)
    jobs = find_jobs(opts.multirun_dir, opts.rows)
    pool_jobs(jobs)
    findings = compare(jobs, num_boot=opts.num_boot) if any(j.pooled or j.nll_dir for j in jobs) else None
    text = render(jobs, findings)
    if opts.out:
        with atomic_write(opts.out) as tmp:  # a full disk or a kill never leaves half a report
            tmp.write_text(text + "\n")
    return text


def main() -> None:
    """``python -m ddpm.report``: the report of conf/report.yaml with the command line's overrides, printed."""
    hydra_app("report", lambda cfg: print(report(options(cfg))))
