"""Building blocks of the DDPM UNet, following the official code (``diffusion_tf/models/unet.py``, ``nn.py``).

Everything here is plain ``torch``; nothing knows about diffusion. Differences from a "default PyTorch"
UNet that matter for matching the official weights:

* GroupNorm uses 32 groups and **eps 1e-6** (TF ``group_norm`` defaults), see :func:`group_norm`.
* The timestep embedding puts **sin first** and divides the exponent by ``half - 1``.
* Downsampling pads TF-``'SAME'`` style: 0 on top/left, 1 on bottom/right, before a stride-2 3x3 conv.
* Initialisation is Glorot/Xavier-uniform (``fan_avg``) with scale 1, except ~zero (scale 1e-10) on every
  ResBlock ``conv2``, attention ``proj_out`` and the final ``conv_out``; see :func:`default_init_`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

GN_EPS = 1e-6  # tf.contrib.layers.group_norm default (PyTorch's default is 1e-5)
GN_GROUPS = 32
ZERO_INIT_SCALE = 1e-10  # the official ``default_init(0.)`` replaces scale 0 by 1e-10


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal timestep embedding exactly as the official ``nn.get_timestep_embedding``.

    ``emb[:, i] = sin(t * f_i)``, ``emb[:, half + i] = cos(t * f_i)`` with
    ``f_i = exp(-ln(max_period) * i / (half - 1))``, ``half = dim // 2``
    (sin first; the denominator is ``half - 1``).

    :param t: ``[N]`` timesteps (raw integer indices 0..T-1; floats are accepted too).
    :param dim: embedding width (even; an odd ``dim`` gets one zero column appended).
    :return: ``[N, dim]`` float32 tensor.
    """
    if t.ndim != 1:
        raise ValueError(f"timestep_embedding expects t of shape [N], got {tuple(t.shape)}")
    half = dim // 2
    if half < 2:
        raise ValueError(f"timestep_embedding needs dim >= 4, got {dim}")
    exponent = torch.arange(half, dtype=torch.float32, device=t.device) * (-math.log(max_period) / (half - 1))
    args = t.to(torch.float32)[:, None] * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with the official settings: 32 groups, eps 1e-6, affine (gamma 1, beta 0).

    The published architectures (widths that are multiples of 32) always get 32 groups. Only for small
    non-published widths the group count changes: ``channels < 32`` gives one channel per group
    (``channels`` groups), and a width above 32 that 32 does not divide (e.g. a ``16 + 32`` skip concat)
    gets ``gcd(32, channels)`` groups.
    """
    if channels % GN_GROUPS == 0:
        groups = GN_GROUPS
    elif channels < GN_GROUPS:
        groups = channels
    else:
        groups = math.gcd(GN_GROUPS, channels)
    return nn.GroupNorm(groups, channels, eps=GN_EPS, affine=True)


def default_init_(module: nn.Conv2d | nn.Linear, scale: float = 1.0) -> nn.Module:
    """Official ``default_init(scale)``: variance scaling, fan_avg, uniform; bias 0.

    The TF limit ``sqrt(3 * scale / ((fan_in + fan_out) / 2))`` equals Xavier-uniform with gain
    ``sqrt(scale)``; PyTorch's fans for convs include the kernel area, as TF's do.
    Scale 0 becomes 1e-10 (near-zero, not zero).
    """
    scale = ZERO_INIT_SCALE if scale == 0 else scale
    nn.init.xavier_uniform_(module.weight, gain=math.sqrt(scale))
    if module.bias is not None:
        nn.init.zeros_(module.bias)
    return module


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, padding: int = 1, init_scale: float = 1.0) -> nn.Conv2d:
    return default_init_(nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=padding), init_scale)


class Conv1x1(nn.Conv2d):
    """A 1x1 ``nn.Conv2d`` (the same parameters, state-dict keys and outputs) whose weight gradient always has
    the weight's own strides.

    The convolution's backward returns a ``[O, I, 1, 1]`` weight gradient with strides ``(I, 1, I, I)`` for
    some batch sizes, ``(I, 1, 1, 1)`` for others: the same memory, but DistributedDataParallel compares
    strides literally, warns "Grad strides do not match bucket view strides" and copies such gradients into
    and out of its buckets with a strided copy at every step. Passing the weight through ``view(O, I)`` and
    back gives the convolution the very same tensor geometry (so bitwise the same forward and backward
    values) and makes autograd return the gradient reshaped to the weight's strides.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if w.stride()[2:] == (1, 1):  # the default layout (channels_last weights keep theirs)
            w = w.view(w.shape[0], w.shape[1]).view(w.shape)
        return self._conv_forward(x, w, self.bias)


