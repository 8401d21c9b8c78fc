"""``sample(cfg)``: everything ``python sample.py`` does, as a plain function (tests call it directly).

* **Model**: a checkpoint of this project (``ckpt_path``; the module is rebuilt from the checkpoint's
  ``hyper_parameters``, so no model flags are needed; EMA weights unless ``use_ema=false``) or published
  weights (``pretrained``: a safetensors file from ``python -m ddpm.convert`` or a local diffusers folder).
* **Exactly N images**: image ``i`` is drawn with the noise seed ``seeds_for(seed, i, i+1)`` only, so the
  output does not depend on the batch size, the number of devices or the order of the work.
* **Sharded and resumable**: images are grouped into shards of ``shard_size`` (``[k*S, min((k+1)*S, N))``).
  Each missing shard is sampled by one of the ``trainer.devices x trainer.num_nodes`` processes (round
  robin) and written atomically to ``out_dir/shards/``; a re-run with the same ``out_dir`` samples only the
  shards that are missing. ``shards/signature.json`` records what the shards were sampled with (checkpoint
  hash, EMA flag, sampler, seed, precision, compile, ...); a re-run with other settings is refused instead of
  mixing images.
  Rank 0 merges the shards once every rank is done.
* **Outputs** (``out_dir``): ``samples.npz`` (``arr_0`` uint8 ``[N, H, W, 3]``, the guided-diffusion / ADM
  convention; one-channel images such as the 8x8 digits are repeated to 3 channels), ``samples.png`` (grid
  of the first ``grid_images``), optionally ``images/{index:06d}.png`` (native channels), and
  ``metrics.json`` (provenance, throughput, and FID/IS when ``compute_fid=true``).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
import os
import platform
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ddpm.diffusion import GaussianDiffusion
from ddpm.generate import SamplerConfig, generate, make_grid_uint8, save_png, seeds_for, to_uint8
from ddpm.io import atomic_savez, check_writable, write_json

log = logging.getLogger("ddpm.sample")

SIGNATURE_KEYS = ("model_sha256", "use_ema", "sampler", "seed", "shard_size", "image_shape", "device_type",
                  "precision", "compile")
# keys added after the first release: what a signature.json without them was sampled with
SIGNATURE_DEFAULTS = {"precision": "32-true", "compile": None}


# ----------------------------------------------------------------------------------------------- the model
@dataclass
class LoadedModel:
    """A network ready to sample with, plus what it is (for provenance)."""

    net: torch.nn.Module
    diffusion: GaussianDiffusion
    image_shape: tuple[int, int, int]
    provenance: dict[str, Any]
    run_cfg: dict | None = None  # the training config of a project checkpoint (None for published weights)
    default_clip_denoised: bool = True
    channels_last: bool = False
    module: Any = field(default=None, repr=False)

    def to(self, device) -> LoadedModel:
        self.net.to(device)
        self.diffusion.to(device)
        return self

    def model_fn(self):
        net = self.net
        if not self.channels_last:
            return net

        def fn(x, t):
            return net(x.contiguous(memory_format=torch.channels_last), t)

        return fn


def compile_for_sampling(net: torch.nn.Module, backend: str = "inductor", mode: str | None = None,
                         freeze: bool = True) -> torch.nn.Module:
    """``torch.compile`` a network that only runs without autograd (sampling).

    ``freeze`` (inductor only) treats the weights as constants: on CPU the convolutions get prepacked oneDNN
    weights (~10% faster no-grad forwards of the CIFAR-10 UNet, bench/README.md). ``mode="reduce-overhead"``
    uses CUDA graphs on GPUs. Numerics agree with the eager network to float rounding, not bitwise.
    """
    if freeze and backend == "inductor":
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # read when the first call compiles; a sampling process has no training
    return torch.compile(net, backend=backend, mode=mode)  # type: ignore[return-value]


def compile_options(cfg: DictConfig) -> dict | None:
    """``sample.py``'s compile settings (the arguments of :func:`compile_for_sampling`), ``None`` when eager."""
    if not cfg.get("compile", False):
        return None
    return {"backend": str(cfg.get("compile_backend", "inductor")), "mode": cfg.get("compile_mode"),
            "freeze": bool(cfg.get("compile_freeze", True))}


def compile_label(cfg: DictConfig) -> str | None:
    """How ``sample.py`` compiles the network (``None``: eager), for the shard signature and metrics.json."""
    opts = compile_options(cfg)
    return None if opts is None else f"{opts['backend']}/mode={opts['mode']}/freeze={opts['freeze']}"


