"""``python -m ddpm.frontier ckpt_path=RUN``: how few network evaluations each sampler needs, measured.

The same ``num_samples`` seeds are sampled with the full ancestral chain (the paper's Algorithm 2, T network
evaluations) and with every sampler of ``samplers`` at every count of ``steps``; each set is scored with the
dataset's FID extractor (:mod:`ddpm.metrics.samples`: the digits CNN for the digits, TF-Inception otherwise).
Written to ``out_dir`` (default ``<run dir>/frontier``):

* ``entries/<sampler><steps>.json`` (+ ``.npz``, the uint8 samples): one per entry, written when it is done;
  a re-run with the same settings skips it, so a killed run continues where it stopped;
* ``frontier.json``: every entry (FID, IS, network evaluations, seconds per image) and, per sampler, the
  smallest step count whose FID is within ``tolerance`` of the full chain's;
* ``frontier.md``: the same as a Markdown table; ``frontier.png``: FID against network evaluations (log x).

Metric keys carry the sample count and the sampler (``fid_256_ddim20``), like ``sample.py``'s.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from ddpm.config import SamplerConfig
from ddpm.data import model_to_uint8
from ddpm.generate import check_sampler, generate, seeds_for
from ddpm.io import atomic_savez, atomic_write, check_writable, write_json
from ddpm.loading import LoadedModel, load_model, model_datamodule
from ddpm.metrics.samples import fid_key, load_extractor, score_samples
from ddpm.runtime import Progress, provenance

__all__ = ["frontier", "entries_for", "summarise", "default_out_dir"]


def entries_for(cfg: DictConfig, num_timesteps: int) -> list[SamplerConfig]:
    """The full ancestral chain, then every sampler x steps (step counts above T are left out)."""
    out = [SamplerConfig(name="ancestral", clip_denoised=cfg.clip_denoised)]
    for name in cfg.samplers:
        for steps in sorted({int(s) for s in cfg.steps}):
            if steps <= num_timesteps:
                out.append(SamplerConfig(name=str(name), steps=steps, clip_denoised=cfg.clip_denoised))
    return out


def default_out_dir(loaded: LoadedModel) -> Path:
    model = Path(loaded.provenance["model_path"])
    if loaded.provenance.get("source") == "checkpoint":
        run_dir = model.parent.parent if model.parent.name == "checkpoints" else model.parent
        return run_dir / "frontier"
    return Path("outputs") / "frontier" / model.stem


def _signature(cfg: DictConfig, loaded: LoadedModel, sampler: SamplerConfig, T: int, extractor: str) -> dict:
    return json.loads(json.dumps({
        "model_sha256": loaded.provenance["model_sha256"], "use_ema": loaded.provenance["use_ema"],
        "sampler": sampler.describe(T), "num_samples": cfg.num_samples, "seed": cfg.seed, "extractor": extractor,
        "ref_stats": cfg.fid.ref_stats, "ref_split": cfg.fid.ref_split,
    }))


def run_entry(cfg: DictConfig, loaded: LoadedModel, sampler: SamplerConfig, device, score) -> dict:
    """Sample the seeds with ``sampler`` and score them; returns the entry (FID, IS, timing)."""
    T, n, bs = loaded.diffusion.num_timesteps, cfg.num_samples, cfg.batch_size
    label = sampler.label(T) or "full_chain"
    parts, start = [], time.time()
    with Progress(n, cfg.progress, f"{label} ({n} images)") as bar:
        for i in range(0, n, bs):
            j = min(i + bs, n)
            x = generate(loaded.model_fn(), loaded.diffusion, seeds_for(cfg.seed, i, j), loaded.image_shape,
                         sampler, device=device)
            parts.append(model_to_uint8(x.float()).cpu().numpy())
            bar.update(j - i)
    seconds = time.time() - start
    images = np.concatenate(parts)
    scores = score(images, sampler.label(T))
    evaluations = T if sampler.name == "ancestral" else min(int(sampler.steps), T)
    return {
        "sampler": sampler.name, "steps": evaluations, "network_evaluations": evaluations, "label": label,
        "fid": scores[fid_key("fid", n, sampler.label(T))], "is": scores.get(fid_key("is", n, sampler.label(T))),
        "seconds_per_image": seconds / n, "scores": scores, "images": images,
    }


def summarise(entries: list[dict], tolerance: float) -> dict:
    """Per sampler, the smallest step count whose FID is within ``tolerance`` of the full chain's."""
    full = next(e for e in entries if e["sampler"] == "ancestral")
    bound = full["fid"] * (1 + tolerance)
    within: dict[str, int | None] = {}
    for e in sorted((e for e in entries if e["sampler"] != "ancestral"), key=lambda e: e["steps"]):
        within.setdefault(e["sampler"], None)
        if within[e["sampler"]] is None and e["fid"] <= bound:
            within[e["sampler"]] = e["steps"]
    return {"full_chain_fid": full["fid"], "tolerance": tolerance, "fid_bound": bound,
            "smallest_steps_within_tolerance": within}


