"""``python -m ddpm.report multirun_dir=DIR``: the paper's Table 2 as Markdown, our numbers beside the paper's.

A Hydra app: its settings, their defaults and comments are in ``conf/report.yaml`` (``--help`` lists them).

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

``evaluate=true`` first runs the evaluations of every job that has finished training (``python sample.py`` as a
user would, one process per evaluation): ``seed_sets=K`` sets of ``fid_samples=N`` images (``seed=0..K-1``, into
``JOBDIR/eval/fid<N>_<sampler>_seed<k>``) and the full NLL bound (``JOBDIR/eval/nll_test<M>``). An evaluation
whose output exists and is newer than the job's checkpoint is skipped, so a rerun continues set by set where a
killed one stopped.

Seed sets: sample.py outputs with ``samples.npz`` that differ only in ``seed`` are one protocol's seed sets. The
report scores them with the extractor and reference statistics sample.py used (:mod:`ddpm.metrics.samples`) and
gives FID and IS pooled over all sets with the per-set values and their spread (:mod:`ddpm.metrics.pooled`), and
for the digits the classifier's confidence and class entropy (:mod:`ddpm.metrics.digits_score`), which still
separate rows where FID on 8x8 digits is near the real-data level.

Paper findings: each is one or more paired comparisons (:data:`FINDINGS`): rows share seeds, so image ``i`` of
seed set ``k`` has the same noise in both rows, and the NLL is a bound per test image on the same images and
noise. A comparison says *reproduced* only when the paired difference has the paper's sign on every set or its
paired bootstrap interval excludes 0 (:func:`ddpm.metrics.pooled.verdict`), *the opposite* when it is reversed
that way, and *not resolved at this budget* otherwise; each line shows the numbers it rests on.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist

import numpy as np
import yaml
from omegaconf import DictConfig, OmegaConf

from ddpm.cli import hydra_app
from ddpm.config import CONF_DIR, SamplerConfig
from ddpm.rundir import last_checkpoint

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


def objective_fields() -> dict[str, tuple[str, str, str]]:
    """Each ``conf/objective`` option (a Table 2 row) as ``(mean_type, "learned" | "fixed", loss_type)``, read from
    its YAML: the configs are the one place the rows are defined."""
    out = {}
    for path in sorted((CONF_DIR / "objective").glob("*.yaml")):
        node = yaml.safe_load(path.read_text())
        var = "learned" if str(node["var_type"]).startswith("learned") else "fixed"
        out[path.stem] = (str(node["mean_type"]), var, str(node["loss_type"]))
    return out
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




@dataclass(frozen=True)
class Comparison:
    """``metric(a) - metric(b)`` on the same seeds (FID, IS, digits confidence) or test images (NLL); ``sign``:
    the sign the paper's finding predicts; ``paper``: the paper's figures for ``a`` and ``b``."""

    metric: str  # fid | is | confidence | nll
    a: str
    b: str
    sign: int
    paper: str = ""


@dataclass(frozen=True)
class Finding:
    label: str
    claim: str
    comparisons: tuple[Comparison, ...]


# The paper's findings from Table 2 (sec. 4.2), each as paired comparisons with the sign it predicts.
FINDINGS: tuple[Finding, ...] = (
    Finding("(1)", "L_simple gives the best sample quality", (
        Comparison("fid", "simple", "eps_vlb_fixed", -1, "FID 3.17 against 13.51"),
        Comparison("is", "simple", "eps_vlb_fixed", +1, "IS 9.46 against 7.67"),
        Comparison("confidence", "simple", "eps_vlb_fixed", +1, "beyond the paper: the digits classifier"),
        Comparison("fid", "simple", "eps_vlb_learned", -1, "FID 3.17 against – (unstable)"),
        Comparison("fid", "simple", "mu_vlb_fixed", -1, "FID 3.17 against 13.22"),
        Comparison("fid", "simple", "mu_vlb_learned", -1, "FID 3.17 against 23.69"),
        Comparison("fid", "simple", "mu_mse", -1, "FID 3.17 against – (unstable)"),
    )),
    Finding("(2)", "with a fixed variance the true bound gives a better NLL than L_simple", (
        Comparison("nll", "eps_vlb_fixed", "simple", -1, "≤ 3.70 against ≤ 3.75 bits/dim"),
    )),
    Finding("(3)", "mu~ prediction trains with the true bound, not with the MSE", (
        Comparison("fid", "mu_vlb_fixed", "mu_mse", -1, "FID 13.22 against – (unstable)"),
        Comparison("nll", "mu_vlb_fixed", "mu_mse", -1, "no NLL in the paper"),
    )),
    Finding("(4)", "a learned variance gives worse samples than a fixed one (and trains less stably)", (
        Comparison("fid", "eps_vlb_learned", "eps_vlb_fixed", +1, "FID – (unstable) against 13.51"),
        Comparison("fid", "mu_vlb_learned", "mu_vlb_fixed", +1, "FID 23.69 against 13.22"),
    )),
)
METRIC_TEXT = {"fid": "FID", "is": "IS", "confidence": "digits confidence", "nll": "NLL (bits/dim)"}


@dataclass
class Figure:
    value: float
    protocol: str  # what stands behind the number, stated once under the table
    std: float | None = None
    note: str = ""  # e.g. the range of the per-set values of a pooled figure


@dataclass
class SetRun:
    """One seed set: a sample.py output directory with ``samples.npz`` and a scored ``metrics.json``."""

    path: Path
    seed: int
    metrics: dict


@dataclass
class Pooled:
    """The seed sets of one protocol, scored together (:func:`pool_jobs`)."""

    protocol: str  # what the sets have in common (sample count, sampler, extractor, reference)
    seeds: list[int]
    n: int  # images per set
    sets: list  # ddpm.metrics.pooled.SetFeatures, in the order of seeds
    scores: dict  # ddpm.metrics.pooled.pooled_scores
    digits: dict | None = None  # confidence / class entropy, pooled and per set (digits extractor only)
    ref: object = None  # the FID's reference statistics (ddpm.metrics.refstats.RefStats)
    splits: int = 10  # IS splits


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
    nll_dir: Path | None = None
    seed_sets: dict[str, list[SetRun]] = field(default_factory=dict)  # protocol -> its seed sets
    pooled: list[Pooled] = field(default_factory=list)

    @property
    def stopped_early(self) -> bool:
        """Whether training ended before its ``trainer.max_steps`` (preempted, or stopped by a NaN)."""
        max_steps = self.settings.get("trainer.max_steps")
        return isinstance(max_steps, int) and max_steps > 0 and self.steps is not None and self.steps < max_steps

    @property
    def primary(self) -> Pooled | None:
        """The pooled protocol with the most images (what the seed-set table and the findings use)."""
        return max(self.pooled, key=lambda p: (p.n * len(p.seeds), p.protocol), default=None)


def objective_name(obj: dict) -> tuple[str, tuple[str, str, str]]:
    var = str(obj.get("var_type", ""))
    mean, loss = str(obj.get("mean_type", "")), str(obj.get("loss_type", ""))
    key = (mean, "learned" if var.startswith("learned") else "fixed", loss)
    for name, fields in objective_fields().items():
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


def _how(m: dict) -> str:
    """What stands behind a sample.py metrics.json's figures, the seed aside."""
    n, extractor = m.get("num_samples", "?"), m.get("fid_extractor", "?")
    return f"sample.py, {n} samples, {_sampler_text(m.get('sampler', '?'))}, EMA weights; {extractor} features"


