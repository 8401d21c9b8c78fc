"""``sample(cfg)``: the ``python sample.py`` application, as a plain function (tests call it directly).

* **Model** (:mod:`ddpm.services.loading`): a checkpoint of this project (``ckpt_path``; no model flags needed; EMA
  weights unless ``use_ema=false``) or published weights (``pretrained``).
* **Exactly N images** (:mod:`ddpm.services.generate`): image ``i`` is drawn with the noise seed
  ``seeds_for(seed, i, i+1)`` only, so the output does not depend on the batch size, the number of devices
  or the order of the work.
* **Sharded and resumable**: images are grouped into shards of ``shard_size`` (``[k*S, min((k+1)*S, N))``).
  Each missing shard is sampled by one of the ``trainer.devices x trainer.num_nodes`` processes (round
  robin) and written atomically to ``out_dir/shards/``; a re-run with the same ``out_dir`` samples only the
  shards that are missing. ``shards/signature.json`` records what the shards were sampled with (checkpoint
  hash, EMA flag, sampler, seed, precision, compile, ...); a re-run with other settings is refused instead of
  mixing images. Rank 0 merges the shards once every rank is done.
* **Outputs** (``out_dir``): ``samples.npz`` (``arr_0`` uint8 ``[N, H, W, 3]``, the guided-diffusion / ADM
  convention; one-channel images such as the 8x8 digits are repeated to 3 channels), ``samples.png`` (grid
  of the first ``grid_images``), optionally ``images/{index:06d}.png`` (native channels), and
  ``metrics.json`` (provenance, throughput, and FID/IS when ``compute_fid=true``, :mod:`ddpm.services.metrics.samples`).
* **Class-conditional models** (``model.num_classes=K``): ``labels`` (balanced, random, a class, a list) gives
  image ``i`` its class from ``(labels, seed, i)`` only (:func:`ddpm.services.generate.class_labels`) and
  ``guidance_scale`` the classifier-free guidance weight w; ``samples.npz`` adds ``arr_1`` (int64 labels),
  and with ``compute_fid=true`` on digits ``metrics.json`` adds the class accuracy, per-class and balanced FID
  (:mod:`ddpm.services.metrics.conditional`).
* The NLL bound is its own command, ``python -m ddpm.nll`` (:mod:`ddpm.commands.nll`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from ddpm.core.config import SamplerConfig, validate_config
from ddpm.core.data import model_to_uint8
from ddpm.core.io import atomic_savez, check_writable, make_grid_uint8, save_png, write_json
from ddpm.services.generate import check_labels, class_labels, condition, generate, seeds_for
from ddpm.services.loading import LoadedModel, load_model, model_datamodule
from ddpm.services.runtime import Progress, compile_for_sampling, launch, provenance

log = logging.getLogger("ddpm.sample")

SIGNATURE_KEYS = ("model_sha256", "use_ema", "sampler", "seed", "shard_size", "image_shape", "device_type",
                  "precision", "compile", "labels", "guidance_scale")


def labels_spec(cfg: DictConfig):
    """``cfg.labels`` as plain Python, ``null`` read as ``balanced`` (a conditional model's default)."""
    from omegaconf import OmegaConf

    spec = OmegaConf.to_container(cfg.labels) if OmegaConf.is_config(cfg.labels) else cfg.labels
    return "balanced" if spec is None else spec


def compile_label(cfg: DictConfig) -> str | None:
    """How ``sample.py`` compiles the network (``None``: eager), for the shard signature and metrics.json."""
    return f"{cfg.compile_backend}/mode={cfg.compile_mode}/freeze={cfg.compile_freeze}" if cfg.compile else None


def sampler_for(cfg: DictConfig, loaded: LoadedModel) -> SamplerConfig:
    """``cfg.sampler`` checked against the model (steps against its T, the variance against its output)."""
    sampler = SamplerConfig.from_node(cfg.sampler)
    sampler.check(loaded.diffusion)
    return sampler


# ----------------------------------------------------------------------------------------------- shards
def shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]


def shard_path(shard_dir: Path, start: int, stop: int) -> Path:
    return shard_dir / f"shard_{start:08d}_{stop:08d}.npz"


def check_signature(shard_dir: Path, signature: dict) -> None:
    """Refuse to add shards to ``shard_dir`` when the ones there were sampled with other settings."""
    path = shard_dir / "signature.json"
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    diff = {k: (old.get(k), signature.get(k)) for k in SIGNATURE_KEYS if old.get(k) != signature.get(k)}
    if diff:
        raise ValueError(
            f"{shard_dir} holds shards sampled with other settings ({diff}: (before, now)). Use another "
            "out_dir, or delete that shards/ folder to start over."
        )


def _load_shard(path: Path, start: int, stop: int, image_shape) -> np.ndarray | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            x = z["images"]
    except Exception:  # a truncated file cannot exist (atomic writes), but be lenient: resample it
        return None
    if x.shape != (stop - start, *image_shape) or x.dtype != np.uint8:
        return None
    return x


