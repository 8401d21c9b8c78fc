"""``python -m ddpm.frontier ckpt_path=RUN``: how few network evaluations each sampler needs, measured.

The same seeds are sampled with the full ancestral chain (the paper's Algorithm 2, T network evaluations) and
with every sampler of ``samplers`` (default: every registered one, :data:`ddpm.core.diffusion.SAMPLERS`) at every
count of ``steps``, on ``seed_sets`` seed sets of ``num_samples`` images each (set ``k`` is what ``sample.py
seed=<seed + k>`` draws). Each set is scored with the dataset's FID extractor (the digits CNN for the digits,
TF-Inception otherwise) and, on the digits, also with the independently trained digits extractor B
(:func:`ddpm.services.metrics.samples.all_extractors`). Per extractor the sets are pooled (:mod:`ddpm.services.metrics.pooled`): the
FID of all sets together, FID extrapolated to infinite n, KID, the class mix, the per-set FIDs and their spread,
and the paired comparison with the full chain (the same seeds: the per-set ratios, and an interval of the FID
difference that resamples the same images in both and covers the spread between seed sets). "Below the chain"
and "within tolerance" are verdicts of :func:`ddpm.services.metrics.pooled.verdict`: stated only when every extractor's
interval agrees. Written to ``out_dir`` (default ``<run dir>/frontier``):

* ``entries/<label>/set<k>.npz`` + ``.json`` (the uint8 samples, the timing): one per sampler, steps and seed
  set, written when it is done; a re-run with the same settings skips it, so a killed run continues where it
  stopped, and a re-run on a finished directory rescores the stored samples without sampling (the restating
  command: a new extractor or statistic applies to the same images);
* ``frontier.json``: every entry (pooled FID and IS, per-set FIDs, the ratio to the full chain with its
  spread and interval, ``extractors``: every extractor's figures, ``vs_chain`` and ``within_tolerance``: the
  verdicts, network evaluations, seconds per image) and, per sampler, the smallest step count whose pooled FID is
  within ``tolerance`` of the full chain's, as a point estimate and as established by the verdict rule;
* ``frontier.md``: the same as a Markdown table; ``frontier.png``: FID against network evaluations (log x),
  the bars spanning the per-set FIDs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from ddpm.core.config import SamplerConfig, searchpath_of
from ddpm.core.data import model_to_uint8
from ddpm.core.diffusion import SAMPLERS
from ddpm.core.io import atomic_savez, atomic_write, check_writable, write_json
from ddpm.core.rundir import tool_dir
from ddpm.services.generate import check_labels, condition, generate, seeds_for
from ddpm.services.loading import LoadedModel, load_model, model_datamodule
from ddpm.services.metrics.pooled import (
    EXTRACTOR_DEPENDENT,
    OPPOSITE,
    REPRODUCED,
    UNRESOLVED,
    SetFeatures,
    featurise,
    paired_bootstrap,
    pooled_scores,
    verdict,
    verdict_interval,
)
from ddpm.services.metrics.samples import all_extractors, load_extractor, reference_for
from ddpm.services.runtime import Progress, device_of, provenance

__all__ = ["frontier", "entries_for", "summarise", "default_out_dir"]

FULL_CHAIN = "full_chain"
# the verdict rule's outcomes (ddpm.services.metrics.pooled.verdict) for "FID(row) - FID(full chain) < 0" and for
# "FID(row) - (1 + tolerance) FID(full chain) < 0"
VS_CHAIN = {REPRODUCED: "below the chain", OPPOSITE: "above the chain", EXTRACTOR_DEPENDENT: EXTRACTOR_DEPENDENT,
            UNRESOLVED: UNRESOLVED}
WITHIN = {REPRODUCED: "within tolerance", OPPOSITE: "outside tolerance", EXTRACTOR_DEPENDENT: EXTRACTOR_DEPENDENT,
          UNRESOLVED: UNRESOLVED}
VIEW_KEYS = ("fid", "fid_inf", "kid", "kid_std", "class_kl", "fid_classmix", "kid_classmix", "fid_sets", "kid_sets",
             "class_kl_sets")


def entries_for(cfg: DictConfig, num_timesteps: int) -> list[SamplerConfig]:
    """The full ancestral chain, then every sampler at each step count, fewest steps first (step counts above T
    are said and left out; all of them above T is an error). ``samplers`` null: every registered sampler that does
    not always run the full chain."""
    names = cfg.samplers if cfg.samplers is not None else [n for n, s in SAMPLERS.items() if not s.full_chain]
    counts = sorted({int(s) for s in cfg.steps})  # the cheap entries first: a stopped run has them all
    if above := [s for s in counts if s > num_timesteps]:
        if above == counts:  # the frontier would be the full chain alone
            T = num_timesteps
            raise ValueError(f"steps={above}: every step count is above the model's T={T}, so no sampler would be "
                             f"compared with the full chain; pass step counts up to {T}, e.g. "
                             f"steps=[{max(1, T // 20)},{max(1, T // 10)},{max(1, T // 4)}]")
        print(f"[ddpm] steps {above} are above the model's T={num_timesteps}: left out")
    out = [SamplerConfig(name=next(n for n, s in SAMPLERS.items() if s.full_chain), clip_denoised=cfg.clip_denoised)]
    searchpath = searchpath_of(cfg)
    for steps in counts[:len(counts) - len(above)]:  # those up to T (the sorted counts' head)
        out += [SamplerConfig.named(str(name), searchpath, steps=steps, clip_denoised=cfg.clip_denoised)
                for name in names]
    return out


def entry_label(sampler: SamplerConfig, num_timesteps: int) -> str:
    """An entry's name (its folder under ``entries/``): ``full_chain`` for the paper's chain, else the sampler's
    label (``ddim5``)."""
    return FULL_CHAIN if sampler.is_full_chain(num_timesteps) else sampler.label


def default_out_dir(loaded: LoadedModel) -> Path:
    """``RUN/frontier`` beside a training checkpoint, ``outputs/frontier/<weights name>`` for published weights."""
    return tool_dir(loaded.provenance, "frontier")


def _signature(cfg: DictConfig, loaded: LoadedModel, sampler: SamplerConfig, T: int, set_seed: int) -> dict:
    return json.loads(json.dumps({
        "model_sha256": loaded.provenance["model_sha256"], "use_ema": loaded.provenance["use_ema"],
        "sampler": sampler.describe(T), "num_samples": cfg.num_samples, "seed": set_seed,
        **({"labels": _labels_spec(cfg), "guidance_scale": float(cfg.guidance_scale)} if loaded.num_classes else {}),
    }))


def _labels_spec(cfg: DictConfig):
    """``cfg.labels`` as plain Python; ``null`` is ``balanced`` for a class-conditional model."""
    spec = OmegaConf.to_container(cfg.labels) if OmegaConf.is_config(cfg.labels) else cfg.labels
    return "balanced" if spec is None else spec


def _cond(cfg: DictConfig, loaded: LoadedModel, set_seed: int, start: int, stop: int) -> dict:
    """A conditional model's labels and guidance for images ``start .. stop-1`` (nothing for an unconditional one)."""
    return condition(loaded.num_classes, start, stop, _labels_spec(cfg), set_seed, cfg.guidance_scale)


