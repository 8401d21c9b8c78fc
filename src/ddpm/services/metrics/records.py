"""What a run directory's metric files say, read once for every command that shows them (the report's table, the
export's model card): train.py's summary ``RUN/metrics.json`` and the evaluations that sample.py wrote below the
run (``metrics.json`` with ``fid_<n>[_<sampler>]`` / ``is_<n>[...]`` keys, ``nll.json``), each figure with the
protocol that stands behind it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ddpm.core.rundir import METRICS as TRAIN_SUMMARY  # train.py's summary, in the run directory itself


def is_number(v: object) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))


def read_json(path: Path) -> dict:
    """A JSON object file, or ``{}`` where it cannot be read (a half-written or foreign file is no figure)."""
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return m if isinstance(m, dict) else {}


def sampler_text(sampler: object) -> str:
    """A metrics file's ``sampler`` (sample.py's dict, or an older run's label like ``respaced100``) in words."""
    if isinstance(sampler, dict):
        steps = f", {sampler['steps']} steps" if sampler.get("steps") else ""
        eta = f", eta {sampler['eta']}" if sampler.get("eta") not in (None, 0, 0.0) else ""
        var = f", variance {sampler['var_type']}" if sampler.get("var_type") else ""
        return f"{sampler.get('name', '?')} sampler{steps}{eta}{var}"
    m = re.fullmatch(r"([a-z_]+?)(\d*)", str(sampler))
    if m and m.group(2):
        return f"{m.group(1)} sampler, {m.group(2)} steps"
    return f"{sampler} sampler"


def _weights(m: dict) -> str:
    return "raw weights" if m.get("use_ema") is False else "EMA weights"


@dataclass(frozen=True)
class Record:
    """One figure of a run: ``metric`` is ``fid``, ``is`` or ``nll`` (bits/dim, an upper bound); ``protocol``: what
    stands behind it, in words; ``source``: the file (relative to the run directory) and key it was read from."""

    metric: str
    value: float
    protocol: str
    source: str
    std: float | None = None


@dataclass(frozen=True)
class Evaluation:
    """One sample.py output below a run: its ``metrics.json`` (FID/IS) or ``nll.json`` and what it holds."""

    path: Path
    metrics: dict

    @property
    def kind(self) -> str:
        return "nll" if self.path.name == "nll.json" else "samples"

    @property
    def is_seed_set(self) -> bool:
        """A scored sample set with its images and seed: one seed set of a protocol, to be pooled with the others
        that differ from it only in the seed."""
        m = self.metrics
        return (self.kind == "samples" and (self.path.parent / "samples.npz").is_file() and "fid_extractor" in m
                and is_number(m.get("seed")))

    @property
    def protocol(self) -> str:
        """What stands behind the figures, the seed aside (seed sets with the same protocol are pooled)."""
        m = self.metrics
        if self.kind == "nll":
            return (f"≤ the full bound from python -m ddpm.nll, {m.get('split', '?')} split, "
                    f"{m.get('num_images', '?')} images, all {m.get('num_timesteps', 'all')} terms + prior, "
                    f"{_weights(m)}")
        return (f"sample.py, {m.get('num_samples', '?')} samples, {sampler_text(m.get('sampler', '?'))}, "
                f"{_weights(m)}; {m.get('fid_extractor', '?')} features")

    @property
    def fid_protocol(self) -> str:
        """:attr:`protocol` and the FID's reference split (what seed sets pooled together share)."""
        return f"{self.protocol}, against the {self.metrics.get('ref_split', 'train')} split"

    def records(self, run_dir: Path) -> list[Record]:
        """Its figures: the NLL bound, or every FID and IS key (with the IS's std)."""
        m, where = self.metrics, self.path.relative_to(run_dir).as_posix()
        if self.kind == "nll":
            if not is_number(m.get("bpd")):
                return []
            sem = m.get("bpd_sem")
            return [Record("nll", float(m["bpd"]), self.protocol, f"{where} bpd", sem if is_number(sem) else None)]
        out = []
        for key, value in m.items():
            if not is_number(value) or key.endswith(("_std", "_torch_fidelity")) or key == "is_splits":
                continue
            if key.startswith("fid_"):
                out.append(Record("fid", float(value), self.fid_protocol, f"{where} {key}"))
            elif key.startswith("is_"):
                std = m.get(key + "_std")
                out.append(Record("is", float(value), f"{self.protocol}, {m.get('is_splits', '?')} splits",
                                  f"{where} {key}", float(std) if is_number(std) else None))
        return out


def evaluations(run_dir: Path) -> list[Evaluation]:
    """Every readable sample.py output below ``run_dir`` (any depth), in path order; train.py's summary is not
    one."""
    out = []
    for path in sorted(run_dir.rglob("*.json")):
        if path.name not in ("metrics.json", "nll.json") or path == run_dir / TRAIN_SUMMARY:
            continue
        m = read_json(path)
        if m:
            out.append(Evaluation(path, m))
    return out


def train_summary(run_dir: Path) -> dict:
    """train.py's ``metrics.json`` (``global_step``, ``val/bpd``, on digits ``digits/fid``...), ``{}`` if none."""
    return read_json(run_dir / TRAIN_SUMMARY)


def train_records(train: dict, val_batches: object = None) -> list[Record]:
    """The figures of train.py's summary: the final samples' digits FID and the validation estimate of the
    bound (over ``val_batches`` validation batches, where known: the run's ``trainer.limit_val_batches``)."""
    out = []
    if is_number(train.get("digits/fid")):
        out.append(Record(
            "fid", float(train["digits/fid"]),
            f"train.py's final samples, {train.get('final_samples', '?')} samples, "
            f"{sampler_text(train.get('final_sampler', '?'))}, EMA weights; digits features, against the train split",
            f"{TRAIN_SUMMARY} digits/fid"))
    if is_number(train.get("val/bpd")):
        out.append(Record(
            "nll", float(train["val/bpd"]),
            "the training run's val/bpd, an estimate of the bound with one t per image (+ the exact L_0), "
            + (f"{val_batches} validation batch(es), " if val_batches is not None else "") + "EMA weights",
            f"{TRAIN_SUMMARY} val/bpd"))
    return out