def _markdown(entries: list[dict], summary: dict, n: int, extractor: str) -> str:
    lines = [f"FID ({extractor} features, {n} samples, the same seeds for every row) against network evaluations.",
             "", "| sampler | network evaluations | FID | IS | seconds / image |", "|---|---|---|---|---|"]
    for e in entries:
        is_ = f"{e['is']:.2f}" if e.get("is") is not None else "-"
        lines.append(f"| {e['sampler']} | {e['network_evaluations']} | {e['fid']:.2f} | {is_} | "
                     f"{e['seconds_per_image']:.4f} |")
    lines += ["", f"Full chain: FID {summary['full_chain_fid']:.2f}; within {summary['tolerance']:.0%} means FID <= "
              f"{summary['fid_bound']:.2f}.", "", "| sampler | smallest steps within tolerance |", "|---|---|"]
    for name, steps in summary["smallest_steps_within_tolerance"].items():
        lines.append(f"| {name} | {steps if steps is not None else 'none of those tried'} |")
    return "\n".join(lines) + "\n"


def _plot(entries: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    full = next(e for e in entries if e["sampler"] == "ancestral")
    for name in dict.fromkeys(e["sampler"] for e in entries if e["sampler"] != "ancestral"):
        pts = sorted((e["network_evaluations"], e["fid"]) for e in entries if e["sampler"] == name)
        ax.plot(*zip(*pts), marker="o", label=name)
    ax.axhline(full["fid"], color="black", ls="--", lw=1, label=f"ancestral, {full['network_evaluations']} steps")
    ax.set_xscale("log")
    ax.set_xlabel("network evaluations per image")
    ax.set_ylabel("FID")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with atomic_write(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def frontier(cfg: DictConfig) -> dict:
    """Run the frontier of ``cfg`` (conf/frontier.yaml); returns the summary with its entries."""
    if cfg.num_samples < 2 or cfg.batch_size < 1 or not cfg.samplers or not cfg.steps:
        raise ValueError("frontier needs num_samples >= 2, batch_size >= 1, and non-empty samplers and steps")
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    loaded = load_model(cfg.ckpt_path, cfg.pretrained, cfg.use_ema).to(device)
    T = loaded.diffusion.num_timesteps
    entries_cfg = entries_for(cfg, T)
    for sampler in entries_cfg:
        check_sampler(loaded.diffusion, sampler)
    out_dir = check_writable(cfg.out_dir or default_out_dir(loaded), "out_dir")
    datamodule = model_datamodule(loaded, cfg.data, "the frontier") if not cfg.fid.ref_stats else None
    extractor = load_extractor(cfg.fid, getattr(datamodule, "name", None), device)  # before any sampling

    def score(images: np.ndarray, label: str) -> dict:
        return score_samples(images, fid_cfg=cfg.fid, extractor=extractor, datamodule=datamodule, label=label,
                             cache_dir=cfg.paths.cache_dir, device=device)

    entries = []
    for sampler in entries_cfg:
        label = sampler.label(T) or "full_chain"
        path = out_dir / "entries" / f"{label}.json"
        signature = _signature(cfg, loaded, sampler, T, extractor.name)
        if path.is_file() and (old := json.loads(path.read_text())).get("signature") == signature:
            entries.append(old["entry"])
            continue
        entry = run_entry(cfg, loaded, sampler, device, score)
        atomic_savez(path.with_suffix(".npz"), images=entry.pop("images"))
        write_json(path, {"signature": signature, "entry": entry})
        entries.append(entry)
        print(f"[ddpm] frontier: {label}: FID {entry['fid']:.2f} ({entry['seconds_per_image']:.3f} s/image)",
              flush=True)
    summary = summarise(entries, cfg.tolerance)
    result = {**summary, "entries": entries, "num_samples": cfg.num_samples, "seed": cfg.seed,
              "extractor": extractor.name, "num_timesteps": T, **loaded.provenance, **provenance()}
    write_json(out_dir / "frontier.json", result)
    with atomic_write(out_dir / "frontier.md") as tmp:
        tmp.write_text(_markdown(entries, summary, cfg.num_samples, extractor.name))
    _plot(entries, out_dir / "frontier.png", f"{cfg.num_samples} samples, {extractor.name} FID")
    print(f"[ddpm] frontier written to {out_dir} (frontier.md, frontier.json, frontier.png)")
    print("[ddpm] smallest steps within "
          f"{cfg.tolerance:.0%} of the full chain's FID {summary['full_chain_fid']:.2f}: "
          + ", ".join(f"{k} {v}" for k, v in summary["smallest_steps_within_tolerance"].items()))
    return result


def main() -> None:
    import hydra

    from ddpm.cli import preflight, run
    from ddpm.config import CONF_DIR

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="frontier")
    def _main(cfg: DictConfig) -> None:
        run(lambda: frontier(cfg))

    preflight("frontier")
    _main()


if __name__ == "__main__":
    main()
