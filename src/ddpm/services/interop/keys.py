"""The tensors of :class:`ddpm.core.nets.UNet` under their diffusers ``UNet2DModel`` names, both ways.

One map, :func:`diffusers_key_map` (our key -> theirs), read forwards by the exporter and backwards by the
converter. The converter also accepts diffusers' old attention names ``query/key/value/proj_attn``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ddpm.core.nets import UNet

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
_ATTN_LINEAR = (".to_q.weight", ".to_k.weight", ".to_v.weight", ".to_out.0.weight")  # Linear there, 1x1 conv here
_SIMPLE = {
    "temb_dense0": "time_embedding.linear_1",
    "temb_dense1": "time_embedding.linear_2",
    "conv_in": "conv_in",
    "norm_out": "conv_norm_out",
    "conv_out": "conv_out",
    "class_emb": "class_embedding",  # a class-conditional UNet (num_classes=K): UNet2DModel num_class_embeds=K+1
}
_MID = {"mid_block1": "mid_block.resnets.0", "mid_block2": "mid_block.resnets.1"}


def _diffusers_name(key: str, num_levels: int) -> str:
    """Our parameter name -> the diffusers ``UNet2DModel`` name of the same tensor."""
    parts = key.split(".")
    leaf = parts[-1]
    if len(parts) == 2 and parts[0] in _SIMPLE:
        return f"{_SIMPLE[parts[0]]}.{leaf}"
    if len(parts) == 3 and parts[0] in _MID:
        return f"{_MID[parts[0]]}.{_RES[parts[1]]}.{leaf}"
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


def rename_old_attention(key: str) -> str:
    """A diffusers key with the old attention names (``query``, ...) under the current ones (``to_q``, ...)."""
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
        new = rename_old_attention(key)
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


def diffusers_state_dict(unet: UNet) -> dict[str, torch.Tensor]:
    """``unet``'s tensors under their ``UNet2DModel`` names (:func:`diffusers_key_map`); the attention 1x1
    convolutions become the ``Linear`` weights diffusers has there."""
    out: dict[str, torch.Tensor] = {}
    sd = unet.state_dict()
    for ours, theirs in diffusers_key_map(unet).items():
        value = sd[ours].detach().cpu()
        if theirs.endswith(_ATTN_LINEAR) and value.ndim == 4:
            assert value.shape[2:] == (1, 1), (ours, tuple(value.shape))
            value = value[:, :, 0, 0]
        out[theirs] = value.contiguous().clone()
    return out
