"""The published DDPM weights on the Hugging Face hub (``google/ddpm-*``: the authors' TF checkpoints in
diffusers' layout, reference doc section 12), fetched only when asked to: ``huggingface_hub`` is imported
lazily, and only for a download."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ddpm.core.io import DownloadError, MissingDependencyError

#: Published diffusers ports of the official checkpoints (EMA weights) and their release settings.
PRETRAINED: dict[str, dict[str, Any]] = {
    "google/ddpm-cifar10-32": {"resolution": 32, "var_type": "fixed_large", "dataset": "cifar10"},
    "google/ddpm-celebahq-256": {"resolution": 256, "var_type": "fixed_small", "dataset": "celebahq256"},
    "google/ddpm-church-256": {"resolution": 256, "var_type": "fixed_small", "dataset": "lsun_church256"},
    "google/ddpm-bedroom-256": {"resolution": 256, "var_type": "fixed_small", "dataset": "lsun_bedroom256"},
    "google/ddpm-cat-256": {"resolution": 256, "var_type": "fixed_small", "dataset": "lsun_cat256"},
}


def resolve_pretrained(name_or_path: str | os.PathLike, allow_download: bool = False) -> Path:
    """A local path as is; a hub id (e.g. ``google/ddpm-cifar10-32``) downloaded only if ``allow_download``.

    ``huggingface_hub`` is imported here, lazily, and only for a download.
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    name = str(name_or_path)
    looks_like_hub_id = name in PRETRAINED or re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None
    hint = (
        "pass a local path (a folder with config.json + diffusion_pytorch_model.safetensors or .bin, "
        "or a single weights file)"
    )
    if not looks_like_hub_id:
        raise FileNotFoundError(f"{name!r} does not exist; {hint}")
    if not allow_download:
        raise FileNotFoundError(
            f"{name!r} is not a local file or folder and downloading is off: {hint}, or allow_download=true "
            f"(CLI: --download) to fetch the hub id {name!r}. Known ids: {sorted(PRETRAINED)}"
        )
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise MissingDependencyError(
            f"downloading {name!r} needs huggingface_hub (pip install 'ddpm[convert]'); {hint}"
        ) from e
    try:
        folder = Path(snapshot_download(repo_id=name, allow_patterns=["*.json", "*.safetensors"]))
        if not any(folder.rglob("diffusion_pytorch_model.safetensors")):
            folder = Path(snapshot_download(repo_id=name, allow_patterns=["*.json", "*.bin"]))
    except Exception as e:  # offline, unknown repo, auth, ...
        raise DownloadError(f"could not download {name!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                            f"{hint}") from e
    return folder