def conv1x1(in_ch: int, out_ch: int, init_scale: float = 1.0) -> nn.Conv2d:
    return default_init_(Conv1x1(in_ch, out_ch, 1), init_scale)


def linear(in_f: int, out_f: int, init_scale: float = 1.0) -> nn.Linear:
    return default_init_(nn.Linear(in_f, out_f), init_scale)


class ResBlock(nn.Module):
    """Wide-ResNet block with timestep conditioning (official ``resnet_block``).

    ``h = conv1(swish(norm1(x))); h += temb_proj(swish(temb))[:, :, None, None];
    h = conv2(dropout(swish(norm2(h)))); return skip(x) + h`` where ``skip`` is a 1x1 conv ("nin") when the
    widths differ and the identity otherwise. ``conv2`` starts near zero, so the block starts as ~identity.
    """

    def __init__(self, in_ch: int, out_ch: int, temb_ch: int, dropout: float = 0.0):
        super().__init__()
        self.in_ch, self.out_ch = in_ch, out_ch
        self.norm1 = group_norm(in_ch)
        self.conv1 = conv3x3(in_ch, out_ch)
        self.temb_proj = linear(temb_ch, out_ch)
        self.norm2 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv3x3(out_ch, out_ch, init_scale=0.0)
        self.nin_shortcut = conv1x1(in_ch, out_ch) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        # The two additions are in place on conv outputs, which backward does not need: the same values as
        # out-of-place adds, one activation-sized allocation less each (less peak memory and page faulting).
        # Without autograd (sampling, evaluation) the swish also runs in place on the norm's fresh output.
        inplace = not torch.is_grad_enabled()
        h = self.conv1(F.silu(self.norm1(x), inplace=inplace))
        h += self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h), inplace=inplace)))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return h.add_(skip)


class AttnBlock(nn.Module):
    """Single-head self-attention over all ``H*W`` positions (official ``attn_block``).

    ``q, k, v`` are 1x1 convs of ``norm(x)``; weights ``softmax(q.k / sqrt(C))``; ``out = x + proj_out(w.v)``.
    Uses :func:`torch.nn.functional.scaled_dot_product_attention` (its default scale is ``C**-0.5``).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = conv1x1(channels, channels)
        self.k = conv1x1(channels, channels)
        self.v = conv1x1(channels, channels)
        self.proj_out = conv1x1(channels, channels, init_scale=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        y = self.norm(x).flatten(2).transpose(1, 2)  # [N, H*W, C]
        # q, k, v in one matmul (the three 1x1 convs stacked; same math, parameters unchanged). The result is
        # contiguous in C, which lets SDPA use its fused CPU kernel (a strided q/k/v falls back to the math
        # path): ~25% faster attention blocks in no_grad on CPU (bench/README.md).
        weight = torch.cat([self.q.weight, self.k.weight, self.v.weight]).view(3 * c, c)
        bias = torch.cat([self.q.bias, self.k.bias, self.v.bias])
        # [N, 1, H*W, C] each: one head whose width is all C channels
        q, k, v = F.linear(y, weight, bias).unsqueeze(1).chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v)  # [N, 1, H*W, C]
        out = out.squeeze(1).transpose(1, 2).reshape(n, c, h, w)
        return self.proj_out(out).add_(x)  # in place on a conv output (not needed by backward)


class Downsample(nn.Module):
    """Halve H and W: 3x3 stride-2 conv with TF ``'SAME'`` padding (0 top/left, 1 bottom/right).

    Without a conv (``with_conv=False``) it is a 2x2 average pool.
    """

    def __init__(self, channels: int, with_conv: bool = True):
        super().__init__()
        self.conv = conv3x3(channels, channels, stride=2, padding=0) if with_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is None:
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour 2x (pixel duplication), then an optional 3x3 conv."""

    def __init__(self, channels: int, with_conv: bool = True):
        super().__init__()
        self.conv = conv3x3(channels, channels) if with_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x if self.conv is None else self.conv(x)
