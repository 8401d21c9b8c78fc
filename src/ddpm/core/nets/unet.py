"""The DDPM UNet (Ho et al. 2020, App. B; official ``diffusion_tf/models/unet.py``).

A PixelCNN++-style U-Net built from wide ResNet blocks with GroupNorm, a sinusoidal timestep embedding fed
to every residual block, and single-head self-attention at the listed resolutions. With the defaults it is the
35,746,307-parameter CIFAR-10 model; ``ch_mult=(1, 1, 2, 2, 4, 4), dropout=0`` at 256x256 is the 113,673,219-
parameter LSUN / CelebA-HQ model.

The network knows nothing about diffusion: ``forward(x, t)`` maps ``[N, C, H, W]`` and integer timesteps
``[N]`` to ``[N, out_channels, H, W]``. The caller decides what the output means
(``out_channels = 2 * C`` when the variance is learned).

Class-conditional (beyond the paper, opt-in: ``num_classes=K``): ``forward(x, t, y)`` adds a learned class
embedding (``nn.Embedding(K + 1, 4ch)``, index ``K`` = "no class", the null token of classifier-free guidance)
to the timestep embedding after its MLP, as improved-diffusion's ``num_classes`` and diffusers'
``num_class_embeds``. With ``num_classes=None`` (the default) the network, its parameters, their
initialisation and its state-dict keys are exactly the unconditional ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ddpm.core.nets.layers import (
    AttnBlock,
    Downsample,
    ResBlock,
    Upsample,
    conv3x3,
    group_norm,
    linear,
    timestep_embedding,
)


class _Level(nn.Module):
    """One resolution level: ``blocks[j]``, ``attns[j]`` (empty without attention), an optional resampler."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        self.attns = nn.ModuleList()
        self.downsample: Downsample | None = None
        self.upsample: Upsample | None = None