def sample_set(cfg: DictConfig, loaded: LoadedModel, sampler: SamplerConfig, set_seed: int, device,
               label: str) -> tuple[np.ndarray, float]:
    """The uint8 samples of seeds ``seeds_for(set_seed, 0 .. num_samples)`` with ``sampler``, and the seconds
    per image."""
    n, bs = cfg.num_samples, cfg.batch_size
    parts, start = [], time.time()
    with Progress(n, cfg.progress, f"{label}, seed {set_seed} ({n} images)") as bar:
        for i in range(0, n, bs):
            j = min(i + bs, n)
            x = generate(loaded.model_fn(), loaded.diffusion, seeds_for(set_seed, i, j), loaded.image_shape,
                         sampler, device=device, **_cond(cfg, loaded, set_seed, i, j))
            parts.append(model_to_uint8(x.float()).cpu().numpy())
            bar.update(j - i)
    return np.concatenate(parts), (time.time() - start) / n


def score_entry(sampler: SamplerConfig, T: int, sets: dict[str, list[SetFeatures]], seconds: list[float],
                scorers: list[tuple], full: tuple[dict[str, list[SetFeatures]], dict] | None, splits: int,
                num_boot: int, tolerance: float = 0.10, passes: int = 1) -> dict:
    """An entry: per extractor (``scorers``: ``[(extractor, ref, ref_features)]``, the dataset's first; ``sets``:
    extractor name -> the seed sets' features) pooled FID, FID at infinite n, KID and the class mix, and the
    paired comparisons with the full chain (``full``: its sets' features and its entry): the difference and the
    "within tolerance" difference, each with the interval that covers the seed sets' spread, and their verdicts
    over all extractors (:func:`ddpm.services.metrics.pooled.verdict`). The first extractor's figures are also at the top
    level."""
    views, first = {}, None
    for ext, ref, ref_features in scorers:
        pooled = pooled_scores(sets[ext.name], ref, ext.name, splits=splits, ref_features=ref_features)
        first = first or pooled
        view = {k: pooled[k] for k in VIEW_KEYS if k in pooled}
        if full is not None:
            full_sets, full_entry = full[0][ext.name], full[1]["extractors"][ext.name]
            diff = paired_bootstrap(sets[ext.name], full_sets, ref, num_boot=num_boot)
            within = paired_bootstrap(sets[ext.name], full_sets, ref, num_boot=num_boot, scale_b=1 + tolerance)
            view.update(ratio=pooled["fid"] / full_entry["fid"], fid_diff=diff["pooled"], fid_diff_ci=list(diff["ci"]),
                        ratio_sets=[a / b for a, b in zip(pooled["fid_sets"], full_entry["fid_sets"])],
                        fid_diff_interval=list(verdict_interval(diff["per_set"], diff["ci"])),
                        within_diff=within["pooled"],
                        within_interval=list(verdict_interval(within["per_set"], within["ci"])))
        views[ext.name] = view
    spec = sampler.spec
    evaluations = spec.evaluations(sampler.steps, T) * passes  # a guided step: conditional + unconditional pass
    entry = {
        "sampler": sampler.name, "steps": evaluations, "network_evaluations": evaluations,
        "label": entry_label(sampler, T), "settings": sampler.describe(T),
        "stochastic": spec.is_stochastic(sampler.params), "fid": first["fid"], "is": first["is"],
        "fid_sets": first["fid_sets"], "fid_spread": first["fid_spread"], "is_sets": first["is_sets"],
        "n": first["n"], "seconds_per_image": float(np.mean(seconds)), "seconds_per_image_sets": seconds,
        "extractors": views,
    }
    if full is not None:
        a = next(iter(views.values()))
        entry.update({k: a[k] for k in ("ratio", "ratio_sets", "fid_diff", "fid_diff_ci")})
        entry["vs_chain"] = VS_CHAIN[verdict({k: (v["fid_diff"], v["fid_diff_interval"]) for k, v in views.items()},
                                             -1)]
        entry["within_tolerance"] = WITHIN[verdict(
            {k: (v["within_diff"], v["within_interval"]) for k, v in views.items()}, -1)]
    return entry