def read_sample_metrics(m: dict, job: Job) -> None:
    """FID/IS of one ``sample.py compute_fid=true`` metrics.json (the ddpm backend's keys)."""
    ref = m.get("ref_split", "train")
    how = _how(m)
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
            nlls.append((int(m.get("num_images") or 0), mfile.parent, read_nll(m)))
        elif mfile.name == "metrics.json" and (mfile.parent / "samples.npz").is_file() and "fid_extractor" in m \
                and _is_number(m.get("seed")):  # a seed set: pooled with the others of its protocol
            key = f"{_how(m)}, against the {m.get('ref_split', 'train')} split"
            job.seed_sets.setdefault(key, []).append(SetRun(mfile.parent, int(m["seed"]), m))
        elif mfile.name == "metrics.json":
            read_sample_metrics(m, job)
    for runs in job.seed_sets.values():
        runs.sort(key=lambda r: r.seed)
    if nlls:
        _, job.nll_dir, job.nll = max(nlls, key=lambda x: x[0])  # the one over the most images
    elif _is_number(train.get("val/bpd")):
        job.nll = Figure(
            float(train["val/bpd"]),
            "NLL: the training run's val/bpd, an estimate of the bound with one t per image (+ the exact L_0), "
            f"{_get(cfg, 'trainer.limit_val_batches')} validation batch(es), EMA weights; no nll.json found",
        )
    if not job.fid and not job.seed_sets and _is_number(train.get("digits/fid")):
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
            note = f" ({f.note})" if f.note else ""
            parts.append(f"{_fmt(f.value)}{std}{note} [{self.mark(f.protocol)}]")
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


