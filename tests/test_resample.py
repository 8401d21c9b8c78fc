"""The training step's t samplers (ddpm.core.diffusion.resample) and their opt-in hook in the LightningModule."""

from __future__ import annotations

import math

import pytest
import torch

from ddpm.core.diffusion.resample import LossSecondMomentTSampler, UniformTSampler, make_t_sampler


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
    # the returned weights are exactly 1 / (T p_t), p_t the probability t was drawn with (checked on its own above)
    p = s.probs()
    torch.testing.assert_close(w.double(), 1.0 / (T * p[t]), rtol=1e-6, atol=0)
    assert float(w.max()) > 5 * float(w.min())  # a weight of 1 would not pass
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


def _module(cfg):
    from omegaconf import OmegaConf

    from ddpm.core.module import DiffusionModule

    c = {k: OmegaConf.to_container(cfg[k], resolve=True, enum_to_str=True)
         for k in ("model", "diffusion", "objective", "optim")}  # fmt: skip
    return DiffusionModule(**c, image_shape=(1, 8, 8), seed=0, nan_policy="stop", nan_max_consecutive=1)


def test_module_hook_is_off_by_default_and_its_history_survives_a_checkpoint(tiny):
    assert _module(tiny("objective=eps_vlb_fixed")).t_sampler is None
    m = _module(tiny("objective=eps_vlb_fixed", "optim.t_sampler=loss_second_moment"))
    assert isinstance(m.t_sampler, LossSecondMomentTSampler) and m.t_sampler.num_timesteps == 10
    fill(m.t_sampler, lambda t: 1.0 + t)
    ckpt: dict = {"state_dict": m.state_dict()}
    m.on_save_checkpoint(ckpt)
    fresh = _module(tiny("objective=eps_vlb_fixed", "optim.t_sampler=loss_second_moment"))
    fresh.on_load_checkpoint(ckpt)
    assert torch.allclose(fresh.t_sampler.probs(), m.t_sampler.probs())
    assert set(ckpt["state_dict"]) == set(_module(tiny("objective=eps_vlb_fixed")).state_dict())  # no new weights


def _loss_of_t(t: int) -> float:
    return 1.0 + 10.0 * t * t  # p_t grows ~t^2: the weights 1/(T p_t) span ~1000x