def summarise(entries: list[dict], tolerance: float) -> dict:
    """Per sampler, the smallest step count whose pooled FID is within ``tolerance`` of the full chain's (the point
    estimate, ``smallest_steps_within_tolerance``) and the smallest where the verdict rule establishes it
    (``smallest_steps_established_within_tolerance``: every extractor's interval below 0), and the best ratio to
    the full chain at <= 10 and <= 20 network evaluations with its verdict against the chain."""
    full = next(e for e in entries if e["label"] == FULL_CHAIN)
    bound = full["fid"] * (1 + tolerance)
    within: dict[str, int | None] = {}
    established: dict[str, int | None] = {}
    rest = sorted((e for e in entries if e is not full), key=lambda e: e["steps"])
    for e in rest:
        within.setdefault(e["sampler"], None)
        established.setdefault(e["sampler"], None)
        if within[e["sampler"]] is None and e["fid"] <= bound:
            within[e["sampler"]] = e["steps"]
        if established[e["sampler"]] is None and e.get("within_tolerance") == WITHIN[REPRODUCED]:
            established[e["sampler"]] = e["steps"]
    best = {}
    for budget in (10, 20):
        cands = [e for e in rest if e["network_evaluations"] <= budget]
        if cands:
            b = min(cands, key=lambda e: e["fid"])
            best[str(budget)] = {"label": b["label"], "fid": b["fid"], "ratio": b["fid"] / full["fid"]}
            if "vs_chain" in b:
                best[str(budget)]["vs_chain"] = b["vs_chain"]
    return {"full_chain_fid": full["fid"], "tolerance": tolerance, "fid_bound": bound,
            "smallest_steps_within_tolerance": within, "smallest_steps_established_within_tolerance": established,
            "best_within_evaluations": best}


