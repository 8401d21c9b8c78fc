"""The NLL bound of a :class:`~ddpm.core.diffusion.gaussian.GaussianDiffusion` (official ``calc_bpd_loop``): every
term of L in bits/dim, one network evaluation per t (or per ``t_batch`` of them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .losses import mean_flat

if TYPE_CHECKING:
    from .gaussian import GaussianDiffusion, ModelFn


@torch.no_grad()
def calc_bpd_loop(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    x_start: Tensor,
    clip_denoised: bool = True,
    noise_fn: Callable[[torch.Size], Tensor] | Any | None = None,
    progress: Callable[[int, int], None] | None = None,
    t_batch: int = 1,
) -> dict[str, Tensor]:
    """Upper bound on the NLL of ``x_start`` in bits/dim (official ``calc_bpd_loop``).

    For each code index ``t = T-1 .. 0`` a fresh ``x_t ~ q(x_t | x_0)`` is drawn and the bound term is
    evaluated with one network forward pass. ``t_batch > 1`` stacks ``x_t`` for that many consecutive
    ``t`` into one forward pass of batch ``t_batch * N`` (same noise draws in the same order, so the
    result does not depend on ``t_batch``).

    Args:
        noise_fn: source of the per-term noise: ``None`` (``torch.randn_like``), a callable
            ``noise_fn(x_start.shape) -> Tensor``, or a :class:`~ddpm.core.diffusion.noise.SeededNoise`
            (anything with a ``randn(*shape_per_image)`` method).
        progress: called as ``progress(done_terms, T)`` after each forward pass.

    Returns dict: ``total_bpd`` ``[N]`` (= prior + sum of vb), ``prior_bpd`` ``[N]``, ``vb`` ``[N, T]``
    (column ``t`` is code index ``t``), ``xstart_mse`` ``[N, T]``, ``mse`` ``[N, T]`` (eps MSE, eps
    derived from the (clipped) predicted x_0).
    """
    N, T = x_start.shape[0], diffusion.num_timesteps
    t_batch = max(1, int(t_batch))
    dev = x_start.device
    vb = torch.zeros(N, T, device=dev)
    xstart_mse = torch.zeros(N, T, device=dev)
    mse = torch.zeros(N, T, device=dev)

    def draw() -> Tensor:
        if noise_fn is None:
            return torch.randn_like(x_start)
        if hasattr(noise_fn, "randn"):
            z = noise_fn.randn(*x_start.shape[1:])
        else:
            z = noise_fn(x_start.shape)
        return z.to(device=dev, dtype=x_start.dtype)

    order = list(range(T))[::-1]
    done = 0
    for start in range(0, T, t_batch):
        ts = order[start : start + t_batch]
        k = len(ts)
        t_vec = torch.tensor(ts, device=dev, dtype=torch.long).repeat_interleave(N)  # [k*N]
        noise = torch.cat([draw() for _ in ts], dim=0)
        x0 = x_start.repeat(k, *([1] * (x_start.ndim - 1)))
        x_t = diffusion.q_sample(x0, t_vec, noise=noise)
        model_output = model_fn(x_t, diffusion.model_timesteps(t_vec))
        out = diffusion.vb_terms_bpd(
            None, x0, x_t, t_vec, clip_denoised=clip_denoised, model_output=model_output
        )
        eps = diffusion.predict_eps_from_xstart(x_t, t_vec, out["pred_xstart"])
        cols = torch.tensor(ts, device=dev)
        vb[:, cols] = out["output"].float().reshape(k, N).T
        xstart_mse[:, cols] = mean_flat((out["pred_xstart"] - x0) ** 2).float().reshape(k, N).T
        mse[:, cols] = mean_flat((eps - noise) ** 2).float().reshape(k, N).T
        done += k
        if progress is not None:
            progress(done, T)

    prior = diffusion.prior_bpd(x_start).float()
    total = vb.sum(dim=1) + prior
    return {"total_bpd": total, "prior_bpd": prior, "vb": vb, "xstart_mse": xstart_mse, "mse": mse}