def sample_precision(cfg: DictConfig) -> str:
    """``trainer.precision`` of ``sample.py`` (Fabric's precision; default full fp32)."""
    return str((cfg.get("trainer") or {}).get("precision", "32-true"))


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def resolve_checkpoint(ckpt_path: str | os.PathLike) -> Path:
    """A ``.ckpt`` file, or a run directory (-> its ``checkpoints/last.ckpt``)."""
    path = Path(str(ckpt_path)).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise FileNotFoundError(
            f"ckpt_path={ckpt_path!r}: no such checkpoint (pass a .ckpt file or a run directory that has "
            "checkpoints/last.ckpt)"
        )
    return path


def load_checkpoint_model(ckpt_path: str | os.PathLike, use_ema: bool = True) -> LoadedModel:
    """Rebuild the :class:`~ddpm.module.DiffusionModule` of a training checkpoint; pick EMA or raw weights."""
    from ddpm.callbacks.checkpoint_io import safe_load_checkpoint
    from ddpm.module import DiffusionModule

    path = resolve_checkpoint(ckpt_path)
    ckpt = safe_load_checkpoint(path)
    hp = ckpt.get("hyper_parameters")
    if not hp or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a checkpoint of this project (no hyper_parameters/state_dict)")
    hp = dict(hp)
    hp.pop("_instantiator", None)
    hp.pop("compile", None)  # a training speed option: sampling uses the eager network
    module = DiffusionModule(**hp)
    module.load_state_dict(ckpt["state_dict"], strict=True)
    module.eval()
    ema_updates = int(ckpt["state_dict"].get("ema_num_updates", torch.tensor(-1)))
    if use_ema and ema_updates == 0:
        warnings.warn(
            f"{path}: the EMA weights were never updated (ema_num_updates=0); they equal the initial weights",
            stacklevel=2,
        )
    net = module.ema if use_ema else module.net
    prov = {
        "source": "checkpoint",
        "model_path": str(path.resolve()),
        "model_sha256": file_sha256(path),
        "use_ema": bool(use_ema),
        "ema_num_updates": ema_updates,
        "global_step": int(ckpt.get("global_step", -1)),
        "ddpm_version_trained": ckpt.get("ddpm_version"),
    }
    return LoadedModel(
        net=net.requires_grad_(False).eval(),
        diffusion=module.diffusion,
        image_shape=tuple(module.image_shape),
        provenance=prov,
        run_cfg=ckpt.get("cfg"),
        channels_last=bool(hp.get("channels_last", False)),
        module=module,
    )


def load_pretrained_model(path: str | os.PathLike, use_ema: bool = True) -> LoadedModel:
    """Published weights: a safetensors file written by ``python -m ddpm.convert`` or a diffusers folder.

    These are the authors' EMA weights; ``use_ema=false`` cannot select raw weights that were never
    published, so it is refused.
    """
    from ddpm import convert

    if not use_ema:
        raise ValueError("pretrained weights are the published EMA weights; use_ema=false is unavailable")
    p = Path(str(path)).expanduser()
    if not p.exists():
        raise FileNotFoundError(
            f"pretrained={path!r} does not exist (a .safetensors file from `python -m ddpm.convert`, or a "
            "local diffusers folder with config.json + diffusion_pytorch_model.safetensors/.bin)"
        )
    info: dict[str, Any]
    if p.is_file() and p.suffix == ".safetensors":
        try:
            unet, info = convert.load_converted(p)
        except ValueError:  # a raw diffusers weights file without our metadata
            unet, info = convert.load_diffusers_unet(p)
        sha = file_sha256(p)
    else:
        unet, info = convert.load_diffusers_unet(p)
        weights = [f for f in (p.rglob("diffusion_pytorch_model.*") if p.is_dir() else [p]) if f.is_file()]
        sha = file_sha256(sorted(weights)[0]) if weights else ""
    cfg = unet.config()
    diffusion = GaussianDiffusion.from_config(
        schedule=info.get("schedule", "linear"),
        num_timesteps=int(info.get("num_timesteps", 1000)),
        mean_type=info.get("mean_type", "eps"),
        var_type=info.get("var_type", "fixed_large"),
        loss_type="mse",
    )
    prov = {
        "source": "pretrained",
        "model_path": str(p.resolve()),
        "model_sha256": sha,
        "use_ema": True,
        "pretrained_source": info.get("source"),
        "diffusion_settings": {k: v for k, v in info.items() if k != "model"},
    }
    return LoadedModel(
        net=unet.requires_grad_(False).eval(),
        diffusion=diffusion,
        image_shape=(int(cfg["in_channels"]), int(cfg["resolution"]), int(cfg["resolution"])),
        provenance=prov,
        default_clip_denoised=bool(info.get("clip_denoised", True)),
    )