def merge_shards(out_dir: Path, n: int, shard_size: int, image_shape) -> np.ndarray:
    shard_dir = out_dir / "shards"
    parts = []
    for a, b in shard_ranges(n, shard_size):
        x = _load_shard(shard_path(shard_dir, a, b), a, b, image_shape)
        if x is None:
            raise RuntimeError(f"shard {a}..{b} missing in {shard_dir} after sampling; run the command again")
        parts.append(x)
    return np.concatenate(parts)


def to_nhwc3(images_nchw: np.ndarray) -> np.ndarray:
    """uint8 ``[N, C, H, W]`` -> ``[N, H, W, 3]`` (1 channel repeated), the ``arr_0`` convention."""
    x = np.ascontiguousarray(np.transpose(images_nchw, (0, 2, 3, 1)))
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return x


# ----------------------------------------------------------------------------------------------- main
def sample(cfg: DictConfig) -> dict:
    """Sample as ``cfg`` says (conf/sample.yaml); returns the metrics dict on rank 0 and ``{}`` on the other
    ranks."""
    validate_config(cfg)
    out_dir = check_writable(cfg.out_dir)
    fabric = launch(cfg.trainer)
    rank, world = fabric.global_rank, fabric.world_size
    loaded = load_model(cfg.ckpt_path, cfg.pretrained, cfg.use_ema).to(fabric.device)
    sampler = sampler_for(cfg, loaded)
    num_classes = loaded.num_classes
    check_labels(cfg.labels, cfg.guidance_scale, num_classes)
    scorer = _Scorer(cfg, loaded, fabric.device) if cfg.compute_fid else None  # fails before any sampling
    if cfg.compile:
        loaded.net = compile_for_sampling(loaded.net, cfg.compile_backend, cfg.compile_mode, cfg.compile_freeze)
    T = loaded.diffusion.num_timesteps
    n, bs, seed, shard_size = cfg.num_samples, cfg.batch_size, cfg.seed, cfg.shard_size
    shard_dir = out_dir / "shards"
    signature = json.loads(json.dumps({
        "model_sha256": loaded.provenance["model_sha256"],
        "use_ema": loaded.provenance["use_ema"],
        "sampler": sampler.describe(T),
        "seed": seed,
        "shard_size": shard_size,
        "image_shape": list(loaded.image_shape),
        "device_type": fabric.device.type,  # CPU and CUDA generators give different noise for one seed
        # the arithmetic: bf16 or a compiled graph rounds differently, so their images are not the eager fp32 ones
        "precision": str(cfg.trainer.precision),
        "compile": compile_label(cfg),
        # a conditional model's labels and guidance (absent for an unconditional one: its shards are unchanged)
        **({"labels": labels_spec(cfg), "guidance_scale": float(cfg.guidance_scale)} if num_classes else {}),
    }))
    check_signature(shard_dir, signature)

    ranges = shard_ranges(n, shard_size)
    missing = [r for r in ranges if _load_shard(shard_path(shard_dir, *r), *r, loaded.image_shape) is None]
    if world > 1:  # every rank decides from the same view of shards/ before any rank writes a new shard
        fabric.barrier()
    if rank == 0 and missing and not (shard_dir / "signature.json").is_file():
        shard_dir.mkdir(parents=True, exist_ok=True)  # written with the first shard, never by a refused run
        write_json(shard_dir / "signature.json", signature)
    mine = missing[rank::world]
    n_missing = sum(b - a for a, b in missing)
    if rank == 0:
        log.info("sampling %d images (%d already in %s), %s, %d process(es), batch %d",
                 n_missing, n - n_missing, shard_dir, sampler.describe(T), world, bs)
    model_fn = loaded.model_fn()
    start_time = time.time()
    with Progress(sum(b - a for a, b in mine), cfg.progress and rank == 0, f"sampling (rank 0 of {world})") as bar:
        for a, b in mine:
            parts = []
            for i in range(a, b, bs):
                j = min(i + bs, b)
                cond = condition(num_classes, i, j, labels_spec(cfg), seed, cfg.guidance_scale)
                with fabric.autocast():
                    x = generate(model_fn, loaded.diffusion, seeds_for(seed, i, j), loaded.image_shape, sampler,
                                 device=fabric.device, **cond)
                parts.append(model_to_uint8(x.float()).cpu().numpy())
                bar.update(j - i)
            atomic_savez(shard_path(shard_dir, a, b), images=np.concatenate(parts), start=a, stop=b)
    sample_seconds = time.time() - start_time
    if world > 1:
        fabric.barrier()
    if rank != 0:
        return {}
    wall = time.time() - start_time
    if n_missing:
        print(f"[ddpm] sampled {n_missing} images in {wall:.1f} s: {n_missing / max(wall, 1e-9):.2f} images/s, "
              f"{world} process(es)")
    images = merge_shards(out_dir, n, shard_size, loaded.image_shape)  # uint8 [N, C, H, W]
    labels = class_labels(labels_spec(cfg), seed, 0, n, num_classes).numpy() if num_classes else None
    metrics = write_outputs(cfg, out_dir, images, loaded, labels)
    label = "" if sampler.is_full_chain(T) else sampler.label  # the metric keys' suffix
    metrics.update({
        "sampler": sampler.describe(T),
        "sampler_label": label or "full_chain",
        "world_size": world,
        "device": str(fabric.device),
        "precision": str(cfg.trainer.precision),
        "compile": compile_label(cfg),
        "newly_sampled": n_missing,
        "sample_seconds": round(sample_seconds, 3),
        "images_per_second": round(n_missing / wall, 4) if n_missing and wall > 0 else None,
    })
    if scorer is not None:
        scores = scorer(images, label)
        metrics.update(scores)
        print("[ddpm] " + ", ".join(f"{k} = {v:.4f}" for k, v in scores.items()
                                    if k.split("_")[0] in ("fid", "is") and isinstance(v, float)))
    if labels is not None and is_digits(loaded):  # did each image get its class? (cheap: one small CNN)
        from ddpm.services.metrics.conditional import class_scores
        from ddpm.services.metrics.digits_classifier import DigitsExtractor

        scores = {f"digits/{k}": v for k, v in class_scores(images, labels).items()}
        metrics.update(scores)
        fid = scores.get("digits/fid_balanced")  # none for one image; below the feature dim, not comparable
        n, dim = len(labels), DigitsExtractor.feature_dim
        print(f"[ddpm] class accuracy (digits classifier) = {scores['digits/class_accuracy']:.4f}"
              + ("" if fid is None else f", balanced FID = {fid:.4f}"
                 + (f" (n={n} < {dim} features: not comparable)" if n < dim else "")))
    write_json(out_dir / "metrics.json", metrics)
    log.info("wrote samples.npz, metrics.json in %s", out_dir)
    return metrics


