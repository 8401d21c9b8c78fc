"""The training step's t samplers (ddpm.diffusion.resample) and their opt-in hook in the LightningModule."""

from __future__ import annotations

import math

import pytest
import torch

from ddpm.diffusion.resample import LossSecondMomentTSampler, UniformTSampler, make_t_sampler


def fill(sampler: LossSecondMomentTSampler, loss_of_t) -> None:
    """Give every t a full history of the loss ``loss_of_t(t)``."""
    t = torch.arange(sampler.num_timesteps).repeat(sampler.history)
    sampler.update(t, torch.tensor([float(loss_of_t(int(i))) for i in t]))


def test_uniform_sampler_draws_every_t_with_weight_one():
    torch.manual_seed(0)
    t, w = UniformTSampler(10).sample(5000)
    assert t.dtype == torch.long and int(t.min()) == 0 and int(t.max()) == 9
    counts = torch.bincount(t, minlength=10).float()
    assert float((counts / 5000 - 0.1).abs().max()) < 0.03
    assert torch.equal(w, torch.ones(5000))


def test_uniform_sampler_draws_what_the_training_step_always_drew():
    torch.manual_seed(3)
    expected = torch.randint(0, 1000, (64,))
    torch.manual_seed(3)
    t, _ = make_t_sampler("uniform", 1000).sample(64)
    assert torch.equal(t, expected)


def test_second_moment_sampler_is_uniform_until_every_t_has_a_full_history():
    s = LossSecondMomentTSampler(4, history=2, uniform_prob=0.0)
    s.update(torch.tensor([0, 1, 2, 3, 0, 1, 2]), torch.tensor([1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0]))
    assert not s.warmed_up()
    assert torch.allclose(s.probs(), torch.full((4,), 0.25, dtype=torch.float64))
    s.update(torch.tensor([3]), torch.tensor([4.0]))
    assert s.warmed_up()
    assert torch.allclose(s.probs(), torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64) / 10)


def test_second_moment_probabilities_are_the_rms_of_the_last_losses_mixed_with_uniform():
    s = LossSecondMomentTSampler(3, history=2, uniform_prob=0.3)
    # t=0 sees 5, 3, 4 (only the last two count: rms(3, 4)); t=1 sees 0, 0; t=2 sees 6, 8
    s.update(torch.tensor([0, 0, 1, 1, 2, 2, 0]), torch.tensor([5.0, 3.0, 0.0, 0.0, 6.0, 8.0, 4.0]))
    rms = torch.tensor([math.sqrt(12.5), 0.0, math.sqrt(50.0)], dtype=torch.float64)
    expected = 0.7 * rms / rms.sum() + 0.1
    assert torch.allclose(s.probs(), expected)
    assert abs(float(s.probs().sum()) - 1.0) < 1e-12


def test_importance_weights_keep_the_loss_unbiased_and_cut_its_variance():
    T = 50
    s = LossSecondMomentTSampler(T, history=3)
    loss = torch.tensor([100.0 / (t + 1) for t in range(T)])  # a bound-like, 1/t-shaped loss
    fill(s, lambda t: float(loss[t]))
    torch.manual_seed(0)
    t, w = s.sample(200_000)
    weighted = w.double() * loss[t].double()
    assert abs(float(weighted.mean()) / float(loss.mean()) - 1.0) < 0.01
    # exactly: sum_t p_t * L_t / (T p_t) = mean L
    p = s.probs()
    assert abs(float((p * loss.double() / (T * p)).sum()) - float(loss.double().mean())) < 1e-9
    uniform = loss[torch.randint(0, T, (200_000,))].double()
    assert float(weighted.var()) < 0.05 * float(uniform.var())


def test_state_dict_round_trip_gives_the_same_draws():
    a = LossSecondMomentTSampler(20, history=2)
    fill(a, lambda t: 1.0 + t)
    b = LossSecondMomentTSampler(20, history=2)
    b.load_state_dict(a.state_dict())
    torch.manual_seed(7)
    ta, wa = a.sample(32)
    torch.manual_seed(7)
    tb, wb = b.sample(32)
    assert torch.equal(ta, tb) and torch.equal(wa, wb)
    with pytest.raises(ValueError, match="num_timesteps x history"):
        LossSecondMomentTSampler(21, history=2).load_state_dict(a.state_dict())


def test_unknown_t_sampler_lists_the_valid_names():
    with pytest.raises(ValueError, match="loss_second_moment"):
        make_t_sampler("importance", 10)


def test_module_hook_is_off_by_default_and_importance_samples_when_asked(tiny):
    from omegaconf import OmegaConf

    from ddpm.module import DiffusionModule

    def module(cfg):
        c = {k: OmegaConf.to_container(cfg[k], resolve=True, enum_to_str=True)
             for k in ("model", "diffusion", "objective", "optim")}
        return DiffusionModule(**c, image_shape=(1, 8, 8), seed=0, nan_policy="stop", nan_max_consecutive=1)

    assert module(tiny("objective=eps_vlb_fixed")).t_sampler is None
    m = module(tiny("objective=eps_vlb_fixed", "optim.t_sampler=loss_second_moment"))
    assert isinstance(m.t_sampler, LossSecondMomentTSampler) and m.t_sampler.num_timesteps == 10
    fill(m.t_sampler, lambda t: 1.0 + t)
    ckpt: dict = {"state_dict": m.state_dict()}
    m.on_save_checkpoint(ckpt)
    fresh = module(tiny("objective=eps_vlb_fixed", "optim.t_sampler=loss_second_moment"))
    fresh.on_load_checkpoint(ckpt)
    assert torch.allclose(fresh.t_sampler.probs(), m.t_sampler.probs())
    assert set(ckpt["state_dict"]) == set(module(tiny("objective=eps_vlb_fixed")).state_dict())  # no new weights