def load_model(ckpt_path=None, pretrained=None, use_ema: bool = True) -> LoadedModel:
    if (ckpt_path in (None, "")) == (pretrained in (None, "")):
        raise ValueError("pass exactly one of ckpt_path=PATH (a training checkpoint) or pretrained=PATH")
    if ckpt_path not in (None, ""):
        return load_checkpoint_model(ckpt_path, use_ema)
    return load_pretrained_model(pretrained, use_ema)


# ------------------------------------------------------------------------------------------ config helpers
def sampler_from_cfg(cfg: DictConfig, num_timesteps: int, default_clip: bool = True) -> SamplerConfig:
    s = cfg.get("sampler") or {}
    name = s.get("name", "ancestral")

    def pick(key, default=None):
        v = cfg.get(key)
        if v is not None:
            return v
        v = s.get(key)
        return default if v is None else v

    steps = pick("steps")
    if name == "ancestral":
        if steps is not None and int(steps) != num_timesteps:
            raise ValueError(
                f"sampler=ancestral always runs all T={num_timesteps} steps; for steps={steps} use "
                f"sampler=respaced steps={steps} (ancestral on a subset of timesteps) or sampler=ddim"
            )
        steps = None
    elif steps is None or int(steps) < 1:
        raise ValueError(f"sampler={name} needs steps >= 1 (e.g. steps=100), got {steps}")
    elif int(steps) > num_timesteps:
        raise ValueError(f"steps={steps} exceeds the model's T={num_timesteps}")
    clip = cfg.get("clip_denoised")
    if clip is None:
        clip = s.get("clip_denoised")
    if clip is None:
        clip = default_clip
    return SamplerConfig(
        name=name,
        steps=None if steps is None else int(steps),
        eta=float(pick("eta", 0.0)),
        clip_denoised=bool(clip),
        var_type=pick("var_type"),
    )


def sampler_label(sampler: SamplerConfig, num_timesteps: int) -> str:
    """``""`` for the paper's full chain (ancestral, or respaced with all T steps), else e.g. ``ddim100``."""
    if sampler.name == "ancestral" or (sampler.name == "respaced" and sampler.steps == num_timesteps):
        return ""
    return f"{sampler.name}{sampler.steps}"


def sampler_dict(sampler: SamplerConfig, num_timesteps: int) -> dict:
    return {
        "name": sampler.name,
        "steps": sampler.steps if sampler.steps is not None else num_timesteps,
        "eta": sampler.eta if sampler.name == "ddim" else None,
        "clip_denoised": sampler.clip_denoised,
        "var_type": sampler.var_type,
    }


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("ddpm", "torch", "lightning", "torch-fidelity", "torchmetrics", "numpy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


# ----------------------------------------------------------------------------------------------- devices
def make_fabric(cfg: DictConfig):
    """A Lightning Fabric for ``cfg.trainer`` (accelerator, devices, num_nodes, strategy, precision); several
    processes (CPU: gloo) are started by ``fabric.launch()``."""
    from lightning.fabric import Fabric
    from lightning.fabric.strategies import DDPStrategy

    t = cfg.get("trainer") or {}
    devices = t.get("devices", 1)
    num_nodes = int(t.get("num_nodes", 1))
    strategy = t.get("strategy", "auto")
    multi = not (isinstance(devices, int) and devices * num_nodes == 1)
    if strategy in ("auto", "ddp") and multi:
        strategy = DDPStrategy(timeout=datetime.timedelta(seconds=int(t.get("dist_timeout_s", 10800))))
    return Fabric(
        accelerator=t.get("accelerator", "auto"),
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        precision=sample_precision(cfg),
    )


class _Progress:
    """tqdm bar (rank 0) in images with images/s and an ETA."""

    def __init__(self, total: int, enabled: bool, desc: str):
        self.bar = None
        if enabled and total > 0:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="img", desc=desc, dynamic_ncols=True, smoothing=0.1)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------------------------- shards
def shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]


def shard_path(shard_dir: Path, start: int, stop: int) -> Path:
    return shard_dir / f"shard_{start:08d}_{stop:08d}.npz"


