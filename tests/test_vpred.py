"""v-prediction (Salimans & Ho 2022) and the per-t loss weights (min-SNR-gamma, P2), issue 33 items 1-2.

Checked against closed forms written here in float64 from the schedule (not the code under test), and against
diffusers 0.42.1 (``DDPMScheduler``, ``DPMSolverMultistepScheduler`` and ``get_velocity`` with
``prediction_type="v_prediction"``), an independent implementation.
"""

from __future__ import annotations

import re

import diffusers  # a test extra: pip install -e .[test]
import numpy as np
import pytest
import torch

from ddpm.core import cli
from ddpm.core.diffusion import (
    SAMPLERS,
    GaussianDiffusion,
    dpm_solver_timesteps,
    get_beta_schedule,
    mean_flat,
)
from ddpm.core.diffusion.types import validate_objective

pytestmark = pytest.mark.usefixtures("one_thread")

T = 1000
SHAPE = (6, 1, 4, 4)
TS = [0, 1, 5, 50, 250, 500, 900, 999]


def abar64(schedule: str = "linear", num: int = T) -> np.ndarray:
    return np.cumprod(1.0 - get_beta_schedule(schedule, num))


def per_t(values: np.ndarray, t: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(values)[t].view(-1, 1, 1, 1)


def toy_v(diffusion_abar: np.ndarray):
    """A fixed nonlinear 'network' predicting v (large enough that the x0 clip is active)."""
    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = (t.float() / len(diffusion_abar)).view(-1, 1, 1, 1)
        return torch.tanh(1.5 * x) * (0.6 + 0.5 * torch.cos(7 * s)) + 0.3 * torch.sin(3 * x + 5 * s)
    return fn


# ----------------------------------------------------------------------------- closed forms
def test_v_and_its_eps_x0_identities_in_closed_form():
    d = GaussianDiffusion.from_config("linear", T, "v", "fixed_large", "mse")
    g = torch.Generator().manual_seed(0)
    t = torch.tensor(TS)
    x0 = torch.rand((len(TS), 1, 4, 4), generator=g) * 2 - 1
    eps = torch.randn((len(TS), 1, 4, 4), generator=g)
    a, s = per_t(np.sqrt(abar64()), t), per_t(np.sqrt(1 - abar64()), t)
    x0_64, eps_64 = x0.double(), eps.double()
    v_64 = a * eps_64 - s * x0_64  # Salimans & Ho 2022, eq. (before) 2.1: v = alpha eps - sigma x
    xt_64 = a * x0_64 + s * eps_64
    v = d.v_target(x0, t, eps)
    torch.testing.assert_close(v.double(), v_64, atol=1e-6, rtol=0)
    # diffusers' own velocity (float32 abar) is the same v
    sched = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule="linear", prediction_type="v_prediction")
    torch.testing.assert_close(sched.get_velocity(x0, eps, t), v, atol=1e-5, rtol=0)
    # the one conversion: (eps, x0) back from v, and x0 = a x_t - s v, eps = s x_t + a v
    eps_hat, x0_hat = d.predict_eps_xstart(xt_64.float(), t, v_64.float())
    torch.testing.assert_close(x0_hat.double(), x0_64, atol=1e-5, rtol=0)
    torch.testing.assert_close(eps_hat.double(), eps_64, atol=1e-5, rtol=0)
    torch.testing.assert_close(d.predict_xstart(xt_64.float(), t, v_64.float()), x0_hat, atol=0, rtol=0)
    # a + s identity: a^2 + s^2 = 1, so ||v||^2 + ||x_t||^2 = ||eps||^2 + ||x0||^2 per pixel
    torch.testing.assert_close(v_64**2 + xt_64**2, eps_64**2 + x0_64**2, atol=1e-12, rtol=0)


@pytest.mark.parametrize("mean_type", ["eps", "x0", "mu", "v"])
def test_every_mean_types_target_converts_to_the_same_eps_and_x0(mean_type):
    """The one conversion of a network output: fed each mean type's exact target, it returns (eps, x0)."""
    d = GaussianDiffusion.from_config("cosine", 100, mean_type, "fixed_small", "mse")
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([1, 10, 30, 50, 70])  # away from both ends, where one of the two is ill-conditioned
    x0 = torch.rand((5, 2, 3, 3), generator=g) * 2 - 1
    eps = torch.randn((5, 2, 3, 3), generator=g)
    x_t = d.q_sample(x0, t, eps)
    target = {"eps": eps, "x0": x0, "v": d.v_target(x0, t, eps),
              "mu": d.q_posterior_mean_variance(x0, x_t, t)[0]}[mean_type]
    eps_hat, x0_hat = d.predict_eps_xstart(x_t, t, target)
    torch.testing.assert_close(x0_hat, x0, atol=2e-4, rtol=0)
    torch.testing.assert_close(eps_hat, eps, atol=2e-3, rtol=0)
    out = d.p_mean_variance(None, x_t, t, clip_denoised=False, model_output=target)
    torch.testing.assert_close(out["pred_xstart"], x0_hat)
    torch.testing.assert_close(out["mean"], d.q_posterior_mean_variance(x0, x_t, t)[0], atol=2e-4, rtol=0)


