"""The three axes of the DDPM objective (paper Table 2), as enums.

Names follow the official code's axes (``model_mean_type``, ``model_var_type``, ``loss_type``):

* :class:`MeanType`: what the network's (first ``C``) output channels predict.
* :class:`VarType`: how the reverse-process variance Sigma_theta(x_t, t) is chosen.
* :class:`LossType`: which training loss is minimised.
* :class:`LossWeight`: beyond the paper, opt-in: a per-t weight on the MSE loss (min-SNR-gamma, P2).

The values are the strings used in the Hydra configs (``objective.mean_type=eps``). Members are named by
their lower-case value (OmegaConf validates enum fields by member *name*, so ``eps`` must be a name); the
upper-case names are aliases for code (``MeanType.EPS is MeanType.eps``).
"""

from __future__ import annotations

from enum import Enum


class MeanType(str, Enum):
    eps = "eps"  # network predicts the noise epsilon (official "eps")
    x0 = "x0"  # network predicts x_0 (official "xstart"; not a Table 2 row)
    mu = "mu"  # network predicts the posterior mean mu-tilde (official "xprev")
    v = "v"  # beyond the paper: v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022)
    EPS = "eps"  # upper-case aliases for code
    X0 = "x0"
    MU = "mu"
    V = "v"


class VarType(str, Enum):
    fixed_large = "fixed_large"  # sigma_t^2 = beta_t (log-variance uses beta-tilde_1 at t=0); CIFAR-10 default
    fixed_small = "fixed_small"  # sigma_t^2 = beta-tilde_t (clipped log at t=0); LSUN / CelebA-HQ default
    learned = "learned"  # extra output channels are log sigma^2 directly (paper Table 2)
    learned_range = "learned_range"  # Improved DDPM: v in [-1,1] interpolates log beta-tilde .. log beta
    FIXED_LARGE = "fixed_large"
    FIXED_SMALL = "fixed_small"
    LEARNED = "learned"
    LEARNED_RANGE = "learned_range"

    @property
    def is_learned(self) -> bool:
        return self in (VarType.LEARNED, VarType.LEARNED_RANGE)


class LossType(str, Enum):
    mse = "mse"  # unweighted MSE to the mean type's target (L_simple for eps)
    kl = "kl"  # one uniformly drawn term of the true bound L, in bits/dim
    hybrid = "hybrid"  # Improved DDPM: L_simple + L_vlb with stop-gradient on the mean (trains the variance)
    MSE = "mse"
    KL = "kl"
    HYBRID = "hybrid"


class LossWeight(str, Enum):
    """A weight ``w_t`` on the per-example MSE term (beyond the paper; ``none`` is the paper's unweighted loss).

    SNR_t = abar_t / (1 - abar_t). ``min_snr`` (Hang et al. 2023, arXiv 2303.09556) is the x_0-space weight
    min(SNR_t, gamma) written for each mean type's target: eps min(SNR, gamma) / SNR, x0 min(SNR, gamma),
    v min(SNR, gamma) / (SNR + 1). ``p2`` (Choi et al. 2022, arXiv 2204.00227) weights the eps MSE by
    1 / (k + SNR_t)^gamma.
    """

    none = "none"
    min_snr = "min_snr"
    p2 = "p2"
    NONE = "none"
    MIN_SNR = "min_snr"
    P2 = "p2"


def validate_objective(
    mean_type: MeanType | str,
    var_type: VarType | str,
    loss_type: LossType | str,
    loss_weight: LossWeight | str = LossWeight.NONE,
    snr_gamma: float = 5.0,
    p2_k: float = 1.0,
    p2_gamma: float = 1.0,
) -> None:
    """Raise ``ValueError`` for a combination of the objective's settings that makes no sense.

    * ``mse`` cannot train a learned variance (the official code asserts this): use ``kl`` or ``hybrid``.
    * ``hybrid`` needs a learned variance (its bound term trains only the variance).
    * a ``loss_weight`` other than ``none`` weights the MSE term: not the ``kl`` loss (the bound's terms have
      their own weights), and not the ``mu`` target (no SNR weight is defined for it); ``p2`` is the eps
      target's; ``snr_gamma`` and ``p2_k`` must be > 0, ``p2_gamma`` >= 0.
    """
    valid_weights = [w.value for w in LossWeight]  # iteration skips the upper-case aliases
    if str(getattr(loss_weight, "value", loss_weight)) not in valid_weights:
        raise ValueError(f"objective.loss_weight={getattr(loss_weight, 'value', loss_weight)!r} is not a loss "
                         f"weight; valid: {valid_weights} (none: the paper's unweighted loss)")
    weight = LossWeight(loss_weight)
    mean_type, var_type, loss_type = MeanType(mean_type), VarType(var_type), LossType(loss_type)
    _check_weight(weight, mean_type, loss_type, snr_gamma, p2_k, p2_gamma)
    fixed = [v.value for v in VarType if not v.is_learned]
    learned = [v.value for v in VarType if v.is_learned]
    if loss_type == LossType.MSE and var_type.is_learned:
        raise ValueError(
            f"objective: loss_type=mse cannot train var_type={var_type.value} (the MSE loss carries no "
            f"gradient to the variance). Valid: loss_type=mse with var_type in {fixed}, or "
            f"loss_type in ['kl', 'hybrid'] with var_type in {learned}."
        )
    if loss_type == LossType.HYBRID and not var_type.is_learned:
        raise ValueError(
            f"objective: loss_type=hybrid needs a learned variance, got var_type={var_type.value}. "
            f"Valid var_type for hybrid: {learned}; for a fixed variance use loss_type in ['mse', 'kl']."
        )


def _check_weight(weight: LossWeight, mean_type: MeanType, loss_type: LossType, snr_gamma: float, p2_k: float,
                  p2_gamma: float) -> None:
    if not float(snr_gamma) > 0:
        raise ValueError(f"objective.snr_gamma={snr_gamma} must be > 0 (the min-SNR clip; Hang et al. use 5)")
    if not float(p2_k) > 0 or not float(p2_gamma) >= 0:
        raise ValueError(f"objective.p2_k={p2_k} must be > 0 and objective.p2_gamma={p2_gamma} >= 0 (Choi et al.: "
                         "k=1, gamma=1)")
    if weight == LossWeight.NONE:
        return
    if loss_type == LossType.KL:
        raise ValueError(f"objective.loss_weight={weight.value} weights the MSE loss, not the bound's KL terms "
                         "(loss_type=kl): use loss_type=mse or hybrid with it, or loss_weight=none")
    if mean_type == MeanType.MU:
        raise ValueError(f"objective.loss_weight={weight.value} has no weight for the mu-tilde target "
                         "(mean_type=mu): use mean_type in ['eps', 'x0', 'v'], or loss_weight=none")
    if weight == LossWeight.P2 and mean_type != MeanType.EPS:
        raise ValueError(f"objective.loss_weight=p2 is defined for the eps target, got mean_type={mean_type.value}: "
                         "use mean_type=eps, or loss_weight=min_snr for x0 / v")
