"""The paper's findings as paired comparisons: every seed set scored and pooled (:func:`pool_jobs`), then each
comparison of :data:`FINDINGS` with its paired differences, interval and verdict (:func:`compare`).

On the digits every seed set is scored by both digits extractors (A, ``ddpm-digits``, the one sample.py scored
with; B, ``ddpm-digits-b``, trained apart), and a comparison's verdict is :func:`ddpm.services.metrics.pooled.verdict`
over both: stated only when both agree and each one's interval (images resampled and the spread between seed
sets, :func:`ddpm.services.metrics.pooled.verdict_interval`) excludes 0.

:class:`Scorers` and :func:`set_images` are public: ``bench/subset_fid.py`` scores seed sets the same way."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from ddpm.commands.report.jobs import EXTENDED_ROWS, PAPER_ROWS, Figure, Job, Pooled, SetRun, fmt_number
from ddpm.services.metrics.records import is_number

__all__ = ["FINDINGS", "Comparison", "Finding", "Scorers", "compare", "pool_jobs", "set_images"]


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
        Comparison("confidence", "mu_vlb_fixed", "mu_mse", +1, "beyond the paper: the digits classifier"),
        Comparison("nll", "mu_vlb_fixed", "mu_mse", -1, "no NLL in the paper"),
    )),
    Finding("(4)", "a learned variance gives worse samples than a fixed one (and trains less stably)", (
        Comparison("fid", "eps_vlb_learned", "eps_vlb_fixed", +1, "FID – (unstable) against 13.51"),
        Comparison("confidence", "eps_vlb_learned", "eps_vlb_fixed", -1, "beyond the paper: the digits classifier"),
        Comparison("fid", "mu_vlb_learned", "mu_vlb_fixed", +1, "FID 23.69 against 13.22"),
        Comparison("confidence", "mu_vlb_learned", "mu_vlb_fixed", -1, "beyond the paper: the digits classifier"),
    )),
)


def extended_finding(rows: list[str]) -> Finding:
    """Beyond Table 2 (issue 33): each row that is not one of the paper's against the paper's L_simple row, on the
    same seeds and steps, with the sign that says the option helps."""
    return Finding("(5)", "beyond the paper: each option gives better samples than L_simple (the paper's row) at the "
                   "same step budget", tuple(c for row in rows for c in (
                       Comparison("fid", row, "simple", -1, "beyond the paper"),
                       Comparison("confidence", row, "simple", +1, "beyond the paper: the digits classifier"))))


def _findings(jobs: list[Job]) -> list[Finding]:
    """:data:`FINDINGS`, and with rows beyond Table 2 (:func:`extended_finding`) the paper's findings that compare
    two rows that were run, then the extended one."""
    paper = {name for name, *_ in PAPER_ROWS}
    run = {j.objective for j in jobs}
    order = [name for name, _ in EXTENDED_ROWS]
    extended = sorted(run - paper - {"other"}, key=lambda n: (order.index(n) if n in order else len(order), n))
    if not extended:
        return list(FINDINGS)
    kept = [f for f in FINDINGS if any(c.a in run and c.b in run for c in f.comparisons)]
    return kept + [extended_finding(extended)]


def _range(values: list[float]) -> str:
    if len(values) < 2:
        return "one set"
    return f"{fmt_number(min(values))}–{fmt_number(max(values))} over {len(values)} sets"


class Scorers:
    """The extractor and reference statistics a seed set was scored with by sample.py (its saved config's
    ``fid`` node, the job's data), loaded once per distinct setting; :meth:`all_extractors` adds digits extractor
    B and the reference images' features."""

    def __init__(self) -> None:
        self.cache: dict[str, tuple] = {}  # setting -> (extractor, ref, splits)
        self.settings: dict[str, tuple] = {}  # setting -> (datamodule, fid config, cache dir)
        self.more: dict[str, list] = {}  # setting -> all_extractors
        self.keys: dict[tuple[str, str], str] = {}  # (job, seed set) -> setting

    def all_extractors(self, job: Job, run: SetRun) -> list[tuple]:
        """``[(extractor, ref, ref_features)]``: sample.py's extractor first, then (when it is digits extractor A
        and the reference comes from the data) digits extractor B with the same reference split;
        ``ref_features``: :class:`ddpm.services.metrics.pooled.SetFeatures` of the reference images, ``None`` when the
        reference is a statistics file."""
        extractor, ref, _ = self(job, run)
        key = self._key(job, run)
        if key not in self.more:
            from ddpm.services.metrics.samples import all_extractors

            datamodule, fid_cfg, cache_dir = self.settings[key]
            self.more[key] = all_extractors(fid_cfg, extractor, ref, datamodule, cache_dir, "cpu")
        return self.more[key]

    def _key(self, job: Job, run: SetRun) -> str:
        return self.keys[(str(job.path), str(run.path))]

    def __call__(self, job: Job, run: SetRun) -> tuple:
        from omegaconf import OmegaConf

        from ddpm.services.metrics.samples import load_extractor, reference_for

        saved = run.path / ".hydra" / "config.yaml"
        if saved.is_file():
            cfg = OmegaConf.load(saved)
        else:  # sample.py run without Hydra's output dir: its defaults
            from ddpm.core.config import compose

            cfg = compose("sample")
        fid_cfg = cfg.fid
        job_cfg = OmegaConf.load(job.path / ".hydra" / "config.yaml")
        data_cfg = OmegaConf.to_container(job_cfg.data, resolve=True) if "data" in job_cfg else None
        key = json.dumps([OmegaConf.to_container(fid_cfg, resolve=True), data_cfg], sort_keys=True, default=str)
        self.keys[(str(job.path), str(run.path))] = key
        if key not in self.cache:
            datamodule = None
            if not fid_cfg.ref_stats:
                from hydra.utils import instantiate

                datamodule = instantiate(data_cfg)
            extractor = load_extractor(fid_cfg, getattr(datamodule, "name", None), "cpu")
            ref = reference_for(fid_cfg, extractor, datamodule, cfg.paths.cache_dir, "cpu")
            self.cache[key] = (extractor, ref, int(fid_cfg.is_splits))
            self.settings[key] = (datamodule, fid_cfg, cfg.paths.cache_dir)
        extractor, ref, splits = self.cache[key]
        m = run.metrics
        if m.get("fid_extractor") not in (None, extractor.name) or m.get("ref_sha") not in (None, ref.sha):
            raise ValueError(
                f"{run.path}: sample.py scored these samples with {m.get('fid_extractor')} against reference "
                f"statistics {str(m.get('ref_sha'))[:12]}, but here they resolve to {extractor.name} / "
                f"{ref.sha[:12]} (another DDPM_CACHE or fid.* setting?); rerun the report in the same environment"
            )
        return extractor, ref, splits


def set_images(run: SetRun) -> np.ndarray:
    """uint8 ``[N, C, H, W]`` of a seed set's ``samples.npz`` (``arr_0`` is ``[N, H, W, 3]``)."""
    with np.load(run.path / "samples.npz", allow_pickle=False) as z:
        arr = z["arr_0"]
    channels = int((run.metrics.get("image_shape") or [arr.shape[-1]])[0])
    return np.ascontiguousarray(arr[..., :channels].transpose(0, 3, 1, 2))


def pool_jobs(jobs: list[Job]) -> None:
    """Score every job's seed sets together (:func:`ddpm.services.metrics.pooled.pooled_scores`): ``job.pooled``, and the
    pooled FID/IS figures in ``job.fid`` / ``job.inception`` with the range of the per-set values."""
    from ddpm.services.metrics.digits_classifier import DIGITS_EXTRACTOR_NAME
    from ddpm.services.metrics.digits_score import scores_from_logits
    from ddpm.services.metrics.pooled import featurise, pooled_scores

    scorers = Scorers()
    for job in jobs:
        for protocol, runs in job.seed_sets.items():
            extractor, ref, splits = scorers(job, runs[0])
            images = [set_images(r) for r in runs]
            sizes = {len(x) for x in images}
            if len(sizes) != 1:
                raise ValueError(f"{job.path}: the seed sets of one protocol differ in size: {sorted(sizes)}")
            by_extractor = {}
            for ext, ext_ref, ref_features in scorers.all_extractors(job, runs[0]):
                ext_sets = [featurise(x, ext) for x in images]
                by_extractor[ext.name] = {"sets": ext_sets, "ref": ext_ref, "scores": pooled_scores(
                    ext_sets, ext_ref, ext.name, splits=splits, ref_features=ref_features)}
            sets, scores = by_extractor[extractor.name]["sets"], by_extractor[extractor.name]["scores"]
            digits = None
            if extractor.name == DIGITS_EXTRACTOR_NAME:
                per = [scores_from_logits(x.logits) for x in sets]
                digits = {**scores_from_logits(np.concatenate([x.logits for x in sets])),
                          "confidence_sets": [d["confidence"] for d in per],
                          "class_entropy_sets": [d["class_entropy"] for d in per]}
            seeds = [r.seed for r in runs]
            job.pooled.append(Pooled(protocol, seeds, sizes.pop(), sets, scores, digits, ref, splits, by_extractor))
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
    if a.nll is None or b.nll is None or not (is_number(a.nll.std) and is_number(b.nll.std)):
        return {}
    mean = a.nll.value - b.nll.value
    se = math.hypot(float(a.nll.std), float(b.nll.std))
    return {"pooled": mean, "ci": (mean - z * se, mean + z * se), "per_set": [], "level": level,
            "how": f"unpaired (no per-image values): {fmt_number(a.nll.value)} − {fmt_number(b.nll.value)}, "
                   "se from the two rows' standard errors"}


def compare(jobs: list[Job], *, num_boot: int = 200, level: float = 0.95) -> list[tuple[Finding, list[dict]]]:
    """Every comparison of :data:`FINDINGS` on ``jobs`` (after :func:`pool_jobs`): its paired differences and
    intervals under each extractor (``extractors``: name -> figures; the first extractor's also at the top level)
    and :func:`ddpm.services.metrics.pooled.verdict` over them."""
    from ddpm.services.metrics.digits_score import image_confidences
    from ddpm.services.metrics.fid import inception_score
    from ddpm.services.metrics.pooled import paired_bootstrap, verdict, verdict_interval

    by_obj: dict[str, Job] = {}
    for j in jobs:
        by_obj.setdefault(j.objective, j)  # the first job of a row (several: the table names them all)
    out = []
    for finding in _findings(jobs):
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
                    stat = {"fid": None,
                            "is": lambda x, k=pa.splits: inception_score(x.logits, splits=k)[0],
                            "confidence": lambda x: float(image_confidences(x.logits).mean())}[c.metric]
                    per_ext = {}
                    for name, ea in pa.by_extractor.items():
                        if name not in pb.by_extractor:
                            continue
                        sa = [ea["sets"][pa.seeds.index(k)] for k in seeds]
                        sb = [pb.by_extractor[name]["sets"][pb.seeds.index(k)] for k in seeds]
                        boot = paired_bootstrap(sa, sb, ea["ref"], num_boot=num_boot, level=level, statistic=stat)
                        per_ext[name] = {**boot, "interval": verdict_interval(boot["per_set"], boot["ci"], level)}
                    res.update(next(iter(per_ext.values())), extractors=per_ext, seeds=seeds,
                               how=f"{len(seeds)} seed sets of {pa.n}", units=(len(seeds), f"seed sets of {pa.n}"))
            if "ci" in res:
                res.setdefault("interval", res["ci"])  # the NLL: its interval is over test images already
                readings = {k: (e["pooled"], e["interval"]) for k, e in res.get("extractors", {}).items()}
                res["verdict"] = verdict(readings or {c.metric: (res["pooled"], res["interval"])}, c.sign)
            results.append(res)
        out.append((finding, results))
    return out
