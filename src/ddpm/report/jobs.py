"""The report's rows: each job directory of a multirun read into a :class:`Job` (its objective, training
settings and summary, the sample.py evaluations below it), and the paper's Table 2 rows."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ddpm.config import CONF_DIR

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


def fmt_number(x: float) -> str:
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


def is_number(v: object) -> bool:
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
        if not is_number(value) or key.endswith(("_std", "_torch_fidelity")):
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
        if mfile.name == "nll.json" and is_number(m.get("bpd")):
            nlls.append((int(m.get("num_images") or 0), mfile.parent, read_nll(m)))
        elif mfile.name == "metrics.json" and (mfile.parent / "samples.npz").is_file() and "fid_extractor" in m \
                and is_number(m.get("seed")):  # a seed set: pooled with the others of its protocol
            key = f"{_how(m)}, against the {m.get('ref_split', 'train')} split"
            job.seed_sets.setdefault(key, []).append(SetRun(mfile.parent, int(m["seed"]), m))
        elif mfile.name == "metrics.json":
            read_sample_metrics(m, job)
    for runs in job.seed_sets.values():
        runs.sort(key=lambda r: r.seed)
    if nlls:
        _, job.nll_dir, job.nll = max(nlls, key=lambda x: x[0])  # the one over the most images
    elif is_number(train.get("val/bpd")):
        job.nll = Figure(
            float(train["val/bpd"]),
            "NLL: the training run's val/bpd, an estimate of the bound with one t per image (+ the exact L_0), "
            f"{_get(cfg, 'trainer.limit_val_batches')} validation batch(es), EMA weights; no nll.json found",
        )
    if not job.fid and not job.seed_sets and is_number(train.get("digits/fid")):
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
