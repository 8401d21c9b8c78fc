"""A diffusers folder, both ways: read a ``UNet2DModel`` checkpoint (a pipeline folder, a ``unet/`` folder or
a bare weights file) into :class:`ddpm.core.nets.UNet` and its diffusion settings (:func:`load_diffusers_unet`),
and write a ``DDPMPipeline`` folder (:func:`export_pipeline`) that ``diffusers.DDPMPipeline.from_pretrained``
loads with no extra arguments and ``hf upload USER/REPO OUT`` publishes as it is:

* ``unet/``: ``config.json`` (:func:`ddpm.services.interop.unet.diffusers_unet_config`) and
  ``diffusion_pytorch_model.safetensors`` (the tensors under :func:`ddpm.services.interop.keys.diffusers_key_map`'s names);
* ``scheduler/scheduler_config.json``: :func:`ddpm.services.interop.scheduler.diffusers_scheduler_config`;
* ``model_index.json``; the model card ``README.md`` and ``samples.png`` when given.

``.bin`` files are read with ``torch.load(weights_only=True)`` only, so a pickle that tries to run code is
refused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ddpm.core.diffusion import GaussianDiffusion
from ddpm.core.io import write_json
from ddpm.core.nets import UNet
from ddpm.core.rundir import checkpoints_dir
from ddpm.services.interop.hub import PRETRAINED
from ddpm.services.interop.keys import convert_diffusers_state_dict, diffusers_state_dict
from ddpm.services.interop.scheduler import (
    apply_scheduler_config,
    default_diffusion_settings,
    diffusers_scheduler_config,
)
from ddpm.services.interop.unet import (
    diffusers_unet_config,
    empty_unet,
    infer_unet_kwargs,
    unet_kwargs_from_diffusers_config,
)

WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
GRID_NAME = "samples.png"  # the sample grid beside the model card


# ----------------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------------


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file, or a ``.bin`` / ``.pt`` file with ``torch.load(weights_only=True)``.

    Pickles are never unpickled with arbitrary code execution: anything but plain tensors is refused.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    if path.suffix in (".bin", ".pt", ".pth", ".ckpt"):
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # UnpicklingError for anything that is not plain tensors/containers
            first_line = str(e).splitlines()[0] if str(e) else ""
            raise ValueError(
                f"refusing to load {path}: it is not a plain tensor state dict (read with "
                f"torch.load(weights_only=True)): {type(e).__name__}: {first_line}"
            ) from e
        if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
            sd = sd["state_dict"]
        if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise ValueError(f"{path} does not hold a flat {{name: tensor}} state dict")
        return dict(sd)
    raise ValueError(f"unknown weights file type {path.suffix!r} ({path}); expected .safetensors or .bin")


def _read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _find_files(path: Path) -> tuple[Path, Path | None, Path | None]:
    """(weights file, config.json or None, scheduler_config.json or None) for a folder or a single file."""
    if path.is_file():
        weights, folder = path, path.parent
        config = folder / "config.json"
        config = config if config.is_file() else None
    elif path.is_dir():
        folder = path / "unet" if (path / "unet" / "config.json").is_file() else path
        found = [folder / name for name in WEIGHT_NAMES if (folder / name).is_file()]
        if not found:
            if checkpoints_dir(path).is_dir() or any(path.glob("*.ckpt")):  # a train.py run
                hint = ("it is a train.py run, which the commands read as ckpt_path=... (python -m ddpm.export RUN "
                        "OUT makes a diffusers folder of it)")
            else:
                hint = "expected a diffusers folder (or a .safetensors file from python -m ddpm.convert)"
            raise FileNotFoundError(f"{folder} holds none of {list(WEIGHT_NAMES)}: {hint}")
        weights = found[0]  # safetensors preferred
        config = folder / "config.json"
        if not config.is_file():
            raise FileNotFoundError(f"{folder} has weights but no config.json")
    else:
        raise FileNotFoundError(f"{path} does not exist")
    candidates = [
        path / "scheduler" / "scheduler_config.json",
        path / "scheduler_config.json",
        folder / "scheduler_config.json",
        folder.parent / "scheduler" / "scheduler_config.json",
    ]
    sched = next((c for c in candidates if c.is_file()), None)
    return weights, config, sched


def load_diffusers_unet(path: str | os.PathLike, *, source: str | None = None) -> tuple[UNet, dict[str, Any]]:
    """Build our :class:`UNet` from a local diffusers checkpoint and load its weights.

    :param path: a folder with ``config.json`` + ``diffusion_pytorch_model.safetensors`` (or ``.bin``), a
        pipeline folder with a ``unet/`` subfolder, or a single weights file (its config is read from a
        ``config.json`` next to it, else inferred from the weights).
    :param source: a name to record (e.g. the hub id) and use for the default settings of a known model.
    :return: ``(unet, info)``; ``unet`` in eval mode; ``info`` holds the diffusion settings to sample with
        (``schedule``, ``num_timesteps``, ``mean_type``, ``var_type``, ``clip_denoised``), from
        ``scheduler_config.json`` when present, and ``source``, ``model`` (the UNet config).
    """
    path = Path(path)
    weights, config_path, sched_path = _find_files(path)
    sd = read_weights(weights)
    if config_path is not None:
        kwargs = unet_kwargs_from_diffusers_config(_read_json(config_path))
    else:
        kwargs = infer_unet_kwargs(sd)
    unet = empty_unet(kwargs)
    unet.load_state_dict(convert_diffusers_state_dict(sd, unet), strict=True, assign=True)
    unet.eval()

    info = default_diffusion_settings(kwargs["resolution"])
    if source in PRETRAINED:
        info["var_type"] = PRETRAINED[source]["var_type"]
    if sched_path is not None:
        info = apply_scheduler_config(info, _read_json(sched_path))
    info["source"] = source or str(path)
    info["model"] = unet.config()
    return unet, info


# ----------------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------------


def _save_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": "pt"})


def export_pipeline(
    unet: UNet,
    diffusion: GaussianDiffusion,
    out: str | os.PathLike,
    *,
    clip_denoised: bool = True,
    card: str | None = None,
    grid: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the pipeline folder ``out`` (see the module doc). Everything is checked and written into a
    temporary folder beside ``out`` first, then moved into place, so a refusal or a crash leaves no folder.

    :param card: the model card (``README.md``); ``None`` writes none.
    :param grid: an image to copy as ``samples.png`` (the card links it).
    :param overwrite: replace an existing ``out``; otherwise an existing non-empty ``out`` is an error.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out} exists and is not empty; pass --overwrite to replace it")
    sched = diffusers_scheduler_config(diffusion, clip_denoised)
    if unet.out_channels != unet.in_channels * diffusion.model_out_channels_factor:
        raise ValueError(
            f"the UNet outputs {unet.out_channels} channels for {unet.in_channels} input channels, but "
            f"var_type={diffusion.var_type.value} needs {unet.in_channels * diffusion.model_out_channels_factor}"
        )
    unet_config = diffusers_unet_config(unet)
    tensors = diffusers_state_dict(unet)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        (tmp / "unet").mkdir()
        (tmp / "scheduler").mkdir()
        write_json(tmp / "unet" / "config.json", unet_config)
        _save_safetensors(tensors, tmp / "unet" / "diffusion_pytorch_model.safetensors")
        write_json(tmp / "scheduler" / "scheduler_config.json", sched)
        index = {
            "_class_name": "DDPMPipeline",
            "scheduler": ["diffusers", "DDPMScheduler"],
            "unet": ["diffusers", "UNet2DModel"],
        }
        if "_diffusers_version" in sched:
            index["_diffusers_version"] = sched["_diffusers_version"]
        write_json(tmp / "model_index.json", index)
        if grid is not None:
            shutil.copyfile(grid, tmp / GRID_NAME)
        if card is not None:
            (tmp / "README.md").write_text(card, encoding="utf-8")
        os.chmod(tmp, 0o755 & ~_umask())
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