def render(jobs: list[Job], findings: list[tuple[Finding, list[dict]]] | None = None) -> str:
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
            steps = "?" if j.steps is None else (
                f"{j.steps} of {j.settings['trainer.max_steps']}, stopped early" if j.stopped_early else j.steps)
            rows.append(
                f"| {label} | {name} ({'/'.join(j.fields)}{which}) | {steps} "
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
    out += _seed_set_lines(jobs)
    if findings:
        out += [""] + findings_lines(findings)
    return "\n".join(out)


def _values(values: list[float], digits: int = 2) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)


def _seed_set_lines(jobs: list[Job]) -> list[str]:
    """Per row, the pooled protocol's figures on each seed set and their spread."""
    order = [name for name, *_ in PAPER_ROWS]
    pooled = sorted(((j, j.primary) for j in jobs if j.primary is not None),
                    key=lambda jp: (order.index(jp[0].objective) if jp[0].objective in order else len(order),
                                    jp[0].path.name))
    if not pooled:
        return []
    digits = any(p.digits for _, p in pooled)
    head = "| row | seed sets | FID per set | FID pooled | std of the set FIDs | IS per set | IS pooled |"
    head += " confidence pooled (per set) | class entropy, bits (per set) |" if digits else ""
    out = ["", "**Seed sets** (each row's pooled protocol; per-set values in the order of the seeds; std with "
           "ddof=1):", "", head, "|" + "---|" * head.count(" |")]
    for j, p in pooled:
        sc = p.scores
        is_sets, is_pooled = ((_values(sc["is_sets"]), f"{sc['is']:.2f}") if sc["is"] is not None else ("–", "–"))
        line = (f"| {j.objective} | {len(p.seeds)} x {p.n} (seeds {', '.join(map(str, p.seeds))}) | "
                f"{_values(sc['fid_sets'])} | {sc['fid']:.2f} | {sc['fid_spread']['std']:.2f} | {is_sets} | "
                f"{is_pooled} |")
        if digits:
            d = p.digits
            line += (f" {d['confidence']:.3f} ({_values(d['confidence_sets'], 3)}) | {d['class_entropy']:.2f} "
                     f"({_values(d['class_entropy_sets'])}) |") if d else " – | – |"
        out.append(line)
    protocols = sorted({p.protocol for _, p in pooled})
    out += [""] + [f"Protocol: {x}." for x in protocols]
    if digits:
        out.append("Confidence: the digits classifier's mean max softmax probability (real held-out digits: 0.96); "
                   "class entropy: of the histogram of its predicted classes (max log2 10 = 3.32; low is mode "
                   "collapse). FID on 8x8 digits comes close to the real-data level; these two measure something "
                   "else: whether each image is a digit the classifier recognises, and whether all ten occur.")
    return out


def _signed(v: float) -> str:
    return f"{v:+.3f}" if abs(v) < 1 else f"{v:+.2f}"


