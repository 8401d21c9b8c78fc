"""The three axes of the DDPM objective (paper Table 2), as enums.

Names follow the official code's axes (``model_mean_type``, ``model_var_type``, ``loss_type``):

* :class:`MeanType`: what the network's (first ``C``) output channels predict.
* :class:`VarType`: how the reverse-process variance Sigma_theta(x_t, t) is chosen.
* :class:`LossType`: which training loss is minimised.

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
    EPS = "eps"  # upper-case aliases for code
    X0 = "x0"
    MU = "mu"


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


def validate_objective(mean_type: MeanType | str, var_type: VarType | str, loss_type: LossType | str) -> None:
    """Raise ``ValueError`` for a combination of the three axes that makes no sense.

    * ``mse`` cannot train a learned variance (the official code asserts this): use ``kl`` or ``hybrid``.
    * ``hybrid`` needs a learned variance (its bound term trains only the variance).
    """
    mean_type, var_type, loss_type = MeanType(mean_type), VarType(var_type), LossType(loss_type)
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
