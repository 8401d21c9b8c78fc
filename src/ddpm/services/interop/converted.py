"""This project's own file of published weights: one safetensors file whose metadata carries the model config
and the diffusion settings, so that :func:`load_converted` rebuilds the model with no flags."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ddpm.core.nets import UNet
from ddpm.services.interop.unet import empty_unet

FORMAT = "ddpm.commands.convert/1"  # safetensors metadata "format" of files written by save_converted


def save_converted(unet: UNet, info: Mapping[str, Any], out: str | os.PathLike) -> Path:
    """Write ``unet``'s weights to a safetensors file whose metadata carries the model config and diffusion
    settings (JSON strings under ``model`` and ``diffusion``), atomically (temp file + ``os.replace``)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    diffusion = {k: v for k, v in info.items() if k != "model"}
    metadata = {
        "format": FORMAT,
        "model": json.dumps(unet.config()),
        "diffusion": json.dumps(diffusion),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in unet.state_dict().items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def read_converted_metadata(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(model config, diffusion settings)`` stored by :func:`save_converted`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} was not written by ddpm.commands.convert (metadata format {meta.get('format')!r})")
    return json.loads(meta["model"]), json.loads(meta["diffusion"])


def load_converted(path: str | os.PathLike) -> tuple[UNet, dict[str, Any]]:
    """Rebuild the UNet saved by :func:`save_converted`; returns ``(unet, diffusion settings)``."""
    from safetensors.torch import load_file

    model_cfg, diffusion = read_converted_metadata(path)
    unet = empty_unet(model_cfg)
    unet.load_state_dict(load_file(str(path), device="cpu"), strict=True, assign=True)
    return unet.eval(), diffusion