def _budget(r: dict) -> str:
    """For an unresolved comparison: how many units (seed sets, test images) would make the interval exclude 0
    if the difference stayed what it is, from the interval's width shrinking like 1/sqrt(units). An
    extrapolation, said as one."""
    from ddpm.metrics.pooled import UNRESOLVED

    if r.get("verdict") != UNRESOLVED or "units" not in r:
        return ""
    (lo, hi), m = r["ci"], r["pooled"]
    n, what = r["units"]
    if not (_is_number(m) and abs(m) > 1e-12 and hi > lo):
        return f" (no difference to resolve at {n} {what})"
    need = math.ceil(n * ((hi - lo) / 2 / abs(m)) ** 2)
    return (f" (were the pooled difference real, about {need} {what} would make the interval exclude 0: an "
            "extrapolation from its width)")


def findings_lines(findings: list[tuple[Finding, list[dict]]]) -> list[str]:
    """The paper's findings, each comparison with its verdict and the numbers it rests on."""
    out = ["**The paper's findings, as paired comparisons** (rows share seeds: image i of seed set k has the same "
           "noise in every row; the NLL is per test image on the same images and noise). Each line: the "
           "difference a − b, the sign the paper predicts, the pooled difference, the per-set differences, the "
           "paired bootstrap interval. *reproduced*: the per-set differences all have the predicted sign, or the "
           "interval excludes 0 on that side; *the opposite*: the same the other way; else *not resolved at this "
           "budget*.", ""]
    for finding, results in findings:
        out.append(f"{finding.label} *{finding.claim}*:")
        for r in results:
            c: Comparison = r["comparison"]
            paper = c.paper if c.paper.startswith("beyond the paper") else f"paper: {c.paper}"
            what = (f"{METRIC_TEXT[c.metric]} {c.a} − {c.b}, predicted {'< 0' if c.sign < 0 else '> 0'}"
                    + (f" ({paper})" if c.paper else ""))
            if "verdict" not in r:
                out.append(f"- {what}: not evaluated, {r.get('missing', '?')}")
                continue
            lo, hi = r["ci"]
            nums = f"pooled {_signed(r['pooled'])}"
            if r.get("per_set"):
                nums += f"; per set {', '.join(_signed(v) for v in r['per_set'])} ({r['how']})"
            else:
                nums += f"; {r['how']}"
            kind = "paired bootstrap" if r.get("per_set") else "normal"
            nums += f"; {r['level']:.0%} {kind} interval [{_signed(lo)}, {_signed(hi)}]"
            out.append(f"- {what}: {nums}: **{r['verdict']}**{_budget(r)}")
        out.append("")
    return out[:-1]


def _range(values: list[float]) -> str:
    return f"{_fmt(min(values))}–{_fmt(max(values))} over {len(values)} sets" if len(values) > 1 else "one set"


class _Scorers:
    """The extractor and reference statistics a seed set was scored with by sample.py (its saved config's
    ``fid`` node, the job's data), loaded once per distinct setting."""

    def __init__(self) -> None:
        self.cache: dict[str, tuple] = {}

    def __call__(self, job: Job, run: SetRun) -> tuple:
        from omegaconf import OmegaConf

        from ddpm.metrics.samples import load_extractor, reference_for

        saved = run.path / ".hydra" / "config.yaml"
        if saved.is_file():
            cfg = OmegaConf.load(saved)
        else:  # sample.py run without Hydra's output dir: its defaults
            from ddpm.config import compose

            cfg = compose("sample")
        fid_cfg = cfg.fid
        job_cfg = OmegaConf.load(job.path / ".hydra" / "config.yaml")
        data_cfg = OmegaConf.to_container(job_cfg.data, resolve=True) if "data" in job_cfg else None
        key = json.dumps([OmegaConf.to_container(fid_cfg, resolve=True), data_cfg], sort_keys=True, default=str)
        if key not in self.cache:
            datamodule = None
            if not fid_cfg.ref_stats:
                from hydra.utils import instantiate

                from ddpm.data import upgrade_data_config

                datamodule = instantiate(upgrade_data_config(data_cfg))
            extractor = load_extractor(fid_cfg, getattr(datamodule, "name", None), "cpu")
            ref = reference_for(fid_cfg, extractor, datamodule, cfg.paths.cache_dir, "cpu")
            self.cache[key] = (extractor, ref, int(fid_cfg.is_splits))
        extractor, ref, splits = self.cache[key]
        m = run.metrics
        if m.get("fid_extractor") not in (None, extractor.name) or m.get("ref_sha") not in (None, ref.sha):
            raise ValueError(
                f"{run.path}: sample.py scored these samples with {m.get('fid_extractor')} against reference "
                f"statistics {str(m.get('ref_sha'))[:12]}, but here they resolve to {extractor.name} / "
                f"{ref.sha[:12]} (another DDPM_CACHE or fid.* setting?); rerun the report in the same environment"
            )
        return extractor, ref, splits