class UNet(nn.Module):
    """DDPM UNet.

    :param in_channels: image channels ``C`` of ``x``.
    :param out_channels: output channels (``C``, or ``2 * C`` for a learned variance).
    :param ch: base width; the timestep MLP is ``ch -> 4ch -> 4ch``.
    :param ch_mult: width multiplier per resolution level (level ``i`` has ``ch * ch_mult[i]`` channels).
    :param num_res_blocks: ResBlocks per level on the way down (``+ 1`` on the way up).
    :param attn_resolutions: spatial sizes (given ``resolution``) with self-attention after each block.
    :param dropout: dropout inside the ResBlocks (paper: 0.1 on CIFAR-10, 0 at 256x256).
    :param resolution: the training image size; only used to place the attention layers.
    :param resamp_with_conv: conv in the down/up samplers (official default); else avg-pool / plain nearest.
    :param grad_checkpointing: recompute ResBlock activations in backward (saves memory at 256x256; opt-in).
    :param num_classes: ``None`` (unconditional, the paper) or the number of classes ``K``: a class embedding with
        ``K + 1`` rows, row ``K`` the null token (:attr:`null_label`).

    Every GroupNorm has 32 groups and eps 1e-6 (official); only widths that 32 does not divide (small
    non-published presets) use fewer groups, see :func:`ddpm.core.nets.layers.group_norm`.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        resolution: int = 32,
        resamp_with_conv: bool = True,
        grad_checkpointing: bool = False,
        num_classes: int | None = None,
    ):
        super().__init__()
        ch_mult = tuple(int(m) for m in ch_mult)
        attn_resolutions = tuple(int(r) for r in attn_resolutions)
        if not ch_mult:
            raise ValueError("UNet: ch_mult must name at least one level")
        if resolution % 2 ** (len(ch_mult) - 1) != 0:
            raise ValueError(
                f"UNet: resolution {resolution} is not divisible by 2**{len(ch_mult) - 1} "
                f"({len(ch_mult)} levels)"
            )
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.ch, self.ch_mult, self.num_res_blocks = int(ch), ch_mult, int(num_res_blocks)
        self.attn_resolutions, self.resolution = attn_resolutions, int(resolution)
        self.dropout, self.resamp_with_conv = float(dropout), bool(resamp_with_conv)
        self.grad_checkpointing = bool(grad_checkpointing)
        if num_classes is not None and (isinstance(num_classes, bool) or int(num_classes) < 1):
            raise ValueError(f"model.num_classes must be null or an integer >= 1, got {num_classes!r}")
        self.num_classes = None if num_classes is None else int(num_classes)
        num_levels = len(ch_mult)
        temb_ch = 4 * ch

        # timestep embedding MLP (official temb/dense0, dense1)
        self.temb_dense0 = linear(ch, temb_ch)
        self.temb_dense1 = linear(temb_ch, temb_ch)

        self.conv_in = conv3x3(in_channels, ch)

        # down path; track the width of every tensor pushed on the skip stack `hs`
        hs_ch = [ch]
        block_in = ch
        cur_res = resolution
        self.down = nn.ModuleList()
        for i, mult in enumerate(ch_mult):
            level = _Level()
            block_out = ch * mult
            for _ in range(num_res_blocks):
                level.blocks.append(ResBlock(block_in, block_out, temb_ch, dropout))
                block_in = block_out
                if cur_res in attn_resolutions:
                    level.attns.append(AttnBlock(block_in))
                hs_ch.append(block_in)
            if i != num_levels - 1:
                level.downsample = Downsample(block_in, resamp_with_conv)
                hs_ch.append(block_in)
                cur_res //= 2
            self.down.append(level)

        # middle
        self.mid_block1 = ResBlock(block_in, block_in, temb_ch, dropout)
        self.mid_attn = AttnBlock(block_in)
        self.mid_block2 = ResBlock(block_in, block_in, temb_ch, dropout)

        # up path: self.up[i] is level i (as in the official code); it runs for i = L-1 ... 0
        up_levels: list[_Level] = []
        for i in reversed(range(num_levels)):
            level = _Level()
            block_out = ch * ch_mult[i]
            for _ in range(num_res_blocks + 1):
                level.blocks.append(ResBlock(block_in + hs_ch.pop(), block_out, temb_ch, dropout))
                block_in = block_out
                if cur_res in attn_resolutions:
                    level.attns.append(AttnBlock(block_in))
            if i != 0:
                level.upsample = Upsample(block_in, resamp_with_conv)
                cur_res *= 2
            up_levels.insert(0, level)
        assert not hs_ch, "skip bookkeeping out of sync"
        self.up = nn.ModuleList(up_levels)

        self.norm_out = group_norm(block_in)
        self.conv_out = conv3x3(block_in, out_channels, init_scale=0.0)
        # Built last, so every other weight is initialised as in the unconditional network of the same seed.
        # N(0, 1) rows (nn.Embedding's default, as improved-diffusion and diffusers).
        self.class_emb = nn.Embedding(self.num_classes + 1, temb_ch) if self.num_classes is not None else None

    @property
    def null_label(self) -> int | None:
        """The "no class" index ``K`` (``None`` for an unconditional network)."""
        return self.num_classes

    def config(self) -> dict:
        """Constructor arguments (JSON-serialisable) that rebuild this architecture."""
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "ch": self.ch,
            "ch_mult": list(self.ch_mult),
            "num_res_blocks": self.num_res_blocks,
            "attn_resolutions": list(self.attn_resolutions),
            "dropout": self.dropout,
            "resolution": self.resolution,
            "resamp_with_conv": self.resamp_with_conv,
            "grad_checkpointing": self.grad_checkpointing,
            # only for a conditional network: the unconditional config (and what is exported from it) is unchanged
            **({"num_classes": self.num_classes} if self.num_classes is not None else {}),
        }

    def _res(self, block: ResBlock, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, h, temb, use_reentrant=False)
        return block(h, temb)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """:param x: ``[N, in_channels, H, W]`` with H, W divisible by ``2**(len(ch_mult)-1)``.
        :param t: ``[N]`` integer timesteps (a scalar is broadcast to the batch).
        :param y: ``[N]`` integer class labels in ``0..K`` (``K``: no class) for a conditional network; ``None``
            means no class (the null token). An unconditional network takes none.
        :return: ``[N, out_channels, H, W]``.
        """
        n, c, height, width = x.shape
        if c != self.in_channels:
            raise ValueError(f"UNet expects {self.in_channels} input channels, got {c}")
        factor = 2 ** (len(self.ch_mult) - 1)
        if height % factor or width % factor:
            raise ValueError(f"UNet: input size {height}x{width} must be divisible by {factor}")
        if t.ndim == 0:
            t = t.expand(n)
        if t.shape != (n,):
            raise ValueError(f"UNet: t must have shape [{n}], got {tuple(t.shape)}")

        temb = timestep_embedding(t, self.ch).to(x.dtype if x.is_floating_point() else torch.float32)
        temb = self.temb_dense1(F.silu(self.temb_dense0(temb)))
        if self.class_emb is not None:
            temb = temb + self.class_emb(self._labels(y, n, x.device))
        elif y is not None:
            raise ValueError("UNet: class labels given to an unconditional network (model.num_classes=null)")

        hs = [self.conv_in(x)]
        for level in self.down:
            for j, block in enumerate(level.blocks):
                h = self._res(block, hs[-1], temb)
                if len(level.attns):
                    h = level.attns[j](h)
                hs.append(h)
            if level.downsample is not None:
                hs.append(level.downsample(hs[-1]))

        h = hs[-1]
        h = self._res(self.mid_block1, h, temb)
        h = self.mid_attn(h)
        h = self._res(self.mid_block2, h, temb)

        for level in reversed(self.up):
            for j, block in enumerate(level.blocks):
                h = self._res(block, torch.cat([h, hs.pop()], dim=1), temb)
                if len(level.attns):
                    h = level.attns[j](h)
            if level.upsample is not None:
                h = level.upsample(h)
        assert not hs

        return self.conv_out(F.silu(self.norm_out(h), inplace=not torch.is_grad_enabled()))

    def _labels(self, y: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
        k = self.num_classes
        assert k is not None
        if y is None:
            return torch.full((n,), k, dtype=torch.long, device=device)
        if y.ndim == 0:
            y = y.expand(n)
        if y.shape != (n,):
            raise ValueError(f"UNet: y must have shape [{n}], got {tuple(y.shape)}")
        return y.long()
