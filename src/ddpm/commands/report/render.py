"""The report as Markdown: the table beside the paper's, the seed sets' figures, and the findings' lines."""

from __future__ import annotations

import json
import math

from ddpm.commands.report.findings import Comparison, Finding
from ddpm.commands.report.jobs import EXTENDED_ROWS, PAPER_ROWS, SETTINGS, Figure, Job, fmt_number
from ddpm.services.metrics.records import is_number

PAPER_NOTE = (
    "Paper: CIFAR-10, 800k steps (lr 2e-4, batch 128), 50k samples, 1000-step ancestral sampling; FID against the "
    "training set, IS over 10 splits; NLL on the test set (Table 1). '–' in the paper: unstable to train. Only "
    "n=50k full-chain Inception figures on CIFAR-10 compare with the paper's numbers; the rest compare rows."
)
METRIC_TEXT = {"fid": "FID", "is": "IS", "confidence": "digits confidence", "nll": "NLL (bits/dim)"}


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
            std = f"±{f.std:.{std_digits}f}" if f.std is not None and is_number(f.std) else ""
            note = f" ({f.note})" if f.note else ""
            parts.append(f"{fmt_number(f.value)}{std}{note} [{self.mark(f.protocol)}]")
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


def _steps(j: Job) -> object:
    return "?" if j.steps is None else (
        f"{j.steps} of {j.settings['trainer.max_steps']}, stopped early" if j.stopped_early else j.steps)


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
            steps = _steps(j)
            rows.append(
                f"| {label} | {name} ({'/'.join(j.fields)}{which}) | {steps} "
                f"| {legend.cell(j.inception)} | {legend.cell(j.fid)} | {nll} | {p_is} | {p_fid} | {p_nll} |"
            )
    known = {name for name, *_ in PAPER_ROWS} | {"other"}
    extended = EXTENDED_ROWS + [(n, f"beyond the paper: {n}") for n in sorted(by_obj) if n not in known
                                and n not in dict(EXTENDED_ROWS)]
    for name, label in extended:  # beyond Table 2 (sweep=objectives_digits): only the rows that were run
        for j in by_obj.get(name, []):
            nll = legend.cell([j.nll] if j.nll else [], std_digits=3)
            which = f", {j.path.name}" if len(by_obj[name]) > 1 else ""
            rows.append(f"| {label} | {name} ({'/'.join(j.fields)}{which}) | {_steps(j)} | {legend.cell(j.inception)} "
                        f"| {legend.cell(j.fid)} | {nll} | | | |")
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
    out += _extractor_lines(jobs)
    if findings:
        out += [""] + findings_lines(findings)
    return "\n".join(out)


def _values(values: list[float], digits: int = 2) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)


def _seed_set_lines(jobs: list[Job]) -> list[str]:
    """Per row, the pooled protocol's figures on each seed set and their spread."""
    order = [name for name, *_ in PAPER_ROWS] + [name for name, _ in EXTENDED_ROWS]
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


def _opt(v, fmt: str = ".2f") -> str:
    return "–" if v is None else format(v, fmt)


def _extractor_lines(jobs: list[Job]) -> list[str]:
    """Per row and extractor: FID pooled and extrapolated to infinite n, KID, and the class mix."""
    rows = [(j, name, e["scores"]) for j in jobs if j.primary is not None
            for name, e in j.primary.by_extractor.items() if "kid" in e["scores"]]
    if not rows:
        return []
    out = ["", "**Every extractor** (the pooled seed sets; FID∞: FID extrapolated to infinite n, Chong & Forsyth "
           "2020; KID: unbiased, cubic kernel, ± its std over 100 subsets, 0 for two draws of one distribution; "
           "class KL: of the predicted classes from the reference's, nats, pooled (per set); class mix: against "
           "the reference reweighted to the row's predicted classes):", "",
           "| row | extractor | FID pooled | FID∞ | KID | class KL (per set) | FID, class mix | KID, class mix |",
           "|---|---|---|---|---|---|---|---|"]
    for j, name, sc in sorted(rows, key=lambda r: (r[0].objective, r[0].path.name, r[1])):
        kl = f"{_opt(sc.get('class_kl'), '.3f')} ({_values(sc['class_kl_sets'], 3)})" if "class_kl" in sc else "–"
        out.append(f"| {j.objective} | {name} | {sc['fid']:.2f} | {_opt(sc.get('fid_inf'))} | {sc['kid']:.3g} "
                   f"± {sc['kid_std']:.2g} | {kl} | {_opt(sc.get('fid_classmix'))} | "
                   f"{_opt(sc.get('kid_classmix'), '.3g')} |")
    return out


def _signed(v: float) -> str:
    return f"{v:+.3f}" if abs(v) < 1 else f"{v:+.2f}"


def _budget(r: dict) -> str:
    """For an unresolved comparison: how many units (seed sets, test images) would make every extractor's
    interval exclude 0 if the differences stayed what they are, from the intervals' widths shrinking like
    1/sqrt(units). An extrapolation, said as one."""
    from ddpm.services.metrics.pooled import UNRESOLVED

    if r.get("verdict") != UNRESOLVED or "units" not in r:
        return ""
    n, what = r["units"]
    need = 0
    for e in (r.get("extractors") or {"": r}).values():
        (lo, hi), m = e["interval"], e["pooled"]
        if not (is_number(m) and abs(m) > 1e-12 and hi > lo and math.isfinite(hi - lo)):
            return f" (no difference to resolve at {n} {what})"
        need = max(need, math.ceil(n * ((hi - lo) / 2 / abs(m)) ** 2))
    return (f" (were the pooled difference real, about {need} {what} would make the interval exclude 0: an "
            "extrapolation from its width)")


def findings_lines(findings: list[tuple[Finding, list[dict]]]) -> list[str]:
    """The paper's findings, each comparison with its verdict and the numbers it rests on."""
    out = ["**The paper's findings, as paired comparisons** (rows share seeds: image i of seed set k has the same "
           "noise in every row; the NLL is per test image on the same images and noise). Each line: the "
           "difference a − b, the sign the paper predicts, then per extractor (on the digits: A = ddpm-digits, "
           "B = ddpm-digits-b, trained apart) the pooled difference, the per-set differences, the paired bootstrap "
           "interval (images resampled) and the interval the verdict uses, which also covers the spread between "
           "seed sets (a t-interval of the per-set differences). *reproduced*: every extractor's interval excludes "
           "0 on the predicted side; *the opposite*: all on the other side; *extractor-dependent*: the extractors "
           "point opposite ways; else *not established*.", ""]
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
            views = r.get("extractors") or {"": r}
            parts = []
            for name, e in views.items():
                lo, hi = e["ci"]
                nums = f"pooled {_signed(e['pooled'])}"
                if e.get("per_set"):
                    nums += f"; per set {', '.join(_signed(v) for v in e['per_set'])} ({r['how']})"
                else:
                    nums += f"; {r['how']}"
                kind = "paired bootstrap" if e.get("per_set") else "normal"
                nums += f"; {r['level']:.0%} {kind} interval [{_signed(lo)}, {_signed(hi)}]"
                if e.get("per_set"):
                    vlo, vhi = e["interval"]
                    nums += f", with the seed sets' spread [{_signed(vlo)}, {_signed(vhi)}]"
                parts.append(nums + (f" ({name})" if len(views) > 1 else ""))
            out.append(f"- {what}: {' | '.join(parts)}: **{r['verdict']}**{_budget(r)}")
        out.append("")
    return out[:-1]