def _fmt_spread(e: dict) -> str:
    if "fid_spread" not in e:
        return "-"
    return f"{e['fid_spread']['min']:.2f}-{e['fid_spread']['max']:.2f}"


def _markdown(entries: list[dict], summary: dict, cfg: DictConfig, extractor: str) -> str:
    n, sets = cfg.num_samples, cfg.seed_sets
    lines = [f"FID ({extractor} features) pooled over {sets} seed sets of {n} samples (seeds {cfg.seed}.."
             f"{cfg.seed + sets - 1}, the same for every row), against network evaluations per image. "
             "Ratio: pooled FID / the full chain's; per set: the min-max of the per-set ratios (paired: the same "
             "seeds); CI: 95% paired-bootstrap interval of FID(row) - FID(full chain).",
             "", "| sampler | network evaluations | FID (pooled) | FID per set (min-max) | ratio to full chain | "
             "ratio per set | FID diff 95% CI | IS | seconds / image |", "|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        is_ = f"{e['is']:.2f}" if e.get("is") is not None else "-"
        ratio = f"{e['ratio']:.2f}x" if "ratio" in e else "1.00x"
        per_set = f"{min(e['ratio_sets']):.2f}-{max(e['ratio_sets']):.2f}" if "ratio_sets" in e else "-"
        ci = f"[{e['fid_diff_ci'][0]:+.2f}, {e['fid_diff_ci'][1]:+.2f}]" if "fid_diff_ci" in e else "-"
        lines.append(f"| {e['sampler']} | {e['network_evaluations']} | {e['fid']:.2f} | {_fmt_spread(e)} | {ratio} "
                     f"| {per_set} | {ci} | {is_} | {e['seconds_per_image']:.4f} |")
    lines += _extractor_table(entries)
    lines += ["", f"Full chain: FID {summary['full_chain_fid']:.2f} ({extractor}); within {summary['tolerance']:.0%} "
              f"means FID <= {summary['fid_bound']:.2f}. Established: the verdict rule says so (every extractor's "
              "interval of FID(row) - (1 + tolerance) FID(full chain), over images and seed sets, below 0).", "",
              "| sampler | smallest steps within tolerance, established | point estimate (this extractor, this draw) |",
              "|---|---|---|"]
    for name, steps in summary["smallest_steps_within_tolerance"].items():
        est = summary.get("smallest_steps_established_within_tolerance", {}).get(name)
        lines.append(f"| {name} | {est if est is not None else 'none established'} | "
                     f"{steps if steps is not None else 'none of those tried'} |")
    for budget, b in summary["best_within_evaluations"].items():
        verdict_text = f"; against the chain: **{b['vs_chain']}**" if "vs_chain" in b else ""
        lines.append(f"\nLowest pooled FID at <= {budget} evaluations: {b['label']}, FID {b['fid']:.2f} "
                     f"({b['ratio']:.2f}x the full chain){verdict_text}.")
    return "\n".join(lines) + "\n"


def _opt(v, fmt: str = ".2f") -> str:
    return "–" if v is None else format(v, fmt)


def _extractor_table(entries: list[dict]) -> list[str]:
    """Every extractor's figures of every entry, and the verdicts (:func:`ddpm.services.metrics.pooled.verdict`)."""
    names = list(entries[0].get("extractors", {}))
    if not names:
        return []
    lines = ["", "Every extractor (" + ", ".join(names) + "): FID pooled and extrapolated to infinite n (FID∞), "
             "unbiased KID, the class mix (KL of the predicted classes from the reference's, nats; FID against the "
             "reference reweighted to the row's classes), the ratio to the full chain and the interval of "
             "FID(row) - FID(full chain) over images and seed sets. Verdicts: a claim holds only when every "
             "extractor's interval excludes 0 on its side.", "",
             "| sampler | network evaluations | extractor | FID | FID∞ | KID | class KL | FID, class mix | ratio | "
             "FID diff interval | against the chain | within tolerance |", "|" + "---|" * 12]
    for e in entries:
        for name, v in e["extractors"].items():
            iv = v.get("fid_diff_interval")
            lines.append(
                f"| {e['sampler']} | {e['network_evaluations']} | {name} | {v['fid']:.2f} | {_opt(v.get('fid_inf'))} | "
                f"{_opt(v.get('kid'), '.3g')} | {_opt(v.get('class_kl'), '.3f')} | {_opt(v.get('fid_classmix'))} | "
                f"{_opt(v.get('ratio'))} | {f'[{iv[0]:+.2f}, {iv[1]:+.2f}]' if iv else '-'} | "
                f"{e.get('vs_chain', '-')} | {e.get('within_tolerance', '-')} |")
    return lines


def _plot(entries: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    full = next(e for e in entries if e["label"] == FULL_CHAIN)
    for name in dict.fromkeys(e["sampler"] for e in entries if e is not full):
        pts = sorted((e["network_evaluations"], e["fid"], e["fid_spread"]["min"], e["fid_spread"]["max"])
                     for e in entries if e["sampler"] == name and e is not full)
        x, y, lo, hi = (np.array(v) for v in zip(*pts))
        (line,) = ax.plot(x, y, marker="o", label=name)
        ax.vlines(x, lo, hi, color=line.get_color(), alpha=0.4, lw=3)  # the per-set FIDs (pooled: more images)
    ax.axhline(full["fid"], color="black", ls="--", lw=1, label=f"ancestral, {full['network_evaluations']} steps")
    ax.axhspan(full["fid_spread"]["min"], full["fid_spread"]["max"], color="black", alpha=0.08)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("network evaluations per image")
    ax.set_ylabel("FID (pooled; bars: per-set min-max)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def frontier(cfg: DictConfig) -> dict:
    """Run the frontier of ``cfg`` (conf/frontier.yaml); returns the summary with its entries."""
    if cfg.num_samples < 2 or cfg.batch_size < 1 or cfg.seed_sets < 1 or not cfg.steps or (
            cfg.samplers is not None and not cfg.samplers):
        raise ValueError("frontier needs num_samples >= 2, batch_size >= 1, seed_sets >= 1, and non-empty steps "
                         "and samplers (null: every registered sampler)")
    device = device_of(cfg.device)
    loaded = load_model(cfg.ckpt_path, cfg.pretrained, cfg.use_ema).to(device)
    T = loaded.diffusion.num_timesteps
    check_labels(cfg.labels, cfg.guidance_scale, loaded.num_classes)
    passes = 2 if loaded.num_classes and float(cfg.guidance_scale) > 0 else 1
    entries_cfg = entries_for(cfg, T)  # before any sampling: step counts all above T are refused there
    for sampler in entries_cfg:
        sampler.check(loaded.diffusion)
    out_dir = check_writable(cfg.out_dir or default_out_dir(loaded), "out_dir")
    datamodule = model_datamodule(loaded, cfg.data, "the frontier") if not cfg.fid.ref_stats else None
    extractor = load_extractor(cfg.fid, getattr(datamodule, "name", None), device)  # before any sampling
    ref = reference_for(cfg.fid, extractor, datamodule, cfg.paths.cache_dir, device)
    scorers = all_extractors(cfg.fid, extractor, ref, datamodule, cfg.paths.cache_dir, device)

    entries, full = [], None
    for sampler in entries_cfg:
        label = entry_label(sampler, T)
        sets: dict[str, list[SetFeatures]] = {ext.name: [] for ext, _, _ in scorers}
        seconds = []
        for k in range(int(cfg.seed_sets)):
            set_seed = int(cfg.seed) + k
            path = out_dir / "entries" / label / f"set{k}.json"
            signature = _signature(cfg, loaded, sampler, T, set_seed)
            if path.is_file() and json.loads(path.read_text()).get("signature") == signature:
                with np.load(path.with_suffix(".npz"), allow_pickle=False) as z:
                    images = z["images"]
                sec = float(json.loads(path.read_text())["seconds_per_image"])
            else:
                images, sec = sample_set(cfg, loaded, sampler, set_seed, device, label)
                atomic_savez(path.with_suffix(".npz"), images=images)
                write_json(path, {"signature": signature, "seconds_per_image": sec})
            for ext, _, _ in scorers:
                sets[ext.name].append(featurise(images, ext, device=device))
            seconds.append(sec)
        entry = score_entry(sampler, T, sets, seconds, scorers, full, int(cfg.fid.is_splits), int(cfg.num_boot),
                            float(cfg.tolerance), passes)
        full = full or (sets, entry)  # the first entry is the full chain
        entries.append(entry)
        ratio = f", {entry['ratio']:.2f}x the full chain, {entry['vs_chain']}" if "ratio" in entry else ""
        print(f"[ddpm] frontier: {label}: FID {entry['fid']:.2f} (sets {_fmt_spread(entry)}{ratio}; "
              f"{entry['seconds_per_image']:.4f} s/image)", flush=True)
    summary = summarise(entries, cfg.tolerance)
    result = {**summary, "entries": entries, "num_samples": cfg.num_samples, "seed_sets": cfg.seed_sets,
              "seed": cfg.seed, "extractor": extractor.name, "extractors": [e.name for e, _, _ in scorers],
              "num_timesteps": T, **loaded.provenance, **provenance()}
    write_json(out_dir / "frontier.json", result)
    with atomic_write(out_dir / "frontier.md") as tmp:
        tmp.write_text(_markdown(entries, summary, cfg, extractor.name))
    _plot(entries, out_dir / "frontier.png",
          f"{cfg.seed_sets} x {cfg.num_samples} samples pooled, {extractor.name} FID")
    print(f"[ddpm] frontier written to {out_dir} (frontier.md, frontier.json, frontier.png)")
    print("[ddpm] smallest steps established within "
          f"{cfg.tolerance:.0%} of the full chain's FID {summary['full_chain_fid']:.2f} (every extractor): "
          + ", ".join(f"{k} {v}" for k, v in summary["smallest_steps_established_within_tolerance"].items()))
    return result


def main() -> None:
    from ddpm.core.cli import hydra_app

    hydra_app("frontier", frontier)


if __name__ == "__main__":
    main()