def _check_signature(shard_dir: Path, signature: dict) -> None:
    path = shard_dir / "signature.json"
    if path.is_file():
        old = json.loads(path.read_text())
        old = {**SIGNATURE_DEFAULTS, **old}
        diff = {k: (old.get(k), signature.get(k)) for k in SIGNATURE_KEYS if old.get(k) != signature.get(k)}
        if diff:
            raise ValueError(
                f"{shard_dir} holds shards sampled with other settings ({diff}: (before, now)). Use another "
                "out_dir, or delete that shards/ folder to start over."
            )
    else:
        shard_dir.mkdir(parents=True, exist_ok=True)
        write_json(path, signature)


def _load_shard(path: Path, start: int, stop: int, image_shape) -> np.ndarray | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            x = z["images"]
    except Exception:  # a truncated file cannot exist (atomic writes), but be lenient: resample it
        return None
    if x.shape != (stop - start, *image_shape) or x.dtype != np.uint8:
        return None
    return x


def to_nhwc3(images_nchw: np.ndarray) -> np.ndarray:
    """uint8 ``[N, C, H, W]`` -> ``[N, H, W, 3]`` (1 channel repeated), the ``arr_0`` convention."""
    x = np.ascontiguousarray(np.transpose(images_nchw, (0, 2, 3, 1)))
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return x


# ----------------------------------------------------------------------------------------------- main
def validate_sample_cfg(cfg: DictConfig) -> None:
    n = cfg.get("num_samples")
    if n is None or int(n) <= 0:
        raise ValueError(f"num_samples must be a positive integer (the number of images to write), got {n}")
    for key in ("batch_size", "shard_size"):
        if int(cfg.get(key) or 0) <= 0:
            raise ValueError(f"{key} must be a positive integer, got {cfg.get(key)}")
    if cfg.get("compute_fid") and int(n) < int(cfg.get("min_fid_samples", 2)):
        raise ValueError(
            f"compute_fid=true needs at least min_fid_samples={cfg.get('min_fid_samples', 2)} samples, "
            f"got num_samples={n} (the paper's protocol is 50000)"
        )
    if cfg.get("fid_backend", "ddpm") not in ("ddpm", "torch-fidelity", "both"):
        raise ValueError(f"fid_backend must be ddpm, torch-fidelity or both, got {cfg.get('fid_backend')!r}")


def sample(cfg: DictConfig) -> dict:
    """Run ``sample.py`` (or, with ``nll=true``, the NLL evaluation); returns the metrics dict on rank 0 and
    ``{}`` on the other ranks."""
    if cfg.get("nll"):
        from ddpm.evaluate import evaluate_nll

        return evaluate_nll(cfg)
    validate_sample_cfg(cfg)
    out_dir = check_writable(cfg.out_dir)
    fabric = make_fabric(cfg)
    fabric.launch()
    rank, world = fabric.global_rank, fabric.world_size

    loaded = load_model(cfg.get("ckpt_path"), cfg.get("pretrained"), bool(cfg.get("use_ema", True)))
    loaded.to(fabric.device)
    compile_opts = compile_options(cfg)
    if compile_opts is not None:
        loaded.net = compile_for_sampling(loaded.net, **compile_opts)
    T = loaded.diffusion.num_timesteps
    sampler = sampler_from_cfg(cfg, T, loaded.default_clip_denoised)
    n, bs, seed = int(cfg.num_samples), int(cfg.batch_size), int(cfg.seed)
    shard_size = int(cfg.shard_size)
    shard_dir = out_dir / "shards"
    signature = {
        "model_sha256": loaded.provenance["model_sha256"],
        "use_ema": loaded.provenance["use_ema"],
        "sampler": sampler_dict(sampler, T),
        "seed": seed,
        "shard_size": shard_size,
        "image_shape": list(loaded.image_shape),
        "device_type": fabric.device.type,  # CPU and CUDA generators give different noise for one seed
        # the arithmetic: bf16 or a compiled graph rounds differently, so their images are not the eager fp32 ones
        "precision": sample_precision(cfg),
        "compile": compile_label(cfg),
    }
    signature = json.loads(json.dumps(signature))
    _check_signature(shard_dir, signature)

    ranges = shard_ranges(n, shard_size)
    missing = [r for r in ranges if _load_shard(shard_path(shard_dir, *r), *r, loaded.image_shape) is None]
    if world > 1:  # every rank decides from the same view of shards/ before any rank writes a new shard
        fabric.barrier()
    mine = missing[rank::world]
    n_mine = sum(b - a for a, b in mine)
    n_missing = sum(b - a for a, b in missing)
    if rank == 0:
        log.info(
            "sampling %d images (%d already in %s), %s, %d process(es), batch %d",
            n_missing, n - n_missing, shard_dir, sampler_dict(sampler, T), world, bs,
        )
    bar = _Progress(n_mine, bool(cfg.get("progress", True)) and rank == 0, f"sampling (rank 0 of {world})")
    model_fn = loaded.model_fn()
    start_time = time.time()
    for a, b in mine:
        parts = []
        for i in range(a, b, bs):
            j = min(i + bs, b)
            with fabric.autocast():
                x = generate(model_fn, loaded.diffusion, seeds_for(seed, i, j), loaded.image_shape, sampler,
                             device=fabric.device)
            parts.append(to_uint8(x.float()).cpu().numpy())
            bar.update(j - i)
        atomic_savez(shard_path(shard_dir, a, b), images=np.concatenate(parts), start=a, stop=b)
    bar.close()
    sample_seconds = time.time() - start_time
    if world > 1:
        fabric.barrier()
    if rank != 0:
        return {}
    wall = time.time() - start_time
    rate = n_missing / wall if wall > 0 and n_missing else float("nan")
    if n_missing:
        print(f"[ddpm] sampled {n_missing} images in {wall:.1f} s: {rate:.2f} images/s, {world} process(es)")
    return finish(cfg, out_dir, loaded, sampler, fabric, n_missing, sample_seconds, wall)


