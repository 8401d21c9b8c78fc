"""Class labels and classifier-free guidance as wrappers of the model function (beyond the paper, opt-in).

Every sampler takes a model function ``fn(x_t, t) -> output``; a class-conditional network is
``net(x_t, t, y)`` with ``y`` in ``0..K`` (``K``: the null token, "no class"). The two wrappers here turn the
latter into the former, once, so that no sampler knows about classes or guidance (as k-diffusion's
``CFGDenoiser``):

* :func:`with_labels` binds the labels: plain conditional sampling.
* :func:`guided` binds the labels and a guidance weight ``w`` (Ho & Salimans 2022, arXiv 2207.12598, eq. 6)::

      out = (1 + w) * net(x, t, y) - w * net(x, t, null)

  ``w = 0`` is conditional sampling (the very function :func:`with_labels` gives, one pass); ``w > 0`` trades
  diversity for fidelity. diffusers (and GLIDE/Stable Diffusion) write the same rule as
  ``uncond + s * (cond - uncond)`` with ``guidance_scale s = 1 + w``: diffusers' ``guidance_scale=3`` is ``w = 2``.

  The conditional and the unconditional pass run as ONE batched forward of ``2N`` images; a guided step
  costs two network evaluations per image. The rule is applied to the network's output whatever it predicts
  (eps, x_0, the posterior mean, v): each is affine in eps with coefficients that depend on ``x_t`` and ``t``
  only, shared by both passes, so guiding the output is guiding eps. With a learned variance (``2C`` output
  channels) only the first ``C`` (mean) channels are guided and the variance is the conditional pass's
  (GLIDE's rule).

Pure torch: nothing here imports the rest of the project.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["guided", "with_labels"]

LabelledFn = Callable[..., Tensor]  # fn(x_t, t, y) -> output


def _check(labels: Tensor, x: Tensor) -> None:
    if labels.shape != (x.shape[0],):
        raise ValueError(f"{labels.shape[0] if labels.ndim else 'scalar'} labels for a batch of {x.shape[0]} images")


def with_labels(net: LabelledFn, labels: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """``fn(x, t) = net(x, t, labels)``: a conditional network with its labels bound (``[N]`` int64)."""

    def fn(x: Tensor, t: Tensor) -> Tensor:
        _check(labels, x)
        return net(x, t, labels.to(x.device))

    return fn


def guided(
    net: LabelledFn, labels: Tensor, scale: float, null_label: int, mean_channels: int | None = None
) -> Callable[[Tensor, Tensor], Tensor]:
    """The classifier-free-guided model function of a conditional network (see the module docstring).

    :param net: ``net(x, t, y)``, the conditional network.
    :param labels: ``[N]`` int64 class of each image of the batch (``0..K-1``; ``K`` gives the unconditional model).
    :param scale: the guidance weight ``w >= 0`` (Ho & Salimans' convention; diffusers' ``guidance_scale - 1``).
    :param null_label: the null token ``K``.
    :param mean_channels: ``C`` when the output has ``2C`` channels (a learned variance): only those are guided,
        the variance channels are the conditional pass's; ``None``: every channel is guided.
    """
    w = float(scale)
    if not w >= 0.0:  # (NaN too)
        raise ValueError(f"guidance_scale must be >= 0 (w = 0: conditional sampling), got {scale}")
    if w == 0.0:
        return with_labels(net, labels)

    def fn(x: Tensor, t: Tensor) -> Tensor:
        _check(labels, x)
        y = labels.to(x.device)
        n = x.shape[0]
        t = t.expand(n) if t.ndim == 0 else t
        out = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, int(null_label))]))
        cond, uncond = out[:n], out[n:]
        c = cond.shape[1] if mean_channels is None else int(mean_channels)
        mean = (1.0 + w) * cond[:, :c] - w * uncond[:, :c]
        return mean if c == cond.shape[1] else torch.cat([mean, cond[:, c:]], dim=1)

    return fn
