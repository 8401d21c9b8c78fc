"""Load the published DDPM weights (diffusers ``UNet2DModel`` checkpoints) into :class:`ddpm.nets.UNet`.

The ``google/ddpm-*`` repositories on the Hugging Face hub hold the authors' TF checkpoints converted to
diffusers' layout. Their UNet is the official architecture, so the weights map one-to-one onto ours
(reference doc section 12). This module:

* maps a diffusers state dict onto our parameter names (:func:`convert_diffusers_state_dict`), accepting the
  old attention names ``query/key/value/proj_attn`` as well as ``to_q/to_k/to_v/to_out.0``;
* builds the matching :class:`UNet` from diffusers' ``config.json`` and returns the diffusion settings that go
  with the weights (:func:`load_diffusers_unet`);
* writes a self-describing safetensors file (weights + model config + diffusion settings in the metadata) that
  :func:`load_converted` rebuilds with no flags (:func:`save_converted`);
* resolves hub ids only when asked to (:func:`resolve_pretrained`; ``huggingface_hub`` is imported lazily).

``.bin`` files are read with ``torch.load(weights_only=True)`` only, so a pickle that tries to run code is
refused. CLI::

    python -m ddpm.convert SRC OUT [--download]

where ``SRC`` is a local folder / weights file or (with ``--download``) a hub id such as
``google/ddpm-cifar10-32``, and ``OUT`` a ``.safetensors`` path (or an existing folder).
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ddpm.diffusion import SCHEDULE_NAMES, schedule_name
from ddpm.io import DownloadError, MissingDependencyError
from ddpm.nets import UNet

#: Published diffusers ports of the official checkpoints (EMA weights) and their release settings.
PRETRAINED: dict[str, dict[str, Any]] = {
    "google/ddpm-cifar10-32": {"resolution": 32, "var_type": "fixed_large", "dataset": "cifar10"},
    "google/ddpm-celebahq-256": {"resolution": 256, "var_type": "fixed_small", "dataset": "celebahq256"},
    "google/ddpm-church-256": {"resolution": 256, "var_type": "fixed_small", "dataset": "lsun_church256"},
    "google/ddpm-bedroom-256": {"resolution": 256, "var_type": "fixed_small", "dataset": "lsun_bedroom256"},
    "google/ddpm-cat-256": {"resolution": 256, "var_type": "fixed_small", "dataset": "lsun_cat256"},
}

WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
FORMAT = "ddpm.convert/1"  # safetensors metadata "format" of files written by save_converted

_RES = {
    "norm1": "norm1",
    "conv1": "conv1",
    "temb_proj": "time_emb_proj",
    "norm2": "norm2",
    "conv2": "conv2",
    "nin_shortcut": "conv_shortcut",
}
_ATT = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_OLD_ATT = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_OLD_ATT_RE = re.compile(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")


# ----------------------------------------------------------------------------------------------------
# state dict mapping
# ----------------------------------------------------------------------------------------------------


def _diffusers_name(key: str, num_levels: int) -> str:
    """Our parameter name -> the diffusers ``UNet2DModel`` name of the same tensor."""
    parts = key.split(".")
    leaf = parts[-1]
    simple = {
        "temb_dense0": "time_embedding.linear_1",
        "temb_dense1": "time_embedding.linear_2",
        "conv_in": "conv_in",
        "norm_out": "conv_norm_out",
        "conv_out": "conv_out",
    }
    if len(parts) == 2 and parts[0] in simple:
        return f"{simple[parts[0]]}.{leaf}"
    mid = {"mid_block1": "mid_block.resnets.0", "mid_block2": "mid_block.resnets.1"}
    if len(parts) == 3 and parts[0] in mid:
        return f"{mid[parts[0]]}.{_RES[parts[1]]}.{leaf}"
    if len(parts) == 3 and parts[0] == "mid_attn":
        return f"mid_block.attentions.0.{_ATT[parts[1]]}.{leaf}"
    if parts[0] in ("down", "up"):
        i = int(parts[1])
        prefix = f"down_blocks.{i}" if parts[0] == "down" else f"up_blocks.{num_levels - 1 - i}"
        kind = parts[2]
        if kind == "blocks":
            return f"{prefix}.resnets.{parts[3]}.{_RES[parts[4]]}.{leaf}"
        if kind == "attns":
            return f"{prefix}.attentions.{parts[3]}.{_ATT[parts[4]]}.{leaf}"
        if kind == "downsample":
            return f"{prefix}.downsamplers.0.conv.{leaf}"
        if kind == "upsample":
            return f"{prefix}.upsamplers.0.conv.{leaf}"
    raise KeyError(f"no diffusers name for UNet parameter {key!r}")


def diffusers_key_map(unet: UNet) -> dict[str, str]:
    """``{our state-dict key: diffusers UNet2DModel key}`` for every tensor of ``unet``."""
    return {k: _diffusers_name(k, len(unet.ch_mult)) for k in unet.state_dict()}


def _rename_old_attention(key: str) -> str:
    m = _OLD_ATT_RE.match(key)
    return f"{m.group(1)}.{_OLD_ATT[m.group(2)]}.{m.group(3)}" if m else key


def convert_diffusers_state_dict(sd: Mapping[str, torch.Tensor], unet: UNet) -> dict[str, torch.Tensor]:
    """Map a diffusers ``UNet2DModel`` state dict onto ``unet``'s keys (for ``load_state_dict(strict=True)``).

    Attention ``Linear`` weights ``[out, in]`` become 1x1 conv weights ``[out, in, 1, 1]``; tensors are
    cast to ``unet``'s dtypes. Raises ``ValueError`` naming the key for an unmappable key, a missing key
    or a shape mismatch (with both shapes).
    """
    ours_to_theirs = diffusers_key_map(unet)
    theirs_to_ours = {v: k for k, v in ours_to_theirs.items()}
    src: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        new = _rename_old_attention(key)
        if new in src:
            raise ValueError(f"diffusers state dict holds {new!r} twice (under old and new attention names)")
        src[new] = value

    unmapped = sorted(k for k in src if k not in theirs_to_ours)
    if unmapped:
        raise ValueError(
            f"cannot map diffusers key(s) {unmapped[:10]}{' ...' if len(unmapped) > 10 else ''} "
            f"onto the DDPM UNet (ch={unet.ch}, ch_mult={list(unet.ch_mult)}, "
            f"num_res_blocks={unet.num_res_blocks}, "
            f"attn_resolutions={list(unet.attn_resolutions)}); is this a DDPM UNet2DModel checkpoint?"
        )
    missing = [theirs for theirs in ours_to_theirs.values() if theirs not in src]
    if missing:
        raise ValueError(
            f"diffusers state dict is missing key(s) {missing[:10]}{' ...' if len(missing) > 10 else ''} "
            f"needed by the DDPM UNet"
        )

    target = unet.state_dict()
    out: dict[str, torch.Tensor] = {}
    for ours, theirs in ours_to_theirs.items():
        value, want = src[theirs], target[ours]
        if value.shape != want.shape:
            if value.ndim == 2 and want.ndim == 4 and tuple(want.shape) == (*value.shape, 1, 1):
                value = value[:, :, None, None]  # attention Linear -> 1x1 conv
            else:
                raise ValueError(
                    f"shape mismatch for diffusers key {theirs!r} -> {ours!r}: checkpoint has "
                    f"{tuple(value.shape)}, the UNet expects {tuple(want.shape)}"
                )
        out[ours] = value.detach().to(dtype=want.dtype).contiguous()
    return out


# ----------------------------------------------------------------------------------------------------
# configs
# ----------------------------------------------------------------------------------------------------


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
    _check(
        config.get("class_embed_type") is None and config.get("num_class_embeds") is None, "class embeddings"
    )
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
    }


def default_diffusion_settings(resolution: int) -> dict[str, Any]:
    """The official sampling settings: linear schedule, T=1000, eps, clipping;
    fixed_large at 32x32 (CIFAR-10), fixed_small at 256x256 (LSUN / CelebA-HQ)."""
    return {
        "schedule": "linear",
        "num_timesteps": 1000,
        "mean_type": "eps",
        "var_type": "fixed_large" if resolution <= 32 else "fixed_small",
        "clip_denoised": True,
    }


def schedule_of_betas(betas: Sequence[float]) -> str:
    """The name of our schedule whose float64 betas equal ``betas`` exactly (a scheduler's ``trained_betas``);
    ``ValueError`` when none does (the project builds its diffusion from a named schedule)."""
    name = schedule_name([float(b) for b in betas])
    if name is None:
        raise ValueError(
            f"scheduler trained_betas (T={len(betas)}) equal none of this project's schedules "
            f"{list(SCHEDULE_NAMES)} bit for bit; only betas exported by `python -m ddpm.export` (or a named "
            "beta_schedule) can be read"
        )
    return name


def apply_scheduler_config(info: dict[str, Any], sched: Mapping[str, Any]) -> dict[str, Any]:
    """Override ``info`` with a diffusers ``scheduler_config.json`` (DDPMScheduler keys, or the early
    ``GaussianDDPMScheduler`` ``timesteps``). Keys that are absent leave ``info`` unchanged. ``trained_betas``
    (what ``python -m ddpm.export`` writes) win over ``beta_schedule``, as in diffusers, and must be one of
    our schedules exactly (:func:`schedule_of_betas`)."""
    info = dict(info)
    if "num_train_timesteps" in sched or "timesteps" in sched:
        info["num_timesteps"] = int(sched.get("num_train_timesteps", sched.get("timesteps")))
    if sched.get("trained_betas") is not None:
        # diffusers uses trained_betas in preference to beta_schedule; ``python -m ddpm.export`` writes them
        info["schedule"] = schedule_of_betas(sched["trained_betas"])
        info["num_timesteps"] = len(sched["trained_betas"])
    elif "beta_schedule" in sched:
        names = {"linear": "linear", "squaredcos_cap_v2": "cosine"}
        if sched["beta_schedule"] not in names:
            raise ValueError(
                f"scheduler beta_schedule {sched['beta_schedule']!r} is not supported ({list(names)})"
            )
        info["schedule"] = names[sched["beta_schedule"]]
    if info["schedule"] == "linear" and sched.get("trained_betas") is None:
        # our linear schedule is 1e-4 -> 0.02 scaled by 1000/T (exactly the paper's at T=1000)
        scale = 1000.0 / info["num_timesteps"]
        for key, want in (("beta_start", 1e-4 * scale), ("beta_end", 0.02 * scale)):
            if key in sched and not math.isclose(float(sched[key]), want, rel_tol=1e-6):
                raise ValueError(
                    f"scheduler {key}={sched[key]} differs from the DDPM linear schedule ({want})"
                )
    if sched.get("variance_type") is not None:
        names = {
            "fixed_large": "fixed_large",
            "fixed_large_log": "fixed_large",
            "fixed_small": "fixed_small",
            "fixed_small_log": "fixed_small",
            "learned_range": "learned_range",
        }
        if sched["variance_type"] not in names:
            raise ValueError(
                f"scheduler variance_type {sched['variance_type']!r} is not supported ({list(names)}); "
                f"diffusers' 'learned' predicts a variance, not the official log-variance"
            )
        info["var_type"] = names[sched["variance_type"]]
    if "clip_sample" in sched:
        info["clip_denoised"] = bool(sched["clip_sample"])
    if "prediction_type" in sched:
        names = {"epsilon": "eps", "sample": "x0"}
        if sched["prediction_type"] not in names:
            raise ValueError(f"scheduler prediction_type {sched['prediction_type']!r} is not supported")
        info["mean_type"] = names[sched["prediction_type"]]
    return info


# ----------------------------------------------------------------------------------------------------
# files
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
            raise FileNotFoundError(f"{folder} holds none of {list(WEIGHT_NAMES)}")
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


def _infer_kwargs_from_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Architecture of a bare diffusers weights file (no config.json next to it).

    The resolution cannot be read from weights: 4 levels are taken as 32x32 and 6 levels as 256x256 (the
    published models); attention is placed where the checkpoint has it.
    """
    keys = {_rename_old_attention(k) for k in sd}
    if "conv_in.weight" not in keys or "conv_out.weight" not in keys:
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
    }