def is_digits(loaded: LoadedModel) -> bool:
    """A model of the 8x8 digits (the quickstart's data), which the project's digits classifier can score."""
    target = str((loaded.data_config or {}).get("_target_", ""))
    return target.endswith("DigitsDataModule") and tuple(loaded.image_shape) == (1, 8, 8)


def write_outputs(cfg: DictConfig, out_dir: Path, images: np.ndarray, loaded: LoadedModel,
                  labels: np.ndarray | None = None) -> dict[str, Any]:
    """``samples.npz`` (``arr_1``: a conditional model's int64 labels), the grid, the optional per-image PNGs;
    returns the metrics that describe them."""
    n = images.shape[0]
    extra = {} if labels is None else {"arr_1": np.asarray(labels, dtype=np.int64)}
    atomic_savez(out_dir / "samples.npz", arr_0=to_nhwc3(images), **extra)
    k = min(cfg.grid_images, n)
    if k > 0:
        up = cfg.grid_upscale or max(1, math.ceil(64 / loaded.image_shape[-1]))
        save_png(make_grid_uint8(torch.from_numpy(images[:k]), upscale=int(up)), out_dir / "samples.png")
    if cfg.save_images:
        for i in range(n):
            p = out_dir / "images" / f"{i:06d}.png"
            if not p.exists():
                save_png(torch.from_numpy(images[i]).permute(1, 2, 0), p)
    return {
        "num_samples": n,
        "image_shape": list(loaded.image_shape),
        "npz": str(out_dir / "samples.npz"),
        "npz_layout": "arr_0 uint8 [N, H, W, 3] (1-channel images repeated to 3 channels)",
        "seed": cfg.seed,
        "seed_rule": "image i: ddpm.services.generate.seeds_for(seed, i, i+1)",
        "num_timesteps": loaded.diffusion.num_timesteps,
        "batch_size": cfg.batch_size,
        "quantisation": "round((clamp(x,-1,1)+1)*127.5)",
        **({} if labels is None else {
            "labels": labels_spec(cfg), "guidance_scale": float(cfg.guidance_scale),
            "guidance_rule": "eps = (1+w) eps(x,t,y) - w eps(x,t,null), w = guidance_scale (diffusers: 1 + w)",
            "num_classes": loaded.num_classes, "class_names": loaded.class_names,
            "label_rule": "image i: ddpm.services.generate.class_labels(labels, seed, i, i+1, K); arr_1 in samples.npz"}),
        **provenance(),
        **loaded.provenance,
    }


class _Scorer:
    """FID/IS of the samples with everything it needs loaded up front (extractor weights, the data), so a
    missing file is reported before the first image is sampled."""

    def __init__(self, cfg: DictConfig, loaded: LoadedModel, device) -> None:
        from ddpm.services.metrics.samples import load_extractor

        self.cfg, self.device = cfg, device
        needs_data = not cfg.fid.ref_stats or cfg.fid_backend != "ddpm"
        self.datamodule = model_datamodule(loaded, cfg.data, "compute_fid=true") if needs_data else None
        data_name = getattr(self.datamodule, "name", None)
        self.extractor = load_extractor(cfg.fid, data_name, device)

    def __call__(self, images: np.ndarray, label: str) -> dict:
        from ddpm.services.metrics.samples import score_samples

        return score_samples(images, fid_cfg=self.cfg.fid, extractor=self.extractor, datamodule=self.datamodule,
                             label=label, backend=self.cfg.fid_backend, cache_dir=self.cfg.paths.cache_dir,
                             device=self.device)
