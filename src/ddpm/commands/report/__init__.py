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
``python -m ddpm.nll`` as a user would, one process per evaluation, over ``devices=D`` devices): ``seed_sets=K``
sets of ``fid_samples=N`` images (``seed=0..K-1``, into ``JOBDIR/eval/fid<N>_<sampler>_seed<k>``) and the full
NLL bound (``JOBDIR/eval/nll_test<M>``). Unset, K, N and M are the protocol of the rows' data (``protocols`` in
``conf/report.yaml``): on CIFAR-10 the paper's (one set of 50k samples, Inception FID and IS, the NLL on the whole
test set), elsewhere the miniature's (3 x 512, 64 test images). An evaluation whose output exists and is newer
than the job's checkpoint is skipped, so a rerun continues set by set where a killed one stopped.

Seed sets: sample.py outputs with ``samples.npz`` that differ only in ``seed`` are one protocol's seed sets. The
report scores them with the extractor and reference statistics sample.py used (:mod:`ddpm.services.metrics.samples`) and
gives FID and IS pooled over all sets with the per-set values and their spread (:mod:`ddpm.services.metrics.pooled`), and
for the digits the classifier's confidence and class entropy (:mod:`ddpm.services.metrics.digits_score`), which still
separate rows where FID on 8x8 digits is near the real-data level.

Paper findings: each is one or more paired comparisons (:data:`FINDINGS`): rows share seeds, so image ``i`` of
seed set ``k`` has the same noise in both rows, and the NLL is a bound per test image on the same images and
noise. On the digits every comparison is made under both digits extractors (A ``ddpm-digits``, B
``ddpm-digits-b``), each with an interval that covers resampling the images and the spread between seed sets,
and one rule gives the verdict (:func:`ddpm.services.metrics.pooled.verdict`): *reproduced* only when every extractor's
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
from dataclasses import dataclass, field, replace
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ddpm.commands.report.findings import compare, pool_jobs
from ddpm.commands.report.jobs import Job, find_jobs, row_names
from ddpm.commands.report.render import render
from ddpm.core.cli import hydra_app
from ddpm.core.config import CONF_DIR, SamplerConfig, settings_of, validate_config
from ddpm.core.io import atomic_write
from ddpm.core.rundir import last_checkpoint

SAMPLE_PY = CONF_DIR.parent / "sample.py"  # the entry point beside conf/
NLL_KEYS = settings_of("nll") | {"hydra"}  # the sample_args that python -m ddpm.nll takes too


@dataclass
class Options:
    """Everything the report takes: ``conf/report.yaml`` (its defaults and comments), checked by :func:`options`."""

    multirun_dir: Path
    out: Path | None
    evaluate: bool
    seed_sets: int | None  # None: the protocol of the rows' data (:func:`protocol`)
    fid_samples: int | None
    nll_images: int | None
    sampler: SamplerConfig
    batch_size: int
    sample_args: list[str]
    num_boot: int
    rows: tuple[str, ...] | None
    devices: int = 1  # each evaluation's sample.py trainer.devices
    protocols: dict = field(default_factory=dict)  # {data name: {seed_sets, fid_samples, nll_images}}


