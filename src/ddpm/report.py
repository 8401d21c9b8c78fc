"""``python -m ddpm.report MULTIRUN_DIR``: the paper's Table 2 as Markdown, our numbers beside the paper's.

Each job directory of a multirun (``python train.py -m sweep=table2``) is read for

* its objective and training settings (``.hydra/config.yaml``);
* its training summary (``metrics.json``: optimizer steps, the validation estimate ``val/bpd`` and, on digits, the
  quality score of the run's final samples ``digits/fid``);
* the evaluations written below it by ``sample.py``. Where: ``JOBDIR/eval/<name>/`` by convention, e.g.
  ``python sample.py ckpt_path=JOBDIR out_dir=JOBDIR/eval/fid500_respaced100 num_samples=500 compute_fid=true
  sampler=respaced sampler.steps=100`` (its ``metrics.json``: ``fid_<n>[_<sampler>]``, ``is_<n>[_<sampler>]`` and
  ``..._std``) and ``python sample.py ckpt_path=JOBDIR out_dir=JOBDIR/eval/nll_test64 nll=true
  nll_max_images=64`` (its ``nll.json``). Any ``metrics.json`` / ``nll.json`` below the job directory is read.

Columns: IS and FID from the sample.py evaluations (the run's own final-sample score where there is none); NLL
from the full bound (``nll.json``, all T terms; the one over the most images) where there is one, else the
training run's one-t-per-image validation estimate. Every figure carries a letter that says, once, under the
table, what stands behind it: sample count, sampler and steps for FID/IS, the estimate and the image count for
NLL. The settings that every row shares are printed above the table; settings in which rows differ besides the
objective are flagged.

``--evaluate`` first runs those two evaluations for every job that has finished training (``python sample.py``
as a user would, one process per evaluation, into ``JOBDIR/eval/fid<N>_<sampler>`` and ``JOBDIR/eval/nll_test<M>``);
an evaluation whose output exists and is newer than the job's checkpoint is skipped, so a rerun continues
where a killed one stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ddpm.config import CONF_DIR, sampler_names

# Paper Table 2 (CIFAR-10, unconditional; IS, FID) and Table 1 (NLL test, bits/dim). "–": unstable to train.
PAPER_ROWS: list[tuple[str, str, str, str, str]] = [
    # (objective option, row label, IS, FID, NLL)
    ("mu_vlb_learned", "mu~ prediction, L, learned diagonal Sigma", "7.28±0.10", "23.69", ""),
    ("mu_vlb_fixed", "mu~ prediction, L, fixed isotropic Sigma", "8.06±0.09", "13.22", ""),
    ("mu_mse", "mu~ prediction, ‖mu~ − mu~_θ‖²", "–", "–", ""),
    ("eps_vlb_learned", "eps prediction, L, learned diagonal Sigma", "–", "–", ""),
    ("eps_vlb_fixed", "eps prediction, L, fixed isotropic Sigma", "7.67±0.13", "13.51", "≤ 3.70"),
    ("simple", "eps prediction, ‖eps − eps_θ‖² (L_simple)", "9.46±0.11", "3.17", "≤ 3.75"),
    ("hybrid", "beyond the paper: L_hybrid (Improved DDPM)", "", "", ""),
]
OBJECTIVE_FIELDS = {
    "simple": ("eps", "fixed", "mse"),
    "eps_vlb_fixed": ("eps", "fixed", "kl"),
    "eps_vlb_learned": ("eps", "learned", "kl"),
    "mu_vlb_fixed": ("mu", "fixed", "kl"),
    "mu_vlb_learned": ("mu", "learned", "kl"),
    "mu_mse": ("mu", "fixed", "mse"),
    "hybrid": ("eps", "learned", "hybrid"),
}
# Training settings shown above the table (dotted paths into the job's config); rows should differ only in objective.
SETTINGS = [
    "data._target_", "data.batch_size", "model.ch", "model.ch_mult", "model.num_res_blocks", "diffusion.schedule",
    "diffusion.num_timesteps", "optim.lr", "optim.warmup_steps", "optim.ema_decay", "optim.t_sampler",
    "trainer.max_steps", "trainer.max_time", "trainer.gradient_clip_val", "seed",
]
PAPER_NOTE = (
    "Paper: CIFAR-10, 800k steps (lr 2e-4, batch 128), 50k samples, 1000-step ancestral sampling; FID against the "
    "training set, IS over 10 splits; NLL on the test set (Table 1). '–' in the paper: unstable to train. Only "
    "n=50k full-chain Inception figures on CIFAR-10 compare with the paper's numbers; the rest compare rows."
)


@dataclass
class Figure:
    value: float
    protocol: str  # what stands behind the number, stated once under the table
    std: float | None = None


@dataclass
class Job:
    path: Path
    objective: str
    fields: tuple[str, str, str]
    data: str = "?"
    steps: int | None = None
    settings: dict[str, object] = field(default_factory=dict)
    fid: list[Figure] = field(default_factory=list)
    inception: list[Figure] = field(default_factory=list)
    nll: Figure | None = None


def objective_name(obj: dict) -> tuple[str, tuple[str, str, str]]:
    var = str(obj.get("var_type", ""))
    mean, loss = str(obj.get("mean_type", "")), str(obj.get("loss_type", ""))
    key = (mean, "learned" if var.startswith("learned") else "fixed", loss)
    for name, fields in OBJECTIVE_FIELDS.items():
        if fields == key:
            return name, (key[0], var, key[2])
    return "other", (key[0], var, key[2])


def _fmt(x: float) -> str:
    return f"{x:.2f}" if abs(x) >= 1 else f"{x:.3g}"


def _get(cfg: dict, dotted: str) -> object:
    node: object = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _sampler_text(sampler: object) -> str:
    if isinstance(sampler, dict):
        name, steps = sampler.get("name", "?"), sampler.get("steps")
        extra = f", eta {sampler['eta']}" if sampler.get("eta") not in (None, 0, 0.0) else ""
        var = f", variance {sampler['var_type']}" if sampler.get("var_type") else ""
        return f"{name} sampler, {steps} steps{extra}{var}"
    m = re.fullmatch(r"([a-z_]+?)(\d*)", str(sampler))
    if m and m.group(2):
        return f"{m.group(1)} sampler, {m.group(2)} steps"
    return f"{sampler} sampler"


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))


def read_sample_metrics(m: dict, job: Job) -> None:
    """FID/IS of one ``sample.py compute_fid=true`` metrics.json (the ddpm backend's keys)."""
    n = m.get("num_samples", "?")
    extractor = m.get("fid_extractor", "?")
    ref = m.get("ref_split", "train")
    how = f"sample.py, {n} samples, {_sampler_text(m.get('sampler', '?'))}, EMA weights; {extractor} features"
    for key, value in m.items():
        if not _is_number(value) or key.endswith(("_std", "_torch_fidelity")):
            continue
        if key.startswith("fid_"):
            job.fid.append(Figure(float(value), f"FID: {how}, against the {ref} split"))
        elif key.startswith("is_") and key != "is_splits":
            splits = m.get("is_splits")
            job.inception.append(Figure(float(value), f"IS: {how}, {splits} splits", m.get(key + "_std")))


def read_nll(m: dict) -> Figure:
    terms = m.get("num_timesteps", "all")
    return Figure(
        float(m["bpd"]),
        f"NLL: ≤ the full bound from sample.py nll=true, {m.get('split', '?')} split, "
        f"{m.get('num_images', '?')} images, all {terms} terms + prior, EMA weights",
        m.get("bpd_sem"),
    )


def read_job(path: Path) -> Job | None:
    cfg_file = path / ".hydra" / "config.yaml"
    if not cfg_file.is_file():
        return None
    cfg = yaml.safe_load(cfg_file.read_text()) or {}
    name, fields = objective_name(cfg.get("objective", {}))
    data = str(_get(cfg, "data._target_") or "?").rsplit(".", 1)[-1].replace("DataModule", "")
    settings = {k: _get(cfg, k) for k in SETTINGS}
    settings["optim.t_sampler"] = settings["optim.t_sampler"] or "uniform"
    job = Job(path=path, objective=name, fields=fields, data=data, settings=settings)
    train_metrics = path / "metrics.json"
    train: dict = json.loads(train_metrics.read_text()) if train_metrics.is_file() else {}
    job.steps = train.get("global_step")
    nlls: list[tuple[int, Figure]] = []
    for mfile in sorted(path.rglob("*.json")):
        if mfile == train_metrics or mfile.name not in ("metrics.json", "nll.json"):
            continue
        m = json.loads(mfile.read_text())
        if mfile.name == "nll.json" and _is_number(m.get("bpd")):
            nlls.append((int(m.get("num_images") or 0), read_nll(m)))
        elif mfile.name == "metrics.json":
            read_sample_metrics(m, job)
    if nlls:
        job.nll = max(nlls, key=lambda x: x[0])[1]  # the one over the most images
    elif _is_number(train.get("val/bpd")):
        job.nll = Figure(
            float(train["val/bpd"]),
            "NLL: the training run's val/bpd, an estimate of the bound with one t per image (+ the exact L_0), "
            f"{_get(cfg, 'trainer.limit_val_batches')} validation batch(es), EMA weights; no nll.json found",
        )
    if not job.fid and _is_number(train.get("digits/fid")):
        job.fid.append(Figure(
            float(train["digits/fid"]),
            f"FID: train.py's final samples, {train.get('final_samples', '?')} samples, "
            f"{_sampler_text(train.get('final_sampler', '?'))}, EMA weights; digits features, against the train split",
        ))
    return job


def find_jobs(root: Path) -> list[Job]:
    dirs = [root] + sorted(p for p in root.iterdir() if p.is_dir())
    jobs = [j for j in (read_job(d) for d in dirs) if j is not None]
    if not jobs:
        raise FileNotFoundError(
            f"no job directories under {root} (expected <job>/.hydra/config.yaml from python train.py -m ...)"
        )
    return jobs


class Legend:
    """Letters for protocols, each defined once under the table."""

    def __init__(self) -> None:
        self.letters: dict[str, str] = {}

    def mark(self, protocol: str) -> str:
        if protocol not in self.letters:
            self.letters[protocol] = "abcdefghijklmnopqrstuvwxyz"[len(self.letters) % 26]
        return self.letters[protocol]

    def cell(self, figures: list[Figure], std_digits: int = 2) -> str:
        parts = []
        for f in sorted(figures, key=lambda f: f.protocol):  # the same order in every cell
            std = f"±{f.std:.{std_digits}f}" if f.std is not None and _is_number(f.std) else ""
            parts.append(f"{_fmt(f.value)}{std} [{self.mark(f.protocol)}]")
        return "; ".join(parts) or "–"

    def lines(self) -> list[str]:
        return [f"- [{letter}] {protocol}" for protocol, letter in self.letters.items()]


def _settings_lines(jobs: list[Job]) -> list[str]:
    common, differ = [], []
    for key in SETTINGS:
        values = {json.dumps(j.settings.get(key)) for j in jobs}
        if len(values) == 1:
            v = jobs[0].settings.get(key)
            if v is not None:
                common.append(f"{key}={v}")
        else:
            differ.append(key)
    lines = ["Training, common to every row: " + (", ".join(common) or "–") + "."]
    if differ:
        lines.append("**Rows differ in more than the objective:** " + ", ".join(
            f"{k} ({', '.join(sorted({str(j.settings.get(k)) for j in jobs}))})" for k in differ) + ".")
    return lines


def render(jobs: list[Job]) -> str:
    by_obj: dict[str, list[Job]] = {}
    for j in jobs:
        by_obj.setdefault(j.objective, []).append(j)
    legend = Legend()
    rows = []
    for name, label, p_is, p_fid, p_nll in PAPER_ROWS:
        for j in by_obj.get(name, []) or [None]:
            if j is None:
                if name != "hybrid":
                    rows.append(f"| {label} | not run | | | | | {p_is} | {p_fid} | {p_nll} |")
                continue
            nll = legend.cell([j.nll] if j.nll else [], std_digits=3)
            which = f", {j.path.name}" if len(by_obj[name]) > 1 else ""  # several jobs of one row: name them
            rows.append(
                f"| {label} | {name} ({'/'.join(j.fields)}{which}) | {j.steps if j.steps is not None else '?'} "
                f"| {legend.cell(j.inception)} | {legend.cell(j.fid)} | {nll} | {p_is} | {p_fid} | {p_nll} |"
            )
    for j in by_obj.get("other", []):
        nll = legend.cell([j.nll] if j.nll else [], std_digits=3)
        rows.append(f"| (not a Table 2 row) | {'/'.join(j.fields)} | {j.steps} | {legend.cell(j.inception)} "
                    f"| {legend.cell(j.fid)} | {nll} | | | |")
    header = [
        "| Table 2 row | objective (mean/variance/loss) | steps | IS (ours) | FID (ours) | NLL bits/dim (ours) "
        "| IS (paper) | FID (paper) | NLL (paper) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    out = _settings_lines(jobs) + [""] + header + rows + [""] + legend.lines() + ["", PAPER_NOTE]
    return "\n".join(out)


SAMPLE_PY = CONF_DIR.parent / "sample.py"  # the entry point beside conf/


def evaluations(
    job: Path, fid_samples: int, nll_images: int, sampler: str, batch_size: int
) -> list[tuple[Path, str, list[str]]]:
    """``(output dir, output file, sample.py overrides)`` of a job's two evaluations: FID/IS of ``fid_samples``
    images with ``sampler`` (the dataset's extractor), and the full NLL bound on the first ``nll_images`` test
    images."""
    fid_dir = job / "eval" / f"fid{fid_samples}_{sampler}"
    nll_dir = job / "eval" / f"nll_test{nll_images}"
    return [
        (fid_dir, "metrics.json", [f"num_samples={fid_samples}", f"batch_size={batch_size}", "compute_fid=true",
                                   f"sampler={sampler}"]),
        (nll_dir, "nll.json", ["nll=true", "nll_split=test", f"nll_max_images={nll_images}",
                               f"nll_batch_size={batch_size}"]),
    ]


def evaluate_jobs(root: Path, *, fid_samples: int = 500, nll_images: int = 64, sampler: str = "ancestral",
                  batch_size: int = 125, extra: list[str] | None = None) -> list[list[str]]:
    """Run the missing evaluations of every finished job under ``root``; returns the commands it ran."""
    ran = []
    for job in find_jobs(root):
        ckpt = job.path / "checkpoints" / "last.ckpt"
        if not ckpt.is_file() or job.steps is None:
            print(f"[report] {job.path.name}: not finished training (no metrics.json / last.ckpt), skipped",
                  file=sys.stderr)
            continue
        for out_dir, out_file, overrides in evaluations(job.path, fid_samples, nll_images, sampler, batch_size):
            done = out_dir / out_file
            if done.is_file() and done.stat().st_mtime >= ckpt.stat().st_mtime:
                print(f"[report] {job.path.name}: {done.relative_to(job.path)} exists, skipped", file=sys.stderr)
                continue
            cmd = [sys.executable, str(SAMPLE_PY), f"ckpt_path={job.path}", *overrides, f"out_dir={out_dir}",
                   f"hydra.run.dir={out_dir}", "progress=false", *(extra or [])]
            print(f"[report] {job.path.name}: {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:  # sample.py's own "Error: ..." (or traceback) says why
                raise ValueError(f"evaluation of {job.path} failed; rerun it to see why: {' '.join(cmd[1:])}\n"
                                 + (proc.stdout + proc.stderr)[-2000:].strip())
            ran.append(cmd)
    return ran


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m ddpm.report", description=__doc__.splitlines()[0])
    parser.add_argument("multirun_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this Markdown file")
    parser.add_argument("--evaluate", action="store_true",
                        help="first run the missing FID/IS and NLL evaluations of every finished job (sample.py)")
    parser.add_argument("--fid-samples", type=int, default=500, help="images per FID/IS evaluation (default 500)")
    parser.add_argument("--nll-images", type=int, default=64, help="test images for the full NLL bound (default 64)")
    parser.add_argument("--sampler", default="ancestral", choices=sampler_names(),
                        help="sampler of the FID/IS evaluation (default ancestral: the paper's full chain, valid for "
                             "every objective)")
    parser.add_argument("--batch-size", type=int, default=125)
    parser.add_argument("--sample-args", nargs="*", default=[], help="more sample.py overrides for every evaluation")
    args = parser.parse_args(argv)
    if not args.multirun_dir.is_dir():
        parser.error(f"{args.multirun_dir} is not a directory")
    if args.evaluate:
        evaluate_jobs(args.multirun_dir, fid_samples=args.fid_samples, nll_images=args.nll_images,
                      sampler=args.sampler, batch_size=args.batch_size, extra=args.sample_args)
    table = render(find_jobs(args.multirun_dir))
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return table


if __name__ == "__main__":
    from ddpm.cli import user_errors

    with user_errors():
        sys.exit(0 if main() else 1)