def merge_shards(out_dir: Path, n: int, shard_size: int, image_shape) -> np.ndarray:
    shard_dir = out_dir / "shards"
    parts = []
    for a, b in shard_ranges(n, shard_size):
        x = _load_shard(shard_path(shard_dir, a, b), a, b, image_shape)
        if x is None:
            raise RuntimeError(f"shard {a}..{b} missing in {shard_dir} after sampling; run the command again")
        parts.append(x)
    return np.concatenate(parts)


def finish(cfg, out_dir: Path, loaded: LoadedModel, sampler: SamplerConfig, fabric, n_new: int,
           sample_seconds: float, wall: float) -> dict:
    n, T = int(cfg.num_samples), loaded.diffusion.num_timesteps
    images = merge_shards(out_dir, n, int(cfg.shard_size), loaded.image_shape)  # uint8 [N, C, H, W]
    atomic_savez(out_dir / "samples.npz", arr_0=to_nhwc3(images))
    k = min(int(cfg.get("grid_images", 64) or 0), n)
    if k > 0:
        up = cfg.get("grid_upscale") or max(1, math.ceil(64 / loaded.image_shape[-1]))
        save_png(make_grid_uint8(torch.from_numpy(images[:k]), upscale=int(up)), out_dir / "samples.png")
    if cfg.get("save_images"):
        img_dir = out_dir / "images"
        for i in range(n):
            p = img_dir / f"{i:06d}.png"
            if not p.exists():
                save_png(torch.from_numpy(images[i]).permute(1, 2, 0), p)
    label = sampler_label(sampler, T)
    metrics: dict[str, Any] = {
        "num_samples": n,
        "image_shape": list(loaded.image_shape),
        "npz": str(out_dir / "samples.npz"),
        "npz_layout": "arr_0 uint8 [N, H, W, 3] (1-channel images repeated to 3 channels)",
        "seed": int(cfg.seed),
        "seed_rule": "image i: ddpm.generate.seeds_for(seed, i, i+1)",
        "sampler": sampler_dict(sampler, T),
        "sampler_label": label or "full_chain",
        "num_timesteps": T,
        "world_size": fabric.world_size,
        "device": str(fabric.device),
        "precision": sample_precision(cfg),
        "compile": compile_label(cfg),
        "batch_size": int(cfg.batch_size),
        "newly_sampled": n_new,
        "sample_seconds": round(sample_seconds, 3),
        "images_per_second": round(n_new / wall, 4) if n_new and wall > 0 else None,
        "versions": library_versions(),
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quantisation": "round((clamp(x,-1,1)+1)*127.5)",
        **{k: v for k, v in loaded.provenance.items()},
    }
    if cfg.get("compute_fid"):
        metrics.update(compute_sample_fid(cfg, images, loaded, label, device=fabric.device))
    write_json(out_dir / "metrics.json", metrics)
    log.info("wrote %s, metrics.json in %s", "samples.npz", out_dir)
    return metrics


