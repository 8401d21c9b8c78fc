"""Elementwise Gaussian KL and the discretized Gaussian decoder likelihood (reference §1, §3).

All functions return values in **nats**, elementwise; the caller averages over dimensions (:func:`mean_flat`)
and divides by ``ln 2`` for bits/dim.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

#: Half-width of one uint8 level after mapping {0..255} to [-1, 1] (levels are 2/255 apart).
BIN_HALF_WIDTH = 1.0 / 255.0
#: Pixels below -EDGE / above +EDGE are the extreme levels 0 / 255 and get an open-ended bin.
EDGE = 0.999
#: Floor on bin probabilities before the log.
MIN_PROB = 1e-12


def loss_weights(
    loss_weight: str, mean_type: str, alphas_cumprod: np.ndarray, snr_gamma: float = 5.0, p2_k: float = 1.0,
    p2_gamma: float = 1.0,
) -> np.ndarray | None:
    """The per-t weight ``w_t`` (float64 ``[T]``) on the MSE term; ``None`` for ``none`` (the paper's loss).

    With SNR_t = abar_t / (1 - abar_t):

    * ``min_snr`` (Hang et al. 2023): min(SNR_t, gamma) in x_0 units, written for the mean type's target:
      eps ``min(SNR, gamma) / SNR``, x0 ``min(SNR, gamma)``, v ``min(SNR, gamma) / (SNR + 1)`` (an eps error
      is SNR times an x_0 error, a v error SNR + 1 times, in squared norm).
    * ``p2`` (Choi et al. 2022), on the eps MSE: ``1 / (k + SNR)^gamma``.
    """
    if loss_weight == "none":
        return None
    abar = np.asarray(alphas_cumprod, dtype=np.float64)
    snr = abar / (1.0 - abar)
    if loss_weight == "p2":
        return 1.0 / (float(p2_k) + snr) ** float(p2_gamma)
    clipped = np.minimum(snr, float(snr_gamma))
    per_target = {"eps": clipped / snr, "x0": clipped, "v": clipped / (snr + 1.0)}
    if loss_weight != "min_snr" or mean_type not in per_target:
        raise ValueError(f"no loss weight {loss_weight!r} for mean_type={mean_type!r}")
    return per_target[mean_type]


def mean_flat(x: Tensor) -> Tensor:
    """Mean over every dimension except the first (batch): ``[N, ...] -> [N]``."""
    return x.mean(dim=tuple(range(1, x.ndim))) if x.ndim > 1 else x


def normal_kl(
    mean1: Tensor | float, logvar1: Tensor | float, mean2: Tensor | float, logvar2: Tensor | float
) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats (broadcasts; scalars allowed).

    ``0.5 * (-1 + logvar2 - logvar1 + exp(logvar1 - logvar2) + (mean1 - mean2)^2 * exp(-logvar2))``.
    """
    ref = next((a for a in (mean1, logvar1, mean2, logvar2) if isinstance(a, Tensor)), None)
    if ref is None:
        raise TypeError("normal_kl needs at least one tensor argument")
    logvar1, logvar2 = (
        lv if isinstance(lv, Tensor) else torch.tensor(lv, dtype=ref.dtype, device=ref.device)
        for lv in (logvar1, logvar2)
    )
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def approx_standard_normal_cdf(x: Tensor) -> Tensor:
    """Fast approximation of the standard normal CDF: ``0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(x: Tensor, *, means: Tensor, log_scales: Tensor) -> Tensor:
    """log p(x) of data ``x`` (uint8 levels rescaled to [-1, 1]) under a Gaussian discretized into 256 bins.

    Paper Eq. 13 / official ``discretized_gaussian_log_likelihood``. Each level owns
    ``[x - 1/255, x + 1/255]``; the two extreme levels (``|x| > 0.999``) own the half-lines down to -inf / up
    to +inf. Bin probabilities use :func:`approx_standard_normal_cdf` and are floored at 1e-12 before the log.

    Args:
        x: data, any shape, values in ``{2k/255 - 1}``.
        means: Gaussian means, same shape as ``x``.
        log_scales: log standard deviations (``0.5 * log_variance``), broadcastable to ``x``.

    Returns:
        elementwise log-likelihood in nats, shape of ``x``.
    """
    assert x.shape == means.shape, (x.shape, means.shape)
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + BIN_HALF_WIDTH))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - BIN_HALF_WIDTH))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=MIN_PROB))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=MIN_PROB))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=MIN_PROB))
    return torch.where(
        x < -EDGE,
        log_cdf_plus,
        torch.where(x > EDGE, log_one_minus_cdf_min, log_cdf_delta),
    )