def options(cfg: DictConfig) -> Options:
    """The report's :class:`Options` from its composed config (``conf/report.yaml``); a bad value is a
    ``ValueError`` naming the key."""
    if OmegaConf.is_missing(cfg, "multirun_dir"):
        raise ValueError("multirun_dir=PATH is required: the sweep's directory (hydra.sweep.dir of "
                         "python train.py -m ...), one job directory per row")
    root = Path(str(cfg.multirun_dir)).expanduser()
    if not root.is_dir():
        raise ValueError(f"multirun_dir={cfg.multirun_dir}: not a directory")
    validate_config(cfg)  # the values (ddpm.core.checks); what is below needs the files or the Table 2 rows
    protocols = OmegaConf.to_container(cfg.protocols, resolve=True)
    for name, proto in protocols.items():
        if not isinstance(proto, dict) or set(proto) != set(PROTOCOL_KEYS):
            raise ValueError(f"protocols.{name} must set exactly {', '.join(PROTOCOL_KEYS)} (conf/report.yaml)")
        for key, low in (("seed_sets", 1), ("fid_samples", 2), ("nll_images", 1)):
            value = proto[key]
            if not (value == "all" and key == "nll_images") and not (isinstance(value, int) and value >= low):
                raise ValueError(f"protocols.{name}.{key}={value} is not valid: expected an integer >= {low}"
                                 + (" or all (the whole test split)" if key == "nll_images" else ""))
    if "default" not in protocols:
        raise ValueError("protocols.default is required: the protocol of data without its own (conf/report.yaml)")
    rows = None if cfg.rows is None else tuple(str(r) for r in cfg.rows)
    valid = row_names()
    for r in rows or ():
        if r not in valid:
            raise ValueError(f"rows: {r!r} is not a Table 2 row; valid: {', '.join(valid)} (e.g. rows=[{valid[0]}])")
    return Options(
        rows=rows, multirun_dir=root, out=Path(str(cfg.out)) if cfg.out else None, evaluate=bool(cfg.evaluate),
        seed_sets=_opt_int(cfg.seed_sets), fid_samples=_opt_int(cfg.fid_samples), nll_images=_opt_int(cfg.nll_images),
        sampler=SamplerConfig.from_node(cfg.sampler), batch_size=int(cfg.batch_size),
        sample_args=[str(a) for a in cfg.sample_args], num_boot=int(cfg.num_boot),
        devices=int(cfg.devices), protocols=protocols,
    )


PROTOCOL_KEYS = ("seed_sets", "fid_samples", "nll_images")


def _opt_int(value) -> int | None:
    return None if value is None else int(value)


def protocol(opts: Options, jobs: list[Job]) -> Options:
    """``opts`` with ``seed_sets``, ``fid_samples`` and ``nll_images`` set: each one given on the command line,
    the others from ``opts.protocols`` for the rows' data (the data module's name lowercased: ``cifar10``,
    ``digits``, ``imagefolder``; ``default`` for any other). ``nll_images`` is ``None`` for the whole test split."""
    names = sorted({j.data.lower() for j in jobs})
    if len(names) > 1:
        raise ValueError(f"multirun_dir={opts.multirun_dir}: its rows were trained on different data "
                         f"({', '.join(names)}); a Table 2 compares rows on one dataset: report them apart (rows=...)")
    proto = opts.protocols.get(names[0] if names else "default", opts.protocols.get("default", {}))
    given = {k: getattr(opts, k) for k in PROTOCOL_KEYS if getattr(opts, k) is not None}
    chosen = {k: proto.get(k) for k in PROTOCOL_KEYS}
    chosen["nll_images"] = None if chosen["nll_images"] == "all" else chosen["nll_images"]
    return replace(opts, **{**chosen, **given}, protocols={})


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
        out.append((job / "eval" / f"fid{opts.fid_samples}_{opts.sampler.label}_seed{k}", "metrics.json",
                    [f"num_samples={opts.fid_samples}", f"seed={k}", f"batch_size={opts.batch_size}",
                     "compute_fid=true", *sampler_overrides(opts.sampler)]))
    nll_images = "null" if opts.nll_images is None else opts.nll_images  # null: the whole test split
    out.append((job / "eval" / f"nll_test{'all' if opts.nll_images is None else opts.nll_images}", "nll.json",
                ["split=test", f"max_images={nll_images}", f"batch_size={opts.batch_size}"]))
    return out


def command_for(out_file: str, opts: Options) -> tuple[list[str], list[str]]:
    """The program (after the interpreter) that writes ``out_file`` and the ``opts.sample_args`` it takes:
    ``nll.json`` is ``python -m ddpm.nll`` (the sample_args of settings it has), the rest ``sample.py``."""
    if out_file == "nll.json":
        return ["-m", "ddpm.nll"], [a for a in opts.sample_args if a.lstrip("+~").split("=")[0].split(".")[0]
                                    in NLL_KEYS]
    return [str(SAMPLE_PY)], list(opts.sample_args)


def evaluate_jobs(opts: Options) -> list[list[str]]:
    """Run the missing evaluations of every finished job under ``opts.multirun_dir`` (with the protocol of its
    data, :func:`protocol`); returns the commands it ran."""
    ran = []
    jobs = find_jobs(opts.multirun_dir, opts.rows)
    opts = protocol(opts, jobs)
    for job in jobs:
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
                   f"hydra.run.dir={out_dir}", "progress=false", f"trainer.devices={opts.devices}", *extra]
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
