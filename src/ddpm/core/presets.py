"""The network for a resolution: ``model=for_resolution`` (``data=image_folder``'s model) takes the settings of
the ``conf/model`` preset of ``data.resolution``, read from that preset's YAML (the one place they are written),
through the OmegaConf resolver ``ddpm_unet`` that this module registers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError

CONF_DIR = Path(__file__).resolve().parents[3] / "conf"

# data.resolution -> conf/model preset: the paper's CIFAR-10 network at 32, its LSUN / CelebA-HQ network at 256;
# 64 is beyond the paper (which trains no 64x64 model): unet_64.yaml says where its settings come from.
UNET_FOR_RESOLUTION = {32: "unet_cifar32", 64: "unet_64", 256: "unet_256"}


def preset_for_resolution(resolution: Any) -> str:
    """The ``conf/model`` option for square images of side ``resolution``; a ``ValueError`` naming the valid
    sides and the fix for any other."""
    choices = ", ".join(f"{r} -> model={n}" for r, n in UNET_FOR_RESOLUTION.items())
    if resolution is None:
        raise ValueError(f"model=for_resolution picks the network from data.resolution ({choices}), and this "
                         "data option has no data.resolution: choose the network with model=NAME.")
    try:
        return UNET_FOR_RESOLUTION[int(resolution)]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"data.resolution={resolution}: model=for_resolution has a network for {choices} only. "
                         "Choose one of those resolutions, or a network with model=NAME (e.g. model=unet_cifar32 "
                         "model.ch_mult=[1,2,2,2,2] for another size).") from None


def unet_setting(resolution: Any, key: str) -> Any:
    """The value of ``key`` in the preset of ``resolution`` (:func:`preset_for_resolution`)."""
    node = OmegaConf.load(CONF_DIR / "model" / f"{preset_for_resolution(resolution)}.yaml")
    value = node[key]
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def register_resolver() -> None:
    if not OmegaConf.has_resolver("ddpm_unet"):
        OmegaConf.register_new_resolver("ddpm_unet", unet_setting)


def check_model_resolves(model: Any) -> None:
    """Resolve the model config; a ``model=for_resolution`` resolver's ``ValueError`` is raised with its own
    message (OmegaConf would wrap it in an interpolation error that keeps only the text)."""
    try:
        OmegaConf.to_container(model, resolve=True)
    except InterpolationResolutionError as e:
        head, sep, message = str(e).partition("ValueError raised while resolving interpolation: ")
        if not sep:
            raise
        raise ValueError(message.split("\n    full_key:")[0]) from None
