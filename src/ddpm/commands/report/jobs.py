"""The report's rows: each job directory of a multirun read into a :class:`Job` (its objective, training
settings and summary, the sample.py evaluations below it), and the paper's Table 2 rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ddpm.core.config import CONF_DIR
from ddpm.services.metrics.records import Record, evaluations, train_records, train_summary

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


# Beyond Table 2 (issue 33, python train.py -m sweep=objectives_digits): rows compared with the paper's L_simple
# row on the same seeds. A row's name is its objective option, with "_<schedule>" unless the schedule is linear
# (:func:`row_name`); a row of another name is still reported, labelled by its name.
EXTENDED_ROWS: list[tuple[str, str]] = [
    ("v_mse", "beyond the paper: v prediction, ‖v − v_θ‖²"),
    ("simple_min_snr", "beyond the paper: L_simple weighted by min-SNR-γ"),
    ("v_min_snr", "beyond the paper: v prediction weighted by min-SNR-γ"),
    ("simple_cosine", "beyond the paper: L_simple, cosine schedule"),
    ("simple_min_snr_cosine", "beyond the paper: best two combined (min-SNR-γ, cosine schedule)"),
]


def objective_fields() -> dict[str, tuple[str, str, str, str]]:
    """Each ``conf/objective`` option (a Table 2 row, or one beyond it) as ``(mean_type, "learned" | "fixed",
    loss_type, loss_weight)``, read from its YAML: the configs are the one place the rows are defined."""
    out = {}
    for path in sorted((CONF_DIR / "objective").glob("*.yaml")):
        node = yaml.safe_load(path.read_text())
        var = "learned" if str(node["var_type"]).startswith("learned") else "fixed"
        out[path.stem] = (str(node["mean_type"]), var, str(node["loss_type"]), str(node.get("loss_weight", "none")))
    return out


def row_names() -> list[str]:
    """Every row name the report knows: the objective options and the extended table's rows."""
    return sorted(set(objective_fields()) | {name for name, _ in EXTENDED_ROWS})


# Training settings shown above the table (dotted paths into the job's config); rows should differ only in objective.
SETTINGS = [
    "data._target_", "data.batch_size", "model.ch", "model.ch_mult", "model.num_res_blocks", "diffusion.schedule",
    "diffusion.num_timesteps", "optim.lr", "optim.lr_decay", "optim.warmup_steps", "optim.ema_decay", "optim.t_sampler",
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
    sets: list  # ddpm.services.metrics.pooled.SetFeatures, in the order of seeds
    scores: dict  # ddpm.services.metrics.pooled.pooled_scores
    digits: dict | None = None  # confidence / class entropy, pooled and per set (digits extractor only)
    ref: object = None  # the FID's reference statistics (ddpm.services.metrics.refstats.RefStats)
    splits: int = 10  # IS splits
    # every extractor's view, sample.py's first (on digits: A, then B): name -> {"sets", "scores", "ref"}
    by_extractor: dict = field(default_factory=dict)


@dataclass
class Job:
    path: Path
    objective: str
    fields: tuple[str, ...]
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


def objective_name(obj: dict, schedule: object = None) -> tuple[str, tuple[str, ...]]:
    """The row of a job's ``objective`` node and ``diffusion.schedule``: the objective option with the same fields
    (``"other"`` for none), ``_<schedule>`` appended unless the schedule is linear; and the fields shown in the
    table (mean/variance/loss, and the loss weight where there is one)."""
    var = str(obj.get("var_type", ""))
    mean, loss = str(obj.get("mean_type", "")), str(obj.get("loss_type", ""))
    weight = str(obj.get("loss_weight") or "none")
    key = (mean, "learned" if var.startswith("learned") else "fixed", loss, weight)
    shown = (key[0], var, key[2]) + (() if weight == "none" else (weight,))
    for name, fields in objective_fields().items():
        if fields == key:
            return row_name(name, schedule), shown
    return "other", shown


def row_name(objective: str, schedule: object = None) -> str:
    return objective if schedule in (None, "", "linear") else f"{objective}_{schedule}"


def fmt_number(x: float) -> str:
    return f"{x:.2f}" if abs(x) >= 1 else f"{x:.3g}"


def _get(cfg: dict, dotted: str) -> object:
    node: object = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def read_job(path: Path) -> Job | None:
    """The row of one job directory (``None`` where it holds no ``.hydra/config.yaml``): its figures from
    :mod:`ddpm.services.metrics.records`; seed sets are kept apart to be pooled (:func:`ddpm.commands.report.findings.pool_jobs`)."""
    cfg_file = path / ".hydra" / "config.yaml"
    if not cfg_file.is_file():
        return None
    cfg = yaml.safe_load(cfg_file.read_text()) or {}
    name, fields = objective_name(cfg.get("objective", {}), _get(cfg, "diffusion.schedule"))
    data = str(_get(cfg, "data._target_") or "?").rsplit(".", 1)[-1].replace("DataModule", "")
    settings = {k: _get(cfg, k) for k in SETTINGS}
    settings["optim.t_sampler"] = settings["optim.t_sampler"] or "uniform"
    settings["optim.lr_decay"] = settings["optim.lr_decay"] or "none"  # jobs written before the option: none
    job = Job(path=path, objective=name, fields=fields, data=data, settings=settings)
    train = train_summary(path)
    job.steps = train.get("global_step")
    nlls: list[tuple[int, Path, Figure]] = []
    for ev in evaluations(path):
        if ev.is_seed_set:  # pooled with the others of its protocol
            run = SetRun(ev.path.parent, int(ev.metrics["seed"]), ev.metrics)
            job.seed_sets.setdefault(ev.fid_protocol, []).append(run)
            continue
        for r in ev.records(path):
            if r.metric == "nll":
                nlls.append((int(ev.metrics.get("num_images") or 0), ev.path.parent, _figure(r)))
            else:
                (job.fid if r.metric == "fid" else job.inception).append(_figure(r))
    for runs in job.seed_sets.values():
        runs.sort(key=lambda r: r.seed)
    train_figures = {r.metric: r for r in train_records(train, _get(cfg, "trainer.limit_val_batches"))}
    if nlls:
        _, job.nll_dir, job.nll = max(nlls, key=lambda x: x[0])  # the one over the most images
    elif "nll" in train_figures:
        job.nll = _figure(train_figures["nll"], "; no nll.json found")
    if not job.fid and not job.seed_sets and "fid" in train_figures:
        job.fid.append(_figure(train_figures["fid"]))
    return job


METRIC_PREFIX = {"fid": "FID", "is": "IS", "nll": "NLL"}


def _figure(r: Record, more: str = "") -> Figure:
    return Figure(r.value, f"{METRIC_PREFIX[r.metric]}: {r.protocol}{more}", r.std)


def find_jobs(root: Path, rows: tuple[str, ...] | None = None) -> list[Job]:
    """The jobs of a multirun directory (the directory itself and each subdirectory with a ``.hydra/config.yaml``);
    with ``rows``, only the jobs of those objectives."""
    dirs = [root] + sorted(p for p in root.iterdir() if p.is_dir())
    jobs = [j for j in (read_job(d) for d in dirs) if j is not None]
    if not jobs:
        raise FileNotFoundError(
            f"no job directories under {root} (expected <job>/.hydra/config.yaml from python train.py -m ...)"
        )
    if rows is not None:
        found = sorted({j.objective for j in jobs})
        jobs = [j for j in jobs if j.objective in rows]
        if not jobs:
            raise FileNotFoundError(f"rows={list(rows)}: no such job under {root}; its rows: {', '.join(found)}")
    return jobs
