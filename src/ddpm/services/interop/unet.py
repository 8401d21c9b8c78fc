"""The architecture of :class:`ddpm.core.nets.UNet` as a diffusers ``UNet2DModel`` ``config.json``, both ways.

:func:`diffusers_unet_config` writes every DDPM-specific key (diffusers' defaults are not DDPM's) and checks
that :func:`unet_kwargs_from_diffusers_config` reads back exactly the same UNet; the reader accepts only the
official DDPM layout and names the key of anything else. A bare weights file without its ``config.json`` is
read by :func:`infer_unet_kwargs`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from importlib import metadata
from typing import Any

import torch

from ddpm.core.nets import UNet
from ddpm.services.interop.keys import rename_old_attention
from ddpm.services.interop.names import NotExportableError


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(f"unsupported diffusers UNet config: {msg}")


def unet_kwargs_from_diffusers_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor arguments of :class:`UNet` for a diffusers ``UNet2DModel`` ``config.json``.

    Only the official DDPM layout is accepted (GroupNorm eps 1e-6, sin-first embedding with ``freq_shift=1``,
    single-head attention, TF 'SAME' downsampling, ...); anything else raises ``ValueError`` saying which key.
    Missing keys take diffusers' own defaults, which are *not* DDPM's, so an incomplete config is refused.
    """
    cls = config.get("_class_name", "UNet2DModel")
    _check(cls == "UNet2DModel", f"_class_name is {cls!r}, expected 'UNet2DModel'")
    boc = [int(c) for c in config.get("block_out_channels", (224, 448, 672, 896))]
    down = list(config.get("down_block_types", ("DownBlock2D",) + ("AttnDownBlock2D",) * 3))
    up = list(config.get("up_block_types", ("AttnUpBlock2D",) * 3 + ("UpBlock2D",)))
    n = len(boc)
    _check(
        len(down) == n and len(up) == n,
        "block_out_channels, down_block_types, up_block_types differ in length",
    )
    ch = boc[0]
    _check(all(c % ch == 0 for c in boc), f"block_out_channels {boc} are not multiples of {ch}")
    attn_levels = []
    for i in range(n):
        _check(down[i] in ("DownBlock2D", "AttnDownBlock2D"), f"down_block_types[{i}] = {down[i]!r}")
        _check(
            up[n - 1 - i] in ("UpBlock2D", "AttnUpBlock2D"),
            f"up_block_types[{n - 1 - i}] = {up[n - 1 - i]!r}",
        )
        d_attn, u_attn = down[i].startswith("Attn"), up[n - 1 - i].startswith("Attn")
        _check(
            d_attn == u_attn, f"attention in down block {i} but not in up block {n - 1 - i} (or vice versa)"
        )
        if d_attn:
            attn_levels.append(i)

    eps = float(config.get("norm_eps", 1e-5))
    _check(math.isclose(eps, 1e-6, rel_tol=1e-3), f"norm_eps must be 1e-6 (official GroupNorm), got {eps}")
    _check(config.get("flip_sin_to_cos", True) is False, "flip_sin_to_cos must be false (sin first)")
    _check(int(config.get("freq_shift", 0)) == 1, "freq_shift must be 1 (exponent / (half - 1))")
    _check(
        config.get("time_embedding_type", "positional") == "positional",
        "time_embedding_type must be positional",
    )
    _check(config.get("act_fn", "silu") in ("silu", "swish"), f"act_fn {config.get('act_fn')!r} is not silu")
    groups = int(config.get("norm_num_groups", 32))
    _check(groups == min(32, ch), f"norm_num_groups must be 32, got {groups}")
    attn_groups = config.get("attn_norm_num_groups")
    _check(
        attn_groups is None or int(attn_groups) == groups, f"attn_norm_num_groups {attn_groups} != {groups}"
    )
    _check(int(config.get("downsample_padding", 1)) == 0, "downsample_padding must be 0 (TF 'SAME' padding)")
    _check(config.get("downsample_type", "conv") == "conv", "downsample_type must be conv")
    _check(config.get("upsample_type", "conv") == "conv", "upsample_type must be conv")
    _check(not config.get("center_input_sample", False), "center_input_sample must be false")
    _check(
        config.get("resnet_time_scale_shift", "default") == "default",
        "resnet_time_scale_shift must be default",
    )
    _check(float(config.get("mid_block_scale_factor", 1)) == 1.0, "mid_block_scale_factor must be 1")
    _check(
        config.get("mid_block_type", "UNetMidBlock2D") == "UNetMidBlock2D",
        "mid_block_type must be UNetMidBlock2D",
    )
    _check(config.get("add_attention", True) is True, "add_attention must be true")
    _check(config.get("class_embed_type") is None,
           "class_embed_type must be null (a class-conditional DDPM UNet uses num_class_embeds)")
    class_embeds = config.get("num_class_embeds")
    _check(class_embeds is None or int(class_embeds) >= 2,
           f"num_class_embeds must be null or K + 1 >= 2 (K classes and the null token), got {class_embeds}")
    _check(config.get("time_embedding_dim") in (None, 4 * ch), "time_embedding_dim must be 4 * ch")
    head_dim = config.get("attention_head_dim", 8)
    for i in attn_levels + [n - 1]:  # the mid block attends at the last width too
        _check(
            head_dim is None or int(head_dim) == boc[i],
            f"attention_head_dim {head_dim} gives multi-head attention at width {boc[i]} "
            f"(DDPM is single-head: null)",
        )

    size = config.get("sample_size")
    if isinstance(size, list | tuple):
        _check(len(set(size)) == 1, f"non-square sample_size {size}")
        size = size[0]
    _check(size is not None, "sample_size is missing (needed to place the attention layers)")
    size = int(size)
    return {
        "in_channels": int(config.get("in_channels", 3)),
        "out_channels": int(config.get("out_channels", 3)),
        "ch": ch,
        "ch_mult": [c // ch for c in boc],
        "num_res_blocks": int(config.get("layers_per_block", 2)),
        "attn_resolutions": [size // 2**i for i in attn_levels],
        "dropout": float(config.get("dropout", 0.0)),
        "resolution": size,
        "resamp_with_conv": True,
        # K classes + the null token (index K): diffusers' num_class_embeds is our num_classes + 1
        **({"num_classes": int(class_embeds) - 1} if class_embeds is not None else {}),
    }


def stamp_diffusers_version(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with ``_diffusers_version`` set to the installed diffusers (nothing when there is none)."""
    try:
        config["_diffusers_version"] = metadata.version("diffusers")
    except metadata.PackageNotFoundError:
        pass
    return config


def diffusers_unet_config(unet: UNet) -> dict[str, Any]:
    """The ``UNet2DModel`` config of ``unet``'s architecture, every DDPM-specific key written out (diffusers'
    defaults are not DDPM's). Refuses an architecture that ``UNet2DModel`` cannot express."""
    cfg = unet.config()
    if not unet.resamp_with_conv:
        raise NotExportableError(
            "resamp_with_conv=false (average-pool down / plain nearest up) has no UNet2DModel equivalent: "
            "diffusers' DDPM blocks resample with convolutions"
        )
    groups = {m.num_groups for m in unet.modules() if isinstance(m, torch.nn.GroupNorm)}
    if groups != {32}:
        raise NotExportableError(
            f"the UNet's GroupNorms use {sorted(groups)} groups (ch={unet.ch}: a width that 32 does not divide "
            "gets fewer groups here), but UNet2DModel uses one group count for every norm; use ch a multiple "
            "of 32 to export"
        )
    n = len(unet.ch_mult)
    attn = [unet.resolution // 2**i in unet.attn_resolutions for i in range(n)]
    config = {
        "_class_name": "UNet2DModel",
        "sample_size": unet.resolution,
        "in_channels": unet.in_channels,
        "out_channels": unet.out_channels,
        "block_out_channels": [unet.ch * m for m in unet.ch_mult],
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "layers_per_block": unet.num_res_blocks,
        "mid_block_type": "UNetMidBlock2D",
        "add_attention": True,
        "attention_head_dim": None,  # single-head attention at every width
        "norm_num_groups": 32,
        "attn_norm_num_groups": None,
        "norm_eps": 1e-6,
        "act_fn": "silu",
        "dropout": unet.dropout,
        "downsample_padding": 0,  # TF 'SAME' padding of the stride-2 conv
        "downsample_type": "conv",
        "upsample_type": "conv",
        "flip_sin_to_cos": False,  # sin first
        "freq_shift": 1,  # exponent / (half - 1)
        "time_embedding_type": "positional",
        "time_embedding_dim": None,
        "center_input_sample": False,
        "mid_block_scale_factor": 1,
        "resnet_time_scale_shift": "default",
        "class_embed_type": None,
        # a class-conditional UNet: K classes and the null token (index K, classifier-free guidance)
        "num_class_embeds": None if unet.num_classes is None else unet.num_classes + 1,
    }
    stamp_diffusers_version(config)
    # the importer must read back exactly this architecture (attention resolutions that fall on no level are
    # no-ops in our UNet and are dropped)
    back = unet_kwargs_from_diffusers_config(config)
    want = {k: v for k, v in cfg.items() if k != "grad_checkpointing"}
    want["attn_resolutions"] = [unet.resolution // 2**i for i in range(n) if attn[i]]
    assert back == want, f"diffusers config reads back as {back}, not {want}"
    return config


def infer_unet_kwargs(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Architecture of a bare diffusers weights file (no config.json next to it).

    The resolution cannot be read from weights: 4 levels are taken as 32x32 and 6 levels as 256x256 (the
    published models); attention is placed where the checkpoint has it.
    """
    keys = {rename_old_attention(k) for k in sd}
    if "conv_in.weight" not in keys or "conv_out.weight" not in keys:
        if any(k.startswith(("net.", "ema.")) for k in keys):  # a train.py checkpoint handed to ddpm.convert
            raise ValueError("weights file is a train.py checkpoint, not a diffusers UNet2DModel state dict: "
                             "sample.py and the other commands read it as ckpt_path=...; `python -m ddpm.export RUN "
                             "OUT` writes it as a diffusers folder")
        raise ValueError("weights file is not a diffusers UNet2DModel state dict (no conv_in / conv_out)")
    ch, in_ch = sd["conv_in.weight"].shape[:2]
    levels = sorted({int(m.group(1)) for k in keys if (m := re.match(r"down_blocks\.(\d+)\.", k))})
    n = len(levels)
    resolution = {4: 32, 6: 256}.get(n)
    if resolution is None:
        raise ValueError(f"cannot infer the resolution of a {n}-level UNet without its config.json")
    boc = [int(sd[f"down_blocks.{i}.resnets.0.conv1.weight"].shape[0]) for i in range(n)]
    blocks = {int(m.group(1)) for k in keys if (m := re.match(r"down_blocks\.0\.resnets\.(\d+)\.", k))}
    attn = [i for i in range(n) if any(k.startswith(f"down_blocks.{i}.attentions.") for k in keys)]
    return {
        "in_channels": int(in_ch),
        "out_channels": int(sd["conv_out.weight"].shape[0]),
        "ch": int(ch),
        "ch_mult": [c // int(ch) for c in boc],
        "num_res_blocks": len(blocks),
        "attn_resolutions": [resolution // 2**i for i in attn],
        "dropout": 0.0,
        "resolution": resolution,
        "resamp_with_conv": True,
        **({"num_classes": int(sd["class_embedding.weight"].shape[0]) - 1} if "class_embedding.weight" in keys else {}),
    }


def empty_unet(kwargs: Mapping[str, Any]) -> UNet:
    """A UNet with shapes only (meta tensors, no init cost); fill it with ``load_state_dict(assign=True)``."""
    with torch.device("meta"):
        return UNet(**kwargs)