# ------------------------------------------------------------------------------------------------ FID / IS
def data_config(cfg: DictConfig, run_cfg: dict | None) -> dict | None:
    """The data config to use: ``data=NAME`` (+ ``data_overrides``) composed from conf/data, else the
    checkpoint's own."""
    name = cfg.get("data")
    overrides = list(cfg.get("data_overrides") or [])
    if name is None and not overrides:
        return (run_cfg or {}).get("data")
    if name is None:
        raise ValueError("data_overrides need data=NAME too")
    return compose_data_cfg([f"data={name}", *overrides])


def compose_data_cfg(overrides: list[str]) -> dict:
    """The resolved ``data`` node of ``conf/train.yaml`` composed with ``overrides`` (``data=NAME``,
    ``data.root=...``)."""
    from ddpm.config import compose

    cfg = compose("train", overrides)
    return OmegaConf.to_container(cfg.data, resolve=True, enum_to_str=True)  # type: ignore[return-value]


def build_datamodule(data_cfg: dict | None, what: str):
    if not data_cfg:
        raise ValueError(
            f"{what} needs data: this model has no training data config (published weights); pass data=NAME "
            "(a conf/data option, e.g. data=cifar10) and data_overrides=[data.root=...] if needed"
        )
    from hydra.utils import instantiate

    from ddpm.data import upgrade_data_config

    return instantiate(upgrade_data_config(data_cfg))


def fid_key(name: str, n: int, label: str) -> str:
    from ddpm.metrics.fid import metric_key

    return metric_key(name, n) + (f"_{label}" if label else "")


def compute_sample_fid(cfg, images_nchw: np.ndarray, loaded: LoadedModel, label: str, device) -> dict:
    """FID/IS of the samples; keys like ``fid_50k`` / ``fid_5k_ddim100`` (count and sampler in the key)."""
    from ddpm.metrics.extractors import get_extractor
    from ddpm.metrics.fid import compute_fid_is
    from ddpm.metrics.fidelity import compute_with_torch_fidelity
    from ddpm.metrics.refstats import RefStats, reference_stats

    n = images_nchw.shape[0]
    extractor = get_extractor(cfg.feature_extractor, weights_path=cfg.get("inception_weights"), device=device)
    backend = cfg.get("fid_backend", "ddpm")
    splits = int(cfg.get("is_splits", 10))
    dm = None
    if cfg.get("ref_stats"):
        ref = RefStats.load(cfg.ref_stats, extractor=extractor.name)
    else:
        dm = build_datamodule(data_config(cfg, loaded.run_cfg), "compute_fid=true")
        cache = Path(cfg.paths.cache_dir) / "refstats" if "paths" in cfg else None
        ref, _ = reference_stats(dm, cfg.get("ref_split", "train"), extractor, cache_dir=cache, device=device)
    if n != 50000:
        warnings.warn(
            f"FID/IS from {n} samples (key {fid_key('fid', n, label)}): not comparable with the paper's 50k "
            "figure", stacklevel=2,
        )
    out: dict[str, Any] = {
        "fid_extractor": extractor.name,
        "ref_id": ref.id,
        "ref_sha": ref.sha,
        "ref_n": ref.n,
        "ref_split": cfg.get("ref_split", "train"),
    }
    if backend in ("ddpm", "both"):
        res = compute_fid_is(images_nchw, ref, extractor, splits=splits, device=device)
        out[fid_key("fid", n, label)] = res[f"{fid_key('fid', n, '')}"]
        out[fid_key("is", n, label)] = res[fid_key("is", n, "")]
        out[fid_key("is", n, label) + "_std"] = res[fid_key("is", n, "") + "_std"]
        out["is_splits"] = res["is_splits"]
    if backend in ("torch-fidelity", "both"):
        if dm is None:
            dm = build_datamodule(data_config(cfg, loaded.run_cfg), "fid_backend=torch-fidelity")
        real = torch.cat(list(dm.iter_uint8(cfg.get("ref_split", "train"))))
        tf = compute_with_torch_fidelity(
            images_nchw, real, feature_extractor=extractor.name, weights_path=cfg.get("inception_weights"),
            isc_splits=splits, cuda=torch.device(device).type == "cuda",
        )
        sfx = "_torch_fidelity" if backend == "both" else ""
        out[fid_key("fid", n, label) + sfx] = tf["fid"]
        out[fid_key("is", n, label) + sfx] = tf["is"]
        out[fid_key("is", n, label) + "_std" + sfx] = tf["is_std"]
    out["fid_library"] = "ddpm.metrics (float64)" if backend == "ddpm" else backend
    return out


def to_plain(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]