def test_v_training_loss_is_the_mse_to_v_and_the_bound_is_the_eps_models():
    d_v = GaussianDiffusion.from_config("linear", 50, "v", "fixed_large", "kl")
    d_eps = GaussianDiffusion.from_config("linear", 50, "eps", "fixed_large", "kl")
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand((8, 1, 4, 4), generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.arange(0, 50, 7)[:8] if len(torch.arange(0, 50, 7)) >= 8 else torch.arange(8) * 6
    eps_net = toy_v(abar64("linear", 50))
    a, s = per_t(np.sqrt(abar64("linear", 50)), t).float(), per_t(np.sqrt(1 - abar64("linear", 50)), t).float()

    def v_net(x, tt):  # the same model, parameterised as v: v = a eps - s x0(eps) = (eps - s x_t) / a
        return (eps_net(x, tt) - s * x) / a

    kl_v = d_v.training_losses(v_net, x0, t, noise)
    kl_eps = d_eps.training_losses(eps_net, x0, t, noise)
    torch.testing.assert_close(kl_v["loss"], kl_eps["loss"], atol=2e-3, rtol=2e-3)  # the same bound term
    mse = GaussianDiffusion.from_config("linear", 50, "v", "fixed_large", "mse").training_losses(v_net, x0, t, noise)
    x_t = a * x0 + s * noise
    want = mean_flat((a.double() * noise - s.double() * x0 - v_net(x_t, t).double()) ** 2)
    torch.testing.assert_close(mse["loss"].double(), want, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- loss weights
@pytest.mark.parametrize("mean_type", ["eps", "x0", "v"])
@pytest.mark.parametrize("gamma", [5.0, 0.5])
def test_min_snr_weight_is_min_snr_gamma_times_the_x0_error_for_every_target(mean_type, gamma):
    """Hang et al. 2023: the loss is min(SNR_t, gamma) ||x0 - x0_hat||^2 whatever the network predicts; the weight
    per target (eps: min/SNR, x0: min, v: min/(SNR+1)) is what makes the three equal."""
    Tn = 100
    d = GaussianDiffusion.from_config("linear", Tn, mean_type, "fixed_large", "mse", loss_weight="min_snr",
                                      snr_gamma=gamma)
    abar = abar64("linear", Tn)
    snr = abar / (1 - abar)
    want_w = {"eps": np.minimum(snr, gamma) / snr, "x0": np.minimum(snr, gamma),
              "v": np.minimum(snr, gamma) / (snr + 1)}[mean_type]
    np.testing.assert_allclose(d.loss_weights_np, want_w, rtol=1e-12)
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand((10, 1, 4, 4), generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 1, 3, 10, 20, 40, 60, 80, 95, 99])
    net = toy_v(abar)
    out = d.training_losses(net, x0, t, noise)
    x_t = d.q_sample(x0, t, noise)
    x0_hat = d.predict_xstart(x_t, t, net(x_t, t))
    x0_err = mean_flat((x0_hat.double() - x0.double()) ** 2) * torch.from_numpy(np.minimum(snr, gamma))[t]
    torch.testing.assert_close(out["loss"].double(), x0_err, rtol=2e-3, atol=1e-7)
    torch.testing.assert_close(out["loss"], torch.from_numpy(want_w)[t].float() * out["mse"])
    # the weight does move the loss (gamma clips some t)
    assert not torch.allclose(out["loss"], out["mse"], rtol=0.1)


def test_p2_weight_is_choi_et_al_closed_form():
    d = GaussianDiffusion.from_config("cosine", 200, "eps", "fixed_large", "mse", loss_weight="p2", p2_k=1.0,
                                      p2_gamma=1.0)
    abar = abar64("cosine", 200)
    snr = abar / (1 - abar)
    np.testing.assert_allclose(d.loss_weights_np, 1.0 / (1.0 + snr), rtol=1e-12)
    d2 = GaussianDiffusion.from_config("cosine", 200, "eps", "fixed_large", "mse", loss_weight="p2", p2_k=2.0,
                                       p2_gamma=0.5)
    np.testing.assert_allclose(d2.loss_weights_np, (2.0 + snr) ** -0.5, rtol=1e-12)


def test_the_default_weight_multiplies_by_nothing():
    """loss_weight=none (the default) is the paper's loss bit for bit: no weight buffer, loss is the MSE tensor."""
    d = GaussianDiffusion.from_config("linear", 20)
    assert d.loss_weights is None
    x0 = torch.rand((4, 1, 4, 4), generator=torch.Generator().manual_seed(4))
    out = d.training_losses(toy_v(abar64("linear", 20)), x0, torch.tensor([0, 5, 10, 19]))
    assert out["loss"] is out["mse"]


def test_hybrid_weights_only_its_mse_part():
    Tn = 30
    kw = dict(schedule="linear", num_timesteps=Tn, mean_type="eps", var_type="learned_range", loss_type="hybrid")
    plain, weighted = GaussianDiffusion.from_config(**kw), GaussianDiffusion.from_config(**kw, loss_weight="min_snr")
    g = torch.Generator().manual_seed(5)
    x0 = torch.rand((6, 1, 4, 4), generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 2, 5, 10, 20, 29])

    def net(x, tt):
        return torch.cat([toy_v(abar64("linear", Tn))(x, tt), torch.tanh(x)], dim=1)

    a, b = plain.training_losses(net, x0, t, noise), weighted.training_losses(net, x0, t, noise)
    torch.testing.assert_close(b["vb"], a["vb"])
    torch.testing.assert_close(b["loss"], weighted.loss_weights[t] * a["mse"] + a["vb"])


