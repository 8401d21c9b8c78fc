"""The Gaussian diffusion process of Ho et al. 2020 (forward q, reverse p_theta, losses, bits/dim).

Conventions (reference §1):

* ``t`` is the **code index** ``0..T-1``; code index ``k`` is paper time ``k+1``. ``betas[k] = beta_{k+1}``,
  ``alphas_cumprod_prev = [1, abar_1, ..., abar_{T-1}]``. Code ``t = 0`` is the decoder term L_0.
* Every schedule quantity is computed in float64 numpy and stored as a float32 buffer (not saved in
  checkpoints), gathered per example with :func:`extract`.
* Images are ``x_start`` (x_0) of shape ``[N, C, ...]`` with values in ``[-1, 1]``; ``t`` is a long tensor
  ``[N]``.
* ``model_fn(x_t, t_model)`` returns ``[N, C, ...]`` (``[N, 2C, ...]`` for learned variances: mean output
  first, variance output second). ``t_model = timestep_map[t]`` is the original timestep (identity unless
  respaced).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .bound import calc_bpd_loop as _calc_bpd_loop
from .losses import discretized_gaussian_log_likelihood, loss_weights, mean_flat, normal_kl
from .schedules import get_beta_schedule
from .types import LossType, LossWeight, MeanType, VarType, validate_objective

ModelFn = Callable[[Tensor, Tensor], Tensor]

_LN2 = math.log(2.0)


def extract(a: Tensor, t: Tensor, x_shape: torch.Size | tuple[int, ...]) -> Tensor:
    """Gather ``a[t]`` (``a``: ``[T]``, ``t``: long ``[N]``) as float32, shaped ``[N, 1, ..., 1]`` to
    broadcast
    against a tensor of shape ``x_shape``."""
    out = a.to(t.device)[t].float()
    return out.reshape(t.shape[0], *([1] * (len(x_shape) - 1)))


class GaussianDiffusion(nn.Module):
    """Forward process q, reverse process p_theta and the DDPM training / evaluation objectives.

    Args:
        betas: float64 ``[T]``, ``betas[k] = beta_{k+1}``, all in ``(0, 1)``.
        mean_type: what the network's first ``C`` channels predict (``eps`` / ``x0`` / ``mu`` / ``v``).
        var_type: ``fixed_large`` / ``fixed_small`` / ``learned`` (raw log sigma^2) / ``learned_range``.
        loss_type: ``mse`` / ``kl`` / ``hybrid``. Enums or their string values; checked by
            :func:`validate_objective`.
        timestep_map: int ``[T]``, internal index -> the timestep given to the network (default ``arange(T)``;
            set by :func:`ddpm.core.diffusion.samplers.respace`).
        loss_weight, snr_gamma, p2_k, p2_gamma: the per-t weight on the MSE term (``none``: the paper's;
            :func:`ddpm.core.diffusion.losses.loss_weights`).
    """

    def __init__(
        self,
        betas: np.ndarray,
        mean_type: MeanType | str = MeanType.EPS,
        var_type: VarType | str = VarType.FIXED_LARGE,
        loss_type: LossType | str = LossType.MSE,
        timestep_map: np.ndarray | None = None,
        loss_weight: LossWeight | str = LossWeight.NONE,
        snr_gamma: float = 5.0,
        p2_k: float = 1.0,
        p2_gamma: float = 1.0,
    ):
        super().__init__()
        validate_objective(mean_type, var_type, loss_type, loss_weight, snr_gamma, p2_k, p2_gamma)
        self.mean_type = MeanType(mean_type)
        self.var_type = VarType(var_type)
        self.loss_type = LossType(loss_type)
        self.loss_weight = LossWeight(loss_weight)

        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size < 1:
            raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
        if not (np.all(betas > 0) and np.all(betas < 1)):
            raise ValueError("betas must lie in (0, 1) (beta = 1 makes abar 0 and the posterior undefined)")
        T = int(betas.shape[0])
        self.num_timesteps = T
        if timestep_map is None:
            timestep_map = np.arange(T, dtype=np.int64)
        timestep_map = np.asarray(timestep_map, dtype=np.int64)
        if timestep_map.shape != (T,):
            raise ValueError(f"timestep_map must have shape ({T},), got {timestep_map.shape}")

        alphas = 1.0 - betas
        alphas_cumprod = np.cumprod(alphas)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        # beta-tilde at code index 0 is exactly 0: replace it by index 1 (official diffusion_utils_2 / ID).
        # With T == 1 there is no index 1; fall back to beta_1 (only the decoder uses it).
        tilde_1 = posterior_variance[1] if T > 1 else betas[0]
        posterior_log_variance_clipped = np.log(np.append(tilde_1, posterior_variance[1:]))
        fixed_large_variance = np.append(tilde_1, betas[1:])

        # float64 copies for respacing / inspection.
        self.betas_np = betas
        self.alphas_cumprod_np = alphas_cumprod
        self.alphas_cumprod_prev_np = alphas_cumprod_prev
        self.posterior_variance_np = posterior_variance
        self.timestep_map_np = timestep_map

        buffers = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
            "one_minus_alphas_cumprod": 1.0 - alphas_cumprod,
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
            "log_one_minus_alphas_cumprod": np.log(1.0 - alphas_cumprod),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod - 1.0),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": posterior_log_variance_clipped,
            "posterior_mean_coef1": betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
            "log_betas": np.log(betas),
            "fixed_large_variance": fixed_large_variance,
            "fixed_large_log_variance": np.log(fixed_large_variance),
        }
        for name, arr in buffers.items():
            assert arr.shape == (T,) and arr.dtype == np.float64, name
            self.register_buffer(name, torch.from_numpy(arr).float(), persistent=False)
        self.register_buffer("timestep_map", torch.from_numpy(timestep_map), persistent=False)
        # None for the paper's unweighted loss: its path multiplies by nothing (bit-identical to before)
        weights = loss_weights(self.loss_weight.value, self.mean_type.value, alphas_cumprod, snr_gamma, p2_k, p2_gamma)
        self.loss_weights_np = weights
        self.register_buffer("loss_weights", None if weights is None else torch.from_numpy(weights).float(),
                             persistent=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(
        cls,
        schedule: str = "linear",
        num_timesteps: int = 1000,
        mean_type: MeanType | str = MeanType.EPS,
        var_type: VarType | str = VarType.FIXED_LARGE,
        loss_type: LossType | str = LossType.MSE,
        **weight: Any,
    ) -> GaussianDiffusion:
        """Build from a named schedule (:func:`get_beta_schedule`) and the three objective axes (and the loss
        weight's settings, ``loss_weight=...``, by name)."""
        return cls(get_beta_schedule(schedule, num_timesteps), mean_type, var_type, loss_type, **weight)

    def extra_repr(self) -> str:
        weight = "" if self.loss_weight == LossWeight.NONE else f", loss_weight={self.loss_weight.value}"
        return (
            f"T={self.num_timesteps}, mean_type={self.mean_type.value}, var_type={self.var_type.value}, "
            f"loss_type={self.loss_type.value}{weight}"
        )

    @property
    def model_out_channels_factor(self) -> int:
        """2 if the network must output mean and variance channels, else 1."""
        return 2 if self.var_type.is_learned else 1

    def _as_t(self, t: Tensor | int, x: Tensor) -> Tensor:
        if not isinstance(t, Tensor):
            t = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)
        elif t.ndim == 0:
            t = t.expand(x.shape[0])
        return t.long().to(x.device)

    def model_timesteps(self, t: Tensor) -> Tensor:
        """The timesteps the network sees for internal indices ``t`` (``timestep_map[t]``)."""
        return self.timestep_map.to(t.device)[t]

    # ------------------------------------------------------------------ forward process
    def q_mean_variance(self, x_start: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (Paper Eq. 4): ``(mean, variance,
        log_variance)``."""
        t = self._as_t(t, x_start)
        mean = extract(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
        variance = extract(self.one_minus_alphas_cumprod, t, x_start.shape).expand(x_start.shape)
        log_variance = extract(self.log_one_minus_alphas_cumprod, t, x_start.shape).expand(x_start.shape)
        return mean, variance, log_variance

    def q_sample(self, x_start: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (Paper Eq. 4)."""
        t = self._as_t(t, x_start)
        if noise is None:
            noise = torch.randn_like(x_start)
        assert noise.shape == x_start.shape
        return (
            extract(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
            + extract(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise
        )

    def q_posterior_mean_variance(
        self, x_start: Tensor, x_t: Tensor, t: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """q(x_{t-1} | x_t, x_0) = N(mu-tilde, beta-tilde I) (Paper Eqs. 6-7).

        Returns ``(mean, variance, log_variance_clipped)``; the log-variance at code index 0 is log beta-tilde
        at index 1 (official ``diffusion_utils_2``), since beta-tilde at index 0 is 0.
        """
        assert x_start.shape == x_t.shape
        t = self._as_t(t, x_t)
        mean = (
            extract(self.posterior_mean_coef1, t, x_t.shape) * x_start
            + extract(self.posterior_mean_coef2, t, x_t.shape) * x_t
        )
        variance = extract(self.posterior_variance, t, x_t.shape).expand(x_t.shape)
        log_variance = extract(self.posterior_log_variance_clipped, t, x_t.shape).expand(x_t.shape)
        return mean, variance, log_variance

    # ------------------------------------------------------------------ parameterisation conversions
    def predict_xstart_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x_0 = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps."""
        t = self._as_t(t, x_t)
        return (
            extract(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
            - extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * eps
        )

    def predict_eps_from_xstart(self, x_t: Tensor, t: Tensor, pred_xstart: Tensor) -> Tensor:
        """eps = (sqrt(1/abar_t) x_t - x_0) / sqrt(1/abar_t - 1)."""
        t = self._as_t(t, x_t)
        return (extract(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - pred_xstart) / extract(
            self.sqrt_recipm1_alphas_cumprod, t, x_t.shape
        )

    def predict_xstart_from_xprev(self, x_t: Tensor, t: Tensor, xprev: Tensor) -> Tensor:
        """Invert mu-tilde: x_0 = (x_{t-1} - coef2 x_t) / coef1."""
        t = self._as_t(t, x_t)
        return (xprev - extract(self.posterior_mean_coef2, t, x_t.shape) * x_t) / extract(
            self.posterior_mean_coef1, t, x_t.shape
        )

    def v_target(self, x_start: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022, diffusers' ``get_velocity``)."""
        t = self._as_t(t, x_start)
        a, s = extract(self.sqrt_alphas_cumprod, t, x_start.shape), extract(self.sqrt_one_minus_alphas_cumprod, t,
                                                                             x_start.shape)
        return a * noise - s * x_start

    def predict_xstart(self, x_t: Tensor, t: Tensor, mean_out: Tensor) -> Tensor:
        """The x_0 the network's mean output implies, for every mean type (unclipped): the one conversion that
        the posterior mean, the bound and every sampler use. eps: sqrt(1/abar) x_t - sqrt(1/abar - 1) eps;
        x0: itself; mu: mu-tilde inverted; v: sqrt(abar) x_t - sqrt(1 - abar) v."""
        t = self._as_t(t, x_t)
        if self.mean_type == MeanType.EPS:
            return self.predict_xstart_from_eps(x_t, t, mean_out)
        if self.mean_type == MeanType.X0:
            return mean_out
        if self.mean_type == MeanType.MU:
            return self.predict_xstart_from_xprev(x_t, t, mean_out)
        return (extract(self.sqrt_alphas_cumprod, t, x_t.shape) * x_t
                - extract(self.sqrt_one_minus_alphas_cumprod, t, x_t.shape) * mean_out)

    def predict_eps_xstart(self, x_t: Tensor, t: Tensor, mean_out: Tensor) -> tuple[Tensor, Tensor]:
        """``(eps, x_0)`` the network's mean output implies (unclipped), for every mean type; for v in closed
        form (eps = sqrt(1 - abar) x_t + sqrt(abar) v), else eps from :meth:`predict_xstart`."""
        t = self._as_t(t, x_t)
        if self.mean_type == MeanType.EPS:
            return mean_out, self.predict_xstart_from_eps(x_t, t, mean_out)
        x0 = self.predict_xstart(x_t, t, mean_out)
        if self.mean_type == MeanType.V:
            eps = (extract(self.sqrt_one_minus_alphas_cumprod, t, x_t.shape) * x_t
                   + extract(self.sqrt_alphas_cumprod, t, x_t.shape) * mean_out)
            return eps, x0
        return self.predict_eps_from_xstart(x_t, t, x0), x0

    # ------------------------------------------------------------------ reverse process
    def p_mean_variance(
        self,
        model_fn: ModelFn | None,
        x_t: Tensor,
        t: Tensor,
        clip_denoised: bool = True,
        model_output: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """p_theta(x_{t-1} | x_t) = N(mean, variance).

        Calls ``model_fn(x_t, timestep_map[t])`` unless ``model_output`` is given. With ``clip_denoised`` the
        predicted x_0 is clamped to [-1, 1] before forming mu-tilde (official default; no effect on the mean
        for ``mu``, whose x_0 is only reported).

        Returns dict: ``mean``, ``variance``, ``log_variance`` (all shaped like ``x_t``), ``pred_xstart``,
        ``model_output`` (the raw network output, ``[N, C or 2C, ...]``).
        """
        t = self._as_t(t, x_t)
        if model_output is None:
            if model_fn is None:
                raise ValueError("p_mean_variance needs model_fn or model_output")
            model_output = model_fn(x_t, self.model_timesteps(t))
        C = x_t.shape[1]
        expected = C * self.model_out_channels_factor
        if model_output.shape[0] != x_t.shape[0] or model_output.shape[1] != expected:
            raise ValueError(
                f"model output has shape {tuple(model_output.shape)}, expected "
                f"[N={x_t.shape[0]}, {expected}, ...] for var_type={self.var_type.value}"
            )

        if self.var_type.is_learned:
            mean_out, var_out = torch.split(model_output, C, dim=1)
            if self.var_type == VarType.LEARNED:
                log_variance = var_out
            else:
                min_log = extract(self.posterior_log_variance_clipped, t, x_t.shape)
                max_log = extract(self.log_betas, t, x_t.shape)
                frac = (var_out + 1.0) / 2.0
                log_variance = frac * max_log + (1.0 - frac) * min_log
            variance = torch.exp(log_variance)
        else:
            mean_out = model_output
            if self.var_type == VarType.FIXED_LARGE:
                var_arr, log_arr = self.fixed_large_variance, self.fixed_large_log_variance
            else:
                var_arr, log_arr = self.posterior_variance, self.posterior_log_variance_clipped
            variance = extract(var_arr, t, x_t.shape).expand(x_t.shape)
            log_variance = extract(log_arr, t, x_t.shape).expand(x_t.shape)

        def process_xstart(x: Tensor) -> Tensor:
            return x.clamp(-1.0, 1.0) if clip_denoised else x

        pred_xstart = process_xstart(self.predict_xstart(x_t, t, mean_out))
        if self.mean_type == MeanType.MU:
            mean = mean_out
        else:
            mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
        return {
            "mean": mean,
            "variance": variance,
            "log_variance": log_variance,
            "pred_xstart": pred_xstart,
            "model_output": model_output,
        }

    # ------------------------------------------------------------------ bound terms
    def vb_terms_bpd(
        self,
        model_fn: ModelFn | None,
        x_start: Tensor,
        x_t: Tensor,
        t: Tensor,
        clip_denoised: bool = True,
        model_output: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """One term of the bound, in bits/dim (official ``_vb_terms_bpd``).

        * code ``t > 0``: KL(q(x_{t-1}|x_t,x_0) || p_theta(x_{t-1}|x_t)) (L_t in paper time), mean over dims,
          divided by ln 2;
        * code ``t = 0``: -log p_theta(x_0|x_1) under the discretized Gaussian decoder, mean over dims,
          divided by ln 2.

        Returns dict: ``output`` ``[N]`` bits/dim, ``pred_xstart``, ``mean``, ``log_variance``.
        """
        t = self._as_t(t, x_t)
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(model_fn, x_t, t, clip_denoised=clip_denoised, model_output=model_output)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])) / _LN2
        decoder_nll = -discretized_gaussian_log_likelihood(
            x_start, means=out["mean"], log_scales=0.5 * out["log_variance"]
        )
        decoder_nll = mean_flat(decoder_nll) / _LN2
        output = torch.where(t == 0, decoder_nll, kl)
        return {
            "output": output,
            "pred_xstart": out["pred_xstart"],
            "mean": out["mean"],
            "log_variance": out["log_variance"],
        }

    def prior_bpd(self, x_start: Tensor) -> Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I)), mean over dims / ln 2, ``[N]`` bits/dim.

        Computed in float64 (where the device supports it) from the float64 schedule: in float32 the ~1e-9
        value is below rounding noise.
        """
        dtype = torch.float32 if x_start.device.type == "mps" else torch.float64
        abar_T = float(self.alphas_cumprod_np[-1])
        x = x_start.to(dtype)
        mean = math.sqrt(abar_T) * x
        log_variance = torch.full_like(x, math.log1p(-abar_T))
        kl = normal_kl(mean, log_variance, torch.zeros_like(x), torch.zeros_like(x))
        return (mean_flat(kl) / _LN2).to(x_start.dtype)

    # ------------------------------------------------------------------ training
    def training_losses(
        self, model_fn: ModelFn, x_start: Tensor, t: Tensor, noise: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Per-example training losses ``[N]`` for one ``t`` per example (the caller averages over the batch).

        * ``mse``: ``loss = mse = mean over dims of (target - output)^2``, target eps / x_0 / mu-tilde(x_t,
          x_0) / v for mean type eps / x0 / mu / v (``eps`` is L_simple, Paper Eq. 14); with a ``loss_weight``
          ``loss = w_t * mse`` (``mse`` stays the unweighted diagnostic).
        * ``kl``: ``loss = vb`` = one term of the bound in bits/dim (:meth:`vb_terms_bpd` with
          ``clip_denoised=False``): an unbiased estimate of (L - L_T)/T, **not** multiplied by T (official
          ``kl``). ``mse`` is also returned as a detached diagnostic (it is not part of ``loss``).
        * ``hybrid`` (Improved DDPM, needs a learned variance): ``loss = mse + vb`` where ``vb`` is the bound
          term computed from ``[mean output detached, variance output]``, so it trains only the variance
          channels. ``vb`` is in bits/dim scaled by ``T/1000`` exactly like improved-diffusion's RESCALED_MSE,
          i.e. ``L_simple + 0.001 * L_vlb`` with ``L_vlb = T * E_t[term]``.
        """
        t = self._as_t(t, x_start)
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise=noise)
        model_output = model_fn(x_t, self.model_timesteps(t))
        C = x_start.shape[1]
        if model_output.shape[1] != C * self.model_out_channels_factor:
            raise ValueError(
                f"model output has {model_output.shape[1]} channels, expected "
                f"{C * self.model_out_channels_factor} for var_type={self.var_type.value}"
            )
        mean_out = model_output[:, :C]

        if self.mean_type == MeanType.EPS:
            target = noise
        elif self.mean_type == MeanType.X0:
            target = x_start
        elif self.mean_type == MeanType.V:
            target = self.v_target(x_start, t, noise)
        else:
            target, _, _ = self.q_posterior_mean_variance(x_start, x_t, t)
        mse = mean_flat((target - mean_out) ** 2)

        terms: dict[str, Tensor] = {}
        if self.loss_type == LossType.KL:
            vb = self.vb_terms_bpd(None, x_start, x_t, t, clip_denoised=False, model_output=model_output)[
                "output"
            ]
            terms["vb"] = vb
            terms["mse"] = mse.detach()
            terms["loss"] = vb
        else:
            terms["mse"] = mse
            loss = mse if self.loss_weights is None else self.loss_weights.to(t.device)[t] * mse
            if self.var_type.is_learned:  # hybrid (validate_objective forbids mse + learned)
                frozen = torch.cat([mean_out.detach(), model_output[:, C:]], dim=1)
                vb = self.vb_terms_bpd(None, x_start, x_t, t, clip_denoised=False, model_output=frozen)[
                    "output"
                ]
                vb = vb * (self.num_timesteps / 1000.0)
                terms["vb"] = vb
                loss = loss + vb
            terms["loss"] = loss
        return terms

    # ------------------------------------------------------------------ evaluation
    #: ``calc_bpd_loop(model_fn, x_start, clip_denoised, noise_fn, progress, t_batch)``: the NLL bound in bits/dim
    calc_bpd_loop = _calc_bpd_loop