def _set_images(run: SetRun) -> np.ndarray:
    """uint8 ``[N, C, H, W]`` of a seed set's ``samples.npz`` (``arr_0`` is ``[N, H, W, 3]``)."""
    with np.load(run.path / "samples.npz", allow_pickle=False) as z:
        arr = z["arr_0"]
    channels = int((run.metrics.get("image_shape") or [arr.shape[-1]])[0])
    return np.ascontiguousarray(arr[..., :channels].transpose(0, 3, 1, 2))


def pool_jobs(jobs: list[Job]) -> None:
    """Score every job's seed sets together (:func:`ddpm.metrics.pooled.pooled_scores`): ``job.pooled``, and the
    pooled FID/IS figures in ``job.fid`` / ``job.inception`` with the range of the per-set values."""
    from ddpm.metrics.digits_classifier import DIGITS_EXTRACTOR_NAME
    from ddpm.metrics.digits_score import scores_from_logits
    from ddpm.metrics.pooled import featurise, pooled_scores

    scorers = _Scorers()
    for job in jobs:
        for protocol, runs in job.seed_sets.items():
            extractor, ref, splits = scorers(job, runs[0])
            sets = [featurise(_set_images(r), extractor) for r in runs]
            sizes = {len(x) for x in sets}
            if len(sizes) != 1:
                raise ValueError(f"{job.path}: the seed sets of one protocol differ in size: {sorted(sizes)}")
            scores = pooled_scores(sets, ref, extractor.name, splits=splits)
            digits = None
            if extractor.name == DIGITS_EXTRACTOR_NAME:
                per = [scores_from_logits(x.logits) for x in sets]
                digits = {**scores_from_logits(np.concatenate([x.logits for x in sets])),
                          "confidence_sets": [d["confidence"] for d in per],
                          "class_entropy_sets": [d["class_entropy"] for d in per]}
            seeds = [r.seed for r in runs]
            job.pooled.append(Pooled(protocol, seeds, sizes.pop(), sets, scores, digits, ref, splits))
            what = f"pooled over {len(runs)} seed set(s) (seeds {', '.join(map(str, seeds))}) of {protocol}"
            job.fid.append(Figure(scores["fid"], f"FID: {what}; in brackets the range of the per-set FIDs",
                                  note=_range(scores["fid_sets"])))
            if scores["is"] is not None:
                job.inception.append(Figure(
                    scores["is"], f"IS: {what}, {splits} splits of the pooled images (±: their std); in brackets "
                    f"the range of the per-set IS ({splits} splits of each set: smaller splits, so lower, as the IS "
                    "grows with the split size)", scores["is_std"], note=_range(scores["is_sets"])))


def _nll_per_image(job: Job) -> tuple[np.ndarray, np.ndarray, dict] | None:
    if job.nll_dir is None or not (job.nll_dir / "nll_terms.npz").is_file():
        return None
    with np.load(job.nll_dir / "nll_terms.npz", allow_pickle=False) as z:
        if "total_bpd" not in z.files or "index" not in z.files:
            return None
        index, bpd = z["index"], z["total_bpd"]
    return index, bpd, json.loads((job.nll_dir / "nll.json").read_text())