# ----------------------------------------------------------------------------- bad values, one Error line
@pytest.mark.parametrize("argv,needles", [
    (["objective.loss_weight=snr"], ["objective.loss_weight", "min_snr", "p2"]),
    (["objective.loss_weight=min_snr", "objective.snr_gamma=0"], ["objective.snr_gamma=0", "> 0"]),
    (["objective.snr_gamma=-1"], ["objective.snr_gamma=-1", "> 0"]),
    (["objective=eps_vlb_fixed", "objective.loss_weight=min_snr"], ["objective.loss_weight=min_snr", "loss_type=kl"]),
    (["objective=mu_mse", "objective.loss_weight=min_snr"], ["objective.loss_weight=min_snr", "mean_type=mu"]),
    (["objective.mean_type=v", "objective.loss_weight=p2"], ["objective.loss_weight=p2", "eps"]),
    (["objective.loss_weight=p2", "objective.p2_k=0"], ["objective.p2_k=0", "> 0"]),
])
@pytest.mark.slow  # over 2 s on 2 cores: the fast tier stays under 3 minutes
def test_a_bad_loss_weight_is_one_error_line_naming_the_key(argv, needles, capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as info:
        cli.preflight("train", argv)
    err = capsys.readouterr().err
    assert info.value.code == 1 and err.startswith("Error: ") and "Traceback" not in err, err
    assert [ln.startswith("Error: ") for ln in err.splitlines()].count(True) == 1, err
    for needle in needles:
        assert needle in err, err


def test_an_unknown_loss_weight_lists_each_valid_weight_once():
    with pytest.raises(ValueError) as info:
        validate_objective("eps", "fixed_large", "mse", "snr")
    listed = re.search(r"valid: \[(.*?)\]", str(info.value)).group(1)
    assert [w.strip(" '") for w in listed.split(",")] == ["none", "min_snr", "p2"], str(info.value)


def test_good_weights_and_v_compose():
    for argv in (["objective.mean_type=v"], ["objective=v_min_snr"], ["objective=simple_min_snr"],
                 ["objective.loss_weight=p2"], ["objective=hybrid", "objective.loss_weight=min_snr"],
                 ["objective=v_min_snr", "optim.t_sampler=loss_second_moment"]):
        assert cli.preflight("train", argv) is None, argv


# ----------------------------------------------------------------------------- diffusers, step for step
def _ddpm(variance: str, clip: bool) -> diffusers.DDPMScheduler:
    return diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                                   variance_type=variance, clip_sample=clip, clip_sample_range=1.0,
                                   prediction_type="v_prediction")