def importance_sampled_step(tiny, batch_size: int = 256):
    """One real training step (a Lightning Trainer, one optimizer step) of the tiny model with
    ``optim.t_sampler=loss_second_moment`` and a full history of ``_loss_of_t``: returns the step's loss, the t it
    drew and the per-example terms the diffusion returned for them (recorded by wrapping ``training_losses``), and
    the sampler's history after the step."""
    import lightning as L

    m = _module(tiny("objective=eps_vlb_fixed", "optim.t_sampler=loss_second_moment"))
    fill(m.t_sampler, _loss_of_t)
    seen: dict = {}
    training_losses = m.diffusion.training_losses

    def recording(model_fn, x_start, t, **kw):
        terms = training_losses(model_fn, x_start, t, **kw)
        seen["t"], seen["terms"] = t.clone(), terms["loss"].detach().clone()
        return terms

    m.diffusion.training_losses = recording

    class Loss(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen["loss"] = float(outputs["loss"])

    data = torch.rand(batch_size, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[Loss()])  # fmt: skip
    trainer.fit(m, torch.utils.data.DataLoader(data, batch_size=batch_size))
    return seen["loss"], seen["t"], seen["terms"], m.t_sampler.losses.clone()


def check_importance_sampled_step(loss, t, terms, history) -> None:
    """What the step must do, from the definition (Improved DDPM sec. 3.3), computed here by hand: p_t =
    0.999 L_t / sum(L) + 0.001 / T for a constant history L_t; the loss is the mean of the drawn t's terms times
    1 / (T p_t); the t are drawn from p; each drawn t's history shifts in the unweighted term, in batch order."""
    T, hist = 10, 10
    L_t = torch.tensor([_loss_of_t(i) for i in range(T)], dtype=torch.float64)
    p = 0.999 * L_t / L_t.sum() + 0.001 / T
    weights = 1.0 / (T * p[t])
    assert loss == pytest.approx(float((terms.double() * weights).mean()), rel=1e-5)
    assert abs(loss / float(terms.mean()) - 1) > 0.1  # the weights matter for this batch
    mean_t = float((p * torch.arange(T)).sum())  # ~7.3 (uniform: 4.5); std ~1.8, so 0.5 is ~4.5 standard errors
    assert float(t.double().mean()) == pytest.approx(mean_t, abs=0.5)
    expected = L_t.view(T, 1).repeat(1, hist)
    for ti, li in zip(t.tolist(), terms.double().tolist()):
        expected[ti] = torch.cat([expected[ti, 1:], torch.tensor([li], dtype=torch.float64)])
    torch.testing.assert_close(history, expected, rtol=1e-6, atol=0)
    assert not torch.equal(history, L_t.view(T, 1).repeat(1, hist))


def test_importance_sampled_training_step_weights_the_loss_and_updates_the_history(tiny):
    check_importance_sampled_step(*importance_sampled_step(tiny))


@pytest.mark.parametrize("mutation", ["weights_one", "weights_p", "no_history_update", "weighted_history"])
def test_importance_sampled_step_check_catches_mutations(tiny, monkeypatch, mutation):
    """The check above fails when the step drops the weights, uses T p_t instead of 1 / (T p_t), never updates
    the history or records the weighted losses in it."""
    sample, update = LossSecondMomentTSampler.sample, LossSecondMomentTSampler.update

    def wrong_sample(self, batch_size, device="cpu"):
        t, w = sample(self, batch_size, device)
        return t, torch.ones_like(w) if mutation == "weights_one" else 1.0 / w

    def wrong_update(self, t, losses):
        if mutation == "weighted_history":
            update(self, t, losses / (self.num_timesteps * self.probs()[t]).float())

    name, fn = ("sample", wrong_sample) if mutation.startswith("weights_") else ("update", wrong_update)
    monkeypatch.setattr(LossSecondMomentTSampler, name, fn)
    with pytest.raises(AssertionError):
        check_importance_sampled_step(*importance_sampled_step(tiny))


# ----------------------------------------------------------------------------- contracts and edges
# Written from the mutation run (bench/results/mutation_diffusion.md).
def test_sampler_defaults_bounds_and_errors():
    """improved-diffusion's defaults (history_per_term=10, uniform_prob=0.001); T = 1, history = 1 and
    uniform_prob = 1 are valid; outside that, and for mismatched shapes, an error naming the setting."""
    s = LossSecondMomentTSampler(5)
    assert s.history == 10 and s.uniform_prob == 0.001
    t, w = make_t_sampler("uniform", 1).sample(4)
    assert torch.equal(t, torch.zeros(4, dtype=torch.long)) and torch.equal(w, torch.ones(4))
    one = LossSecondMomentTSampler(3, history=1, uniform_prob=1.0)
    fill(one, lambda t: 1.0 + 10 * t)
    assert torch.allclose(one.probs(), torch.full((3,), 1 / 3, dtype=torch.float64))  # all uniform
    for kw, match in (({"num_timesteps": 0}, r"^num_timesteps must be >= 1, got 0$"),
                      ({"num_timesteps": 3, "history": 0}, r"^history must be >= 1, got 0$"),
                      ({"num_timesteps": 3, "uniform_prob": 1.5}, r"^uniform_prob must lie in \[0, 1\], got 1.5$")):
        with pytest.raises(ValueError, match=match):
            LossSecondMomentTSampler(**kw)
    with pytest.raises(ValueError, match=r"^t and losses must be 1-D of one shape, got \(2,\), \(3,\)$"):
        s.update(torch.tensor([0, 1]), torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match=r"^t and losses must be 1-D of one shape, got \(1, 2\), \(1, 2\)$"):
        s.update(torch.tensor([[0, 1]]), torch.tensor([[1.0, 2.0]]))


def test_probabilities_for_small_and_all_zero_histories():
    """Losses well below 1 still weigh t (the normalisation is by their sum, whatever its size); an all-zero
    history has nothing to prefer: uniform, never NaN."""
    s = LossSecondMomentTSampler(4, history=2, uniform_prob=0.0)
    fill(s, lambda t: 0.01 * (t + 1))
    assert torch.allclose(s.probs(), torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64) / 10)
    z = LossSecondMomentTSampler(4, history=2)
    fill(z, lambda t: 0.0)
    assert torch.allclose(z.probs(), torch.full((4,), 0.25, dtype=torch.float64))


def test_state_dict_dtypes_and_a_mismatched_counts_shape():
    """The saved state is float64 losses and long counts (what the resumed run reads), also when it was written
    with other dtypes; a counts vector of the wrong length is refused like a wrong loss table."""
    s = LossSecondMomentTSampler(3, history=2)
    state = s.state_dict()
    assert state["losses"].dtype == torch.float64 and state["counts"].dtype == torch.long
    s.load_state_dict({"losses": torch.ones(3, 2, dtype=torch.float32), "counts": torch.full((3,), 2.0)})
    assert s.losses.dtype == torch.float64 and s.counts.dtype == torch.long and s.warmed_up()
    with pytest.raises(ValueError, match=r"\(num_timesteps x history\)$"):
        s.load_state_dict({"losses": torch.ones(3, 2), "counts": torch.zeros(4, dtype=torch.long)})
