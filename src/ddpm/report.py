"""``python -m ddpm.report MULTIRUN_DIR``: the paper's Table 2 as Markdown, our numbers beside the paper's.

Each job directory of a multirun (``python train.py -m sweep=table2``) is read for its objective
(``.hydra/config.yaml``), its training summary (``metrics.json``: optimizer steps, validation bound) and any
evaluation written into it by ``sample.py`` (any ``metrics.json`` below the job directory holding ``fid_<n>``,
``is_<n>`` or ``bpd`` keys). Every figure is printed with what stands behind it: the number of samples and the
sampler for FID/IS, the split and count for NLL, the training steps for the row.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# Paper Table 2 (CIFAR-10, unconditional; IS, FID) and Table 1 (NLL test, bits/dim). "-": unstable to train.
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


@dataclass
class Job:
    path: Path
    objective: str
    fields: tuple[str, str, str]
    data: str = "?"
    steps: int | None = None
    fid: list[str] = field(default_factory=list)
    inception: list[str] = field(default_factory=list)
    nll: list[str] = field(default_factory=list)


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


def read_job(path: Path) -> Job | None:
    cfg_file = path / ".hydra" / "config.yaml"
    if not cfg_file.is_file():
        return None
    cfg = yaml.safe_load(cfg_file.read_text())
    name, fields = objective_name(cfg.get("objective", {}))
    data = (cfg.get("data") or {}).get("_target_", "?").rsplit(".", 1)[-1].replace("DataModule", "")
    job = Job(path=path, objective=name, fields=fields, data=data)
    train_metrics = path / "metrics.json"
    if train_metrics.is_file():
        m = json.loads(train_metrics.read_text())
        job.steps = m.get("global_step")
        if "val/bpd" in m:
            job.nll.append(f"{_fmt(m['val/bpd'])} (val estimate, 1 t/image)")
    for mfile in sorted(path.rglob("metrics.json")):
        if mfile == train_metrics:
            continue
        m = json.loads(mfile.read_text())
        sampler = m.get("sampler", {})
        how = sampler if isinstance(sampler, str) else f"{sampler.get('name', '?')}{sampler.get('steps') or ''}"
        for key, value in m.items():
            if not isinstance(value, int | float):
                continue
            if re.fullmatch(r"fid_\w+", key):
                job.fid.append(f"{_fmt(value)} (n={key[4:]}, {how})")
            elif re.fullmatch(r"is_[0-9a-z]+", key):
                std = m.get(f"{key}_std")
                job.inception.append(f"{_fmt(value)}" + (f"±{std:.2f}" if std is not None else "") + f" (n={key[3:]})")
            elif key in ("bpd", "test/bpd", "nll_bpd", "total_bpd"):
                n = m.get("num_images") or m.get("n_images") or "?"
                job.nll.append(f"{value:.3f} (test, n={n})")
    return job


def find_jobs(root: Path) -> list[Job]:
    dirs = [root] + sorted(p for p in root.iterdir() if p.is_dir())
    jobs = [j for j in (read_job(d) for d in dirs) if j is not None]
    if not jobs:
        raise FileNotFoundError(
            f"no job directories under {root} (expected <job>/.hydra/config.yaml from python train.py -m ...)"
        )
    return jobs


def render(jobs: list[Job]) -> str:
    by_obj: dict[str, list[Job]] = {}
    for j in jobs:
        by_obj.setdefault(j.objective, []).append(j)
    lines = [
        "| Table 2 row | objective | data | steps | IS (ours) | FID (ours) | NLL bits/dim (ours) "
        "| IS (paper) | FID (paper) | NLL (paper) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, label, p_is, p_fid, p_nll in PAPER_ROWS:
        for j in by_obj.get(name, []) or [None]:
            if j is None:
                if name == "hybrid":
                    continue
                ours = ["not run", "", "", "", "", ""]
            else:
                ours = [f"{name} ({'/'.join(j.fields)})", j.data, str(j.steps if j.steps is not None else "?"),
                        "; ".join(j.inception) or "–", "; ".join(j.fid) or "–", "; ".join(j.nll) or "–"]
            lines.append("| " + " | ".join([label, *ours, p_is, p_fid, p_nll]) + " |")
    for j in by_obj.get("other", []):
        lines.append(f"| (not a Table 2 row) | {'/'.join(j.fields)} | {j.data} | {j.steps} | "
                     f"{'; '.join(j.inception) or '–'} | {'; '.join(j.fid) or '–'} | {'; '.join(j.nll) or '–'} | | | |")
    note = (
        "\nPaper: CIFAR-10, 800k steps, 50k samples, 1000-step ancestral sampling; FID vs the training set "
        "(TTUR), IS over 10 splits; NLL on the test set (Table 1). '–' in the paper: unstable to train. "
        "Our figures are labelled with their sample count and sampler; only n=50k full-chain figures compare "
        "with the paper's."
    )
    return "\n".join(lines) + "\n" + note


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m ddpm.report", description=__doc__.splitlines()[0])
    parser.add_argument("multirun_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    if not args.multirun_dir.is_dir():
        parser.error(f"{args.multirun_dir} is not a directory")
    table = render(find_jobs(args.multirun_dir))
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return table


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