@pytest.mark.parametrize("variance", ["fixed_large", "fixed_small"])
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.slow  # over 2 s on 2 cores: the fast tier stays under 3 minutes
def test_v_reverse_step_equals_diffusers_ddpm_scheduler_in_float64(variance, clip):
    """Every one of the T steps from the same x_t and z: our p_theta step against DDPMScheduler.step holding our
    float64 abar (float64 arithmetic on its side), <= 1e-5; and the whole float32 chain to float rounding."""
    d = GaussianDiffusion.from_config("linear", T, "v", variance, "mse")
    model = toy_v(abar64())
    sched = _ddpm(variance, clip)
    sched.set_timesteps(T)
    sched64 = diffusers.DDPMScheduler.from_config(sched.config)
    sched64.set_timesteps(T)
    sched64.alphas_cumprod = torch.from_numpy(d.alphas_cumprod_np)
    sched64.alphas = torch.from_numpy(1.0 - d.betas_np)
    sched64.betas = torch.from_numpy(d.betas_np)
    sched64.one = torch.tensor(1.0, dtype=torch.float64)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(SHAPE, generator=g)
    worst = 0.0
    for t in sched.timesteps.tolist():
        tt = torch.full((SHAPE[0],), t, dtype=torch.long)
        v = model(x, tt)
        z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(t))
        # float32 inputs (so its z is drawn in float32, as ours), float64 schedule: float64 arithmetic
        theirs = sched64.step(v, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        out = d.p_mean_variance(None, x, tt, clip_denoised=clip, model_output=v)
        ours = out["mean"] + (torch.exp(0.5 * out["log_variance"]) * z if t > 0 else 0)
        worst = max(worst, (ours.double() - theirs).abs().max().item())
        x = sched.step(v, t, x, generator=g).prev_sample  # the chain walks on with diffusers' float32 step
    print(f"v, {variance}, clip={clip}: max over {T} steps |ours - diffusers(float64 abar)| = {worst:.2e}")
    assert worst <= 1e-5
    ours_chain = SAMPLERS["ancestral"].sample(d, model, SHAPE, generator=torch.Generator().manual_seed(7),
                                              clip_denoised=clip)
    assert torch.isfinite(ours_chain).all() and ours_chain.abs().max() > 0.1
    torch.testing.assert_close(ours_chain, x, atol=2e-4, rtol=0 if clip else 1e-4)


@pytest.mark.parametrize("steps", [3, 10, 20, 50])
@pytest.mark.parametrize("clip", [True, False])
def test_v_dpm_solver_equals_diffusers_dpm_solver_multistep(steps, clip):
    """DPM-Solver++(2M) with a v network, on our lambda-uniform timesteps: diffusers with
    prediction_type="v_prediction" converts v to x0 itself; both chains agree to float rounding."""
    d = GaussianDiffusion.from_config("linear", T, "v", "fixed_large", "mse")
    model = toy_v(abar64())
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(steps))
    ours = SAMPLERS["dpm_solver"].sample(d, model, SHAPE, steps=steps, x_start_t=x_T, clip_denoised=clip)
    sched = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, algorithm_type="dpmsolver++",
        solver_order=2, solver_type="midpoint", lower_order_final=True, final_sigmas_type="zero",
        prediction_type="v_prediction", thresholding=clip, sample_max_value=1.0)
    sched.set_timesteps(timesteps=dpm_solver_timesteps(d, steps))
    x = x_T.clone()
    for t in sched.timesteps:
        x = sched.step(model(x, torch.full((SHAPE[0],), int(t), dtype=torch.long)), int(t), x).prev_sample
    err = (ours - x).abs().max().item()
    print(f"DPM-Solver++ v, {steps} steps, clip={clip}: max |ours - diffusers| = {err:.2e} "
          f"(scale {x.abs().max().item():.3g})")
    assert torch.isfinite(ours).all() and ours.abs().max() > 0.5
    torch.testing.assert_close(ours, x, atol=1e-4, rtol=0 if clip else 1e-5)


RESTART = {"restart_t_min": 5, "restart_t_max": 20, "restart_k": 2, "restart_share": 0.4}