def _compare_nll(a: Job, b: Job, level: float) -> dict:
    """The per-image paired difference of the NLL bound (same test images, same ``nll_seed``), or from the two
    standard errors where a row has no per-image values."""
    z = NormalDist().inv_cdf(0.5 + level / 2)
    pa, pb = _nll_per_image(a), _nll_per_image(b)
    if pa and pb and (pa[2].get("nll_seed"), pa[2].get("split")) == (pb[2].get("nll_seed"), pb[2].get("split")):
        common, ia, ib = np.intersect1d(pa[0], pb[0], return_indices=True)
        if len(common) > 1:
            d = pa[1][ia] - pb[1][ib]
            mean, se = float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))
            return {"pooled": mean, "ci": (mean - z * se, mean + z * se), "per_set": [], "level": level,
                    "units": (len(d), "test images"),
                    "how": f"paired per test image ({len(d)} images, the same noise seed): mean difference "
                           f"{mean:+.3f} (se {se:.3f}); {int((np.sign(d) == np.sign(mean)).sum())} of {len(d)} "
                           "images on its side"}
    if a.nll is None or b.nll is None or not (_is_number(a.nll.std) and _is_number(b.nll.std)):
        return {}
    mean = a.nll.value - b.nll.value
    se = math.hypot(float(a.nll.std), float(b.nll.std))
    return {"pooled": mean, "ci": (mean - z * se, mean + z * se), "per_set": [], "level": level,
            "how": f"unpaired (no per-image values): {_fmt(a.nll.value)} − {_fmt(b.nll.value)}, se from the two "
                   "rows' standard errors"}


def compare(jobs: list[Job], *, num_boot: int = 200, level: float = 0.95) -> list[tuple[Finding, list[dict]]]:
    """Every comparison of :data:`FINDINGS` on ``jobs`` (after :func:`pool_jobs`): its paired differences, the
    interval and :func:`ddpm.metrics.pooled.verdict`."""
    from ddpm.metrics.digits_score import image_confidences
    from ddpm.metrics.fid import inception_score
    from ddpm.metrics.pooled import paired_bootstrap, verdict

    by_obj: dict[str, Job] = {}
    for j in jobs:
        by_obj.setdefault(j.objective, j)  # the first job of a row (several: the table names them all)
    out = []
    for finding in FINDINGS:
        results = []
        for c in finding.comparisons:
            a, b = by_obj.get(c.a), by_obj.get(c.b)
            res: dict = {"comparison": c}
            if a is None or b is None:
                res["missing"] = "not run: " + " and ".join(x for x, j in ((c.a, a), (c.b, b)) if j is None)
            elif c.metric == "nll":
                res.update(_compare_nll(a, b, level) or {"missing": "no NLL with a standard error in both rows"})
            else:
                pa, pb = a.primary, b.primary
                if pa is None or pb is None:
                    res["missing"] = "no seed sets in " + " and ".join(
                        x.objective for x, p in ((a, pa), (b, pb)) if p is None)
                elif pa.protocol != pb.protocol:
                    res["missing"] = f"the rows were sampled differently ({pa.protocol} / {pb.protocol})"
                elif c.metric == "confidence" and (pa.digits is None or pb.digits is None):
                    res["missing"] = "the confidence is the digits classifier's (digits only)"
                elif not (seeds := [k for k in pa.seeds if k in pb.seeds]):
                    res["missing"] = f"no seed set in common (seeds {pa.seeds} / {pb.seeds})"
                else:
                    sa = [pa.sets[pa.seeds.index(k)] for k in seeds]
                    sb = [pb.sets[pb.seeds.index(k)] for k in seeds]
                    stat = {"fid": None,
                            "is": lambda x, k=pa.splits: inception_score(x.logits, splits=k)[0],
                            "confidence": lambda x: float(image_confidences(x.logits).mean())}[c.metric]
                    boot = paired_bootstrap(sa, sb, pa.ref, num_boot=num_boot, level=level, statistic=stat)
                    res.update(boot, seeds=seeds, how=f"{len(seeds)} seed sets of {pa.n}",
                               units=(len(seeds), f"seed sets of {pa.n}"))
            if "ci" in res:  # one set's sign is no rule: then only the interval decides
                res["verdict"] = verdict(res["per_set"] if len(res["per_set"]) > 1 else [], c.sign, res["ci"])
            results.append(res)
        out.append((finding, results))
    return out


