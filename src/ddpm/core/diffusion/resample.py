"""How the training step draws t: uniformly (the paper) or importance-sampled by the loss (beyond the paper).

The paper draws ``t`` uniformly from ``{0, ..., T-1}`` for every objective. For the true bound (``loss_type=kl``)
the per-t terms differ by orders of magnitude (the decoder at t = 0 and the first few KL terms dominate), so a
minibatch of uniform t's is a very noisy estimate of the bound's gradient. Improved DDPM (Nichol & Dhariwal
2021, sec. 3.3; improved-diffusion's ``LossSecondMomentResampler``) draws ``t`` with probability proportional
to ``sqrt(E[L_t^2])``, estimated from the last ``history`` losses seen at each t, and weighs each example's loss
by ``1 / (T p_t)``: the same expected loss and gradient (unbiased), a smaller variance. Until every t has
``history`` losses it samples uniformly; a fraction ``uniform_prob`` of the probability stays uniform.

Torch only. The state (loss history and counts) is a plain dict of tensors (:meth:`state_dict`) so that a
resumed run continues with the same probabilities.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["TSampler", "UniformTSampler", "LossSecondMomentTSampler", "T_SAMPLERS", "make_t_sampler"]


class TSampler:
    """Draws ``t`` for a batch and the importance weights ``1 / (T p_t)`` that keep the loss unbiased."""

    def __init__(self, num_timesteps: int) -> None:
        if int(num_timesteps) < 1:
            raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
        self.num_timesteps = int(num_timesteps)

    def probs(self) -> Tensor:
        """float64 ``[T]``, sums to 1."""
        return torch.full((self.num_timesteps,), 1.0 / self.num_timesteps, dtype=torch.float64)

    def sample(self, batch_size: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        """``(t, weights)``: long ``[batch_size]`` and float32 ``[batch_size]``, drawn with the global torch RNG."""
        p = self.probs()
        t = torch.multinomial(p, batch_size, replacement=True)
        weights = (1.0 / (self.num_timesteps * p[t])).float()
        return t.to(device), weights.to(device)

    def update(self, t: Tensor, losses: Tensor) -> None:
        """Record the per-example losses ``[N]`` seen at ``t`` ``[N]`` (unweighted); a no-op here."""

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        pass


class UniformTSampler(TSampler):
    """The paper's: ``t ~ U{0..T-1}``, weights 1 (``torch.randint``, as the training step always drew it)."""

    def sample(self, batch_size: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        t = torch.randint(0, self.num_timesteps, (batch_size,), device=device)
        return t, torch.ones(batch_size, device=device)


class LossSecondMomentTSampler(TSampler):
    """``p_t ~ sqrt(mean of the last `history` squared losses at t)``, mixed with ``uniform_prob`` of uniform.

    Defaults as improved-diffusion (``history_per_term=10``, ``uniform_prob=0.001``). Uniform until every t has
    a full history.
    """

    def __init__(self, num_timesteps: int, history: int = 10, uniform_prob: float = 0.001) -> None:
        super().__init__(num_timesteps)
        if int(history) < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        if not 0.0 <= float(uniform_prob) <= 1.0:
            raise ValueError(f"uniform_prob must lie in [0, 1], got {uniform_prob}")
        self.history = int(history)
        self.uniform_prob = float(uniform_prob)
        self.losses = torch.zeros(self.num_timesteps, self.history, dtype=torch.float64)
        self.counts = torch.zeros(self.num_timesteps, dtype=torch.long)

    def warmed_up(self) -> bool:
        return bool((self.counts == self.history).all())

    def probs(self) -> Tensor:
        if not self.warmed_up():
            return super().probs()
        w = self.losses.pow(2).mean(dim=1).sqrt()
        total = float(w.sum())
        if not total > 0.0:  # all-zero (or non-finite) history: nothing to prefer
            return super().probs()
        p = w / total
        return p * (1.0 - self.uniform_prob) + self.uniform_prob / self.num_timesteps

    def update(self, t: Tensor, losses: Tensor) -> None:
        if t.shape != losses.shape or t.ndim != 1:
            raise ValueError(f"t and losses must be 1-D of one shape, got {tuple(t.shape)}, {tuple(losses.shape)}")
        # In batch order: a t drawn twice in one batch shifts its history twice, as improved-diffusion's loop.
        for ti, li in zip(t.tolist(), losses.detach().double().cpu().tolist()):
            c = int(self.counts[ti])
            if c == self.history:
                self.losses[ti, :-1] = self.losses[ti, 1:].clone()
                self.losses[ti, -1] = li
            else:
                self.losses[ti, c] = li
                self.counts[ti] = c + 1

    def state_dict(self) -> dict[str, Tensor]:
        return {"losses": self.losses.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        losses, counts = state["losses"], state["counts"]
        if tuple(losses.shape) != tuple(self.losses.shape) or tuple(counts.shape) != tuple(self.counts.shape):
            raise ValueError(
                f"t-sampler state has shape {tuple(losses.shape)}, this run needs {tuple(self.losses.shape)} "
                "(num_timesteps x history)"
            )
        self.losses = losses.to(torch.float64).clone()
        self.counts = counts.to(torch.long).clone()


T_SAMPLERS = {"uniform": UniformTSampler, "loss_second_moment": LossSecondMomentTSampler}


def make_t_sampler(name: str, num_timesteps: int) -> TSampler:
    """``uniform`` (the paper) or ``loss_second_moment`` (Improved DDPM's importance sampling of t)."""
    if name not in T_SAMPLERS:
        raise ValueError(f"unknown t sampler {name!r}; valid: {sorted(T_SAMPLERS)}")
    return T_SAMPLERS[name](num_timesteps)