@pytest.mark.parametrize("name,steps,params", [
    ("ancestral", None, {}), ("respaced", 10, {}), ("ddim", 10, {}), ("dpm_solver", 10, {}),
    ("dpm_solver_sde", 10, {}), ("restart", 10, RESTART),
])
@pytest.mark.parametrize("clip", [True, False])
def test_every_sampler_reads_a_v_network_as_the_x0_network_it_implies(name, steps, params, clip):
    """Every registered sampler through the one conversion: a v network (v = (x_t sqrt(abar) - x0) / sqrt(1-abar)
    of a fixed x0 network, formed here from the schedule in float64) gives the images of that x0 network."""
    from ddpm.core.config import SamplerConfig
    from ddpm.services.generate import generate

    Tn = 50
    abar = abar64("linear", Tn)
    v_diff = GaussianDiffusion.from_config("linear", Tn, "v", "fixed_large", "mse")
    x0_diff = GaussianDiffusion.from_config("linear", Tn, "x0", "fixed_large", "mse")

    def toy_x0(x, t):
        s = (t.float() / Tn).view(-1, 1, 1, 1)
        return torch.tanh(0.8 * x) * (0.5 + 0.4 * torch.cos(3 * s)) + 0.2 * torch.sin(2 * x + s)

    def v_net(x, t):  # x0 = a x_t - s v  <=>  v = (a x_t - x0) / s
        a, s = per_t(np.sqrt(abar), t), per_t(np.sqrt(1 - abar), t)
        return ((a * x.double() - toy_x0(x, t).double()) / s).float()

    sampler = SamplerConfig(name=name, steps=steps, clip_denoised=clip, params=params)
    seeds = list(range(6))
    a = generate(v_net, v_diff, seeds, (1, 4, 4), sampler)
    b = generate(toy_x0, x0_diff, seeds, (1, 4, 4), sampler)
    assert b.abs().max() > 0.1
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_min_snr_composes_with_importance_sampled_t(tiny):
    """optim.t_sampler=loss_second_moment with a loss weight: the step's loss is mean(w_t * mse_t / (T p_t)), an
    unbiased estimate of the weighted loss, and the sampler's history learns the weighted per-t losses."""
    from test_resample import _module, fill

    from ddpm.core.diffusion.resample import make_t_sampler

    m = _module(tiny("objective=v_min_snr", "optim.t_sampler=loss_second_moment"))
    assert (m.diffusion.mean_type.value, m.diffusion.loss_weight.value) == ("v", "min_snr")
    fill(m.t_sampler, lambda t: 1.0 + t * t)
    ref = make_t_sampler("loss_second_moment", m.diffusion.num_timesteps)
    ref.load_state_dict({k: v.clone() for k, v in m.t_sampler.state_dict().items()})
    batch = torch.rand((32, 1, 8, 8), generator=torch.Generator().manual_seed(0)) * 2 - 1
    torch.manual_seed(1)
    loss = m.training_step(batch, 0)
    torch.manual_seed(1)
    t, is_weight = ref.sample(32)
    terms = m.diffusion.training_losses(m.model_fn(use_ema=False), batch, t)
    weighted = m.diffusion.loss_weights[t] * terms["mse"]
    assert not torch.allclose(is_weight, torch.ones_like(is_weight))  # t is importance-sampled
    torch.testing.assert_close(loss, (weighted * is_weight).mean())
    ref.update(t, weighted.detach())
    torch.testing.assert_close(m.t_sampler.state_dict()["losses"], ref.state_dict()["losses"])


def test_a_v_run_exports_as_v_prediction_and_converts_back_bit_identical(tmp_path_factory, tmp_path):
    """convert(export(run)) for a trained v run (objective=v_min_snr, T=10): the folder says v_prediction, the
    converted weights are the run's EMA weights bit for bit, and they load back as a v model."""
    from safetensors.torch import load_file
    from sampling_helpers import tiny_checkpoint

    from ddpm.commands.convert import main as convert_main
    from ddpm.commands.export import main as export_main
    from ddpm.services import interop
    from ddpm.services.loading import load_model

    ckpt = tiny_checkpoint(tmp_path_factory, extra=("objective=v_min_snr", "model.ch=32"))  # 32: exportable
    run = load_model(ckpt_path=ckpt)
    assert run.diffusion.mean_type.value == "v"
    out = tmp_path / "export"
    assert export_main([str(ckpt.parent.parent), str(out)]) is None
    sched = json_load(out / "scheduler" / "scheduler_config.json")
    assert sched["prediction_type"] == "v_prediction"
    convert_main([str(out), str(tmp_path / "back.safetensors")])
    back, info = interop.load_converted(tmp_path / "back.safetensors")
    assert info["mean_type"] == "v"
    want = run.net.state_dict()
    got = load_file(tmp_path / "back.safetensors")
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert load_model(pretrained=tmp_path / "back.safetensors").diffusion.mean_type.value == "v"


def json_load(path):
    import json

    return json.loads(path.read_text())