SAMPLE_PY = CONF_DIR.parent / "sample.py"  # the entry point beside conf/


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


def options(cfg: DictConfig) -> Options:
    """The report's :class:`Options` from its composed config (``conf/report.yaml``); a bad value is a
    ``ValueError`` naming the key."""
    if OmegaConf.is_missing(cfg, "multirun_dir"):
        raise ValueError("multirun_dir=PATH is required: the sweep's directory (hydra.sweep.dir of "
                         "python train.py -m ...), one job directory per row")
    root = Path(str(cfg.multirun_dir)).expanduser()
    if not root.is_dir():
        raise ValueError(f"multirun_dir={cfg.multirun_dir}: not a directory")
    for key, low in (("seed_sets", 1), ("fid_samples", 2), ("nll_images", 1), ("batch_size", 1), ("num_boot", 1)):
        if int(cfg[key]) < low:
            raise ValueError(f"{key}={cfg[key]} is not valid: expected an integer >= {low}")
    return Options(
        multirun_dir=root, out=Path(str(cfg.out)) if cfg.out else None, evaluate=bool(cfg.evaluate),
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
    """``(output dir, output file, sample.py overrides)`` of a job's evaluations: ``opts.seed_sets`` sets of
    ``opts.fid_samples`` images with ``opts.sampler`` (seed ``k`` for set ``k``, scored with the dataset's
    extractor), and the full NLL bound on the first ``opts.nll_images`` test images."""
    out = []
    for k in range(opts.seed_sets):
        out.append((job / "eval" / f"fid{opts.fid_samples}_{opts.sampler.num_steps_label}_seed{k}", "metrics.json",
                    [f"num_samples={opts.fid_samples}", f"seed={k}", f"batch_size={opts.batch_size}",
                     "compute_fid=true", *sampler_overrides(opts.sampler)]))
    out.append((job / "eval" / f"nll_test{opts.nll_images}", "nll.json",
                ["nll=true", "nll_split=test", f"nll_max_images={opts.nll_images}",
                 f"nll_batch_size={opts.batch_size}"]))
    return out


def evaluate_jobs(opts: Options) -> list[list[str]]:
    """Run the missing evaluations of every finished job under ``opts.multirun_dir``; returns the commands it
    ran."""
    ran = []
    for job in find_jobs(opts.multirun_dir):
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
            cmd = [sys.executable, str(SAMPLE_PY), f"ckpt_path={job.path}", *overrides, f"out_dir={out_dir}",
                   f"hydra.run.dir={out_dir}", "progress=false", *opts.sample_args]
            print(f"[report] {job.path.name}: {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:  # sample.py's own "Error: ..." (or traceback) says why
                raise ValueError(f"evaluation of {job.path} failed; rerun it to see why: {' '.join(cmd[1:])}\n"
                                 + (proc.stdout + proc.stderr)[-2000:].strip())
            ran.append(cmd)
    return ran


def report(opts: Options) -> str:
    """The report of ``opts.multirun_dir`` (after running the evaluations with ``opts.evaluate``)."""
    if opts.evaluate:
        evaluate_jobs(opts)
    jobs = find_jobs(opts.multirun_dir)
    pool_jobs(jobs)
    findings = compare(jobs, num_boot=opts.num_boot) if any(j.pooled or j.nll_dir for j in jobs) else None
    text = render(jobs, findings)
    if opts.out:
        opts.out.write_text(text + "\n")
    return text


def main() -> None:
    """``python -m ddpm.report``: the report of conf/report.yaml with the command line's overrides, printed."""
    hydra_app("report", lambda cfg: print(report(options(cfg))))


if __name__ == "__main__":
    main()
