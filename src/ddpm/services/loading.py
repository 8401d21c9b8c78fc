"""Loading a model to sample or evaluate with: a training checkpoint, a run directory, or published weights
-> the network, its diffusion, the image shape, its provenance and (for checkpoints) its training config.

Used by every application that starts from saved weights (``sample.py``, the NLL evaluation, the figures,
the frontier). Checkpoints are read with ``weights_only=True`` (:func:`ddpm.core.io.safe_load_checkpoint`).
"""

from __future__ import annotations

import hashlib
import inspect
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ddpm.core.diffusion import GaussianDiffusion
from ddpm.core.io import CheckpointError, safe_load_checkpoint
from ddpm.core.rundir import CHECKPOINTS, LAST, last_checkpoint


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
    class_names: list[str] | None = None  # a conditional model's classes in label order, when known

    @property
    def num_classes(self) -> int | None:
        """``K`` of a class-conditional network (labels 0..K-1, K the null token); ``None`` if unconditional."""
        return getattr(self.net, "num_classes", None)

    def to(self, device) -> LoadedModel:
        self.net.to(device)
        self.diffusion.to(device)
        return self

    def model_fn(self):
        """``fn(x_t, t) -> output`` as the diffusion code expects it (a conditional network's: ``fn(x_t, t, y)``,
        bound to labels by :func:`ddpm.services.generate.generate`)."""
        net = self.net
        if not self.channels_last:
            return net

        def fn(x, t, y=None):
            x = x.contiguous(memory_format=torch.channels_last)
            return net(x, t) if y is None else net(x, t, y)

        return fn

    @property
    def data_config(self) -> dict | None:
        """The data config the model was trained with (``None`` for published weights)."""
        return (self.run_cfg or {}).get("data")


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def resolve_checkpoint(ckpt_path: str | os.PathLike) -> Path:
    """A ``.ckpt`` file, a run directory (-> its ``checkpoints/last.ckpt``) or that ``checkpoints/`` folder."""
    path = Path(str(ckpt_path)).expanduser()
    if path.is_dir():
        path = path / LAST if path.name == CHECKPOINTS and (path / LAST).is_file() else last_checkpoint(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ckpt_path={ckpt_path!r}: no such checkpoint. Pass a .ckpt file or a run directory that has "
            "checkpoints/last.ckpt (train.py also takes ckpt_path=last with the run's hydra.run.dir)."
        )
    return path


def read_checkpoint(ckpt_path: str | os.PathLike) -> tuple[Path, dict]:
    """The checkpoint file of ``ckpt_path`` and its contents; a file that is not one of this project's
    training checkpoints is a :class:`~ddpm.core.io.CheckpointError` naming the option."""
    path = resolve_checkpoint(ckpt_path)
    try:
        ckpt = safe_load_checkpoint(path)
    except CheckpointError as e:
        raise CheckpointError(f"ckpt_path: {e}") from e
    if not ckpt.get("hyper_parameters") or "state_dict" not in ckpt:
        raise CheckpointError(
            f"ckpt_path: {path} is a torch file but not a checkpoint of this project (no hyper_parameters / "
            "state_dict). Pass a .ckpt written by train.py, or pretrained=PATH for published weights."
        )
    return path, ckpt


def load_checkpoint_model(ckpt_path: str | os.PathLike, use_ema: bool = True) -> LoadedModel:
    """Rebuild the :class:`~ddpm.core.module.DiffusionModule` of a training checkpoint; pick EMA or raw weights."""
    from ddpm.core.module import DiffusionModule

    path, ckpt = read_checkpoint(ckpt_path)
    hp = dict(ckpt["hyper_parameters"])
    hp.pop("_instantiator", None)
    hp.pop("compile", None)  # a training speed option: sampling uses the eager network
    needed = [name for name, p in inspect.signature(DiffusionModule).parameters.items()
              if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if missing := [name for name in needed if name not in hp]:
        raise CheckpointError(
            f"ckpt_path: {path} lacks the hyper_parameters {missing} that this version's model needs (written by "
            f"ddpm {ckpt.get('ddpm_version', '?')}); sample it with the version that trained it, or retrain"
        )
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
        class_names=ckpt.get("class_names"),
    )


def load_pretrained_model(path: str | os.PathLike, use_ema: bool = True) -> LoadedModel:
    """Published weights: a safetensors file written by ``python -m ddpm.convert`` or a diffusers folder.

    These are the authors' EMA weights; ``use_ema=false`` cannot select raw weights that were never
    published, so it is refused.
    """
    from ddpm.services import interop

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
            unet, info = interop.load_converted(p)
        except ValueError:  # a raw diffusers weights file without our metadata
            unet, info = interop.load_diffusers_unet(p)
        sha = file_sha256(p)
    else:
        unet, info = interop.load_diffusers_unet(p)
        weights = [f for f in (p.rglob("diffusion_pytorch_model.*") if p.is_dir() else [p]) if f.is_file()]
        sha = file_sha256(sorted(weights)[0]) if weights else ""
    cfg = unet.config()
    diffusion = GaussianDiffusion.from_config(
        schedule=info.get("schedule", "linear"),
        num_timesteps=int(info.get("num_timesteps", 1000)),
        mean_type=info.get("mean_type", "eps"),
        var_type=info.get("var_type", "fixed_large"),
        # sampling never uses the loss; "mse" cannot go with a learned variance (an exported hybrid run)
        loss_type="hybrid" if str(info.get("var_type", "")).startswith("learned") else "mse",
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
    """The model of ``ckpt_path`` (a training checkpoint or run directory) or ``pretrained`` (exactly one)."""
    if (ckpt_path in (None, "")) == (pretrained in (None, "")):
        raise ValueError("pass exactly one of ckpt_path=PATH (a training checkpoint) or pretrained=PATH")
    if ckpt_path not in (None, ""):
        return load_checkpoint_model(ckpt_path, use_ema)
    return load_pretrained_model(pretrained, use_ema)


def model_datamodule(loaded: LoadedModel, data_cfg: Any, what: str):
    """The datamodule for ``loaded``: ``data_cfg`` when it names a dataset (``sample.py data=NAME``, a node
    with ``_target_``), else the one the model was trained on. ``what`` names the job in the error."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    if OmegaConf.is_config(data_cfg):
        data_cfg = OmegaConf.to_container(data_cfg, resolve=True)
    if not (data_cfg and "_target_" in data_cfg):
        data_cfg = loaded.data_config
    if not data_cfg:
        raise ValueError(
            f"{what} needs data: this model has no training data config (published weights). Pass data=NAME "
            "(a conf/data option, e.g. data=cifar10) and data.root=PATH if the images are elsewhere"
        )
    return instantiate(data_cfg)