def _empty_unet(kwargs: Mapping[str, Any]) -> UNet:
    """A UNet with shapes only (meta tensors, no init cost); fill it with ``load_state_dict(assign=True)``."""
    with torch.device("meta"):
        return UNet(**kwargs)


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
        kwargs = _infer_kwargs_from_state_dict(sd)
    unet = _empty_unet(kwargs)
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
        raise ValueError(f"{path} was not written by ddpm.convert (metadata format {meta.get('format')!r})")
    return json.loads(meta["model"]), json.loads(meta["diffusion"])


def load_converted(path: str | os.PathLike) -> tuple[UNet, dict[str, Any]]:
    """Rebuild the UNet saved by :func:`save_converted`; returns ``(unet, diffusion settings)``."""
    from safetensors.torch import load_file

    model_cfg, diffusion = read_converted_metadata(path)
    unet = _empty_unet(model_cfg)
    unet.load_state_dict(load_file(str(path), device="cpu"), strict=True, assign=True)
    return unet.eval(), diffusion


def main(argv: list[str] | None = None) -> None:
    from ddpm.cli import parse_paths

    args = parse_paths("python -m ddpm.convert", "Convert a diffusers UNet2DModel DDPM checkpoint (e.g. "
                       "google/ddpm-cifar10-32) into a self-describing safetensors file for this project.",
                       {"src": "local folder / weights file, or a hub id with --download",
                        "out": "output .safetensors file (or an existing folder)"},
                       {"--download": "allow fetching a hub id with huggingface_hub"}, argv)

    path = resolve_pretrained(args.src, allow_download=args.download)
    source = args.src if args.src in PRETRAINED or not Path(args.src).exists() else None
    unet, info = load_diffusers_unet(path, source=source)
    out = Path(args.out)
    if out.is_dir():
        out = out / f"{Path(str(args.src).rstrip('/')).name}.safetensors"
    save_converted(unet, info, out)
    n_params = sum(p.numel() for p in unet.parameters())
    settings = {k: v for k, v in info.items() if k != "model"}
    print(f"wrote {out} ({n_params:,} parameters)\nmodel: {unet.config()}\ndiffusion: {settings}")


if __name__ == "__main__":
    from ddpm.cli import user_errors

    with user_errors():
        main()
