"""The one sampler API (issue 27): named spacing functions give the explicit timesteps, every sampler takes them
and a model function, a wrapper of the model function is all guidance needs, and a sampler registered from
outside ``src/`` works in sample.py, the frontier and the figures."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sampling_helpers import sample_cfg, tiny_checkpoint

from ddpm.core.config import SamplerConfig, compose
from ddpm.core.diffusion import (
    SAMPLERS,
    SPACINGS,
    GaussianDiffusion,
    SeededNoise,
    final_sample,
    get_timesteps,
    register,
)
from ddpm.core.diffusion.spacing import num_evaluations
from ddpm.services.generate import generate, seeds_for

pytestmark = pytest.mark.usefixtures("one_thread")

RESTART = {"restart_t_min": 5, "restart_t_max": 20, "restart_k": 2, "restart_share": 0.4}


# ----------------------------------------------------------------------------- spacings
def test_each_named_spacing_gives_its_documented_list():
    """Written out by hand from the definitions (improved-diffusion's even spacing, DDIM's stride, the full chain),
    not from the code under test."""
    d = GaussianDiffusion.from_config("linear", 1000)
    assert SPACINGS["full"](d, None) == list(range(999, -1, -1))
    assert SPACINGS["full"](d, None, 41) == list(range(41, -1, -1))
    assert SPACINGS["even"](d, 10) == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]  # stride 999/9 = 111
    assert SPACINGS["even"](d, 4) == [999, 666, 333, 0]
    assert SPACINGS["ddim"](d, 50) == list(range(980, -1, -20))  # range(0, 1000, 20) has exactly 50
    assert SPACINGS["logsnr"](d, 10) == [999, 886, 757, 603, 410, 202, 73, 22, 5, 0]
    small = GaussianDiffusion.from_config("linear", 10)
    for name in ("even", "ddim", "logsnr"):  # steps >= T: every index (a T=1000 config on a T=10 model)
        assert SPACINGS[name](small, 10) == SPACINGS[name](small, 25) == list(range(9, -1, -1)), name
    with pytest.raises(ValueError, match="a respaced chain starts at T-1"):
        SPACINGS["even"](d, 10, 500)


@pytest.mark.parametrize("name", ["ancestral", "respaced", "ddim", "dpm_solver", "dpm_solver_sde", "restart"])
def test_every_sampler_evaluates_the_network_exactly_at_its_spacings_list(name):
    """The list is explicit: the (original) timesteps the network sees are the spacing's evaluations, in order,
    and their number is ``steps`` (``num_evaluations``: a landing index before a jump is not evaluated)."""
    d = GaussianDiffusion.from_config("linear", 50, "eps", "fixed_small", "mse")
    params = RESTART if name == "restart" else {}
    steps = None if name == "ancestral" else 10
    ts = SAMPLERS[name].timesteps(d, steps, params)
    seen: list[int] = []

    def model(x, t):
        seen.append(int(t[0]))
        return 0.5 * torch.tanh(x)

    SAMPLERS[name].sample(d, model, (2, 1, 2, 2), steps=steps, noise=SeededNoise([1, 2]), **params)
    landings = {i for i in range(len(ts) - 1) if ts[i + 1] > ts[i]}
    assert seen == [t for i, t in enumerate(ts) if i not in landings]
    assert num_evaluations(ts) == len(seen) == (50 if name == "ancestral" else 10)
    assert get_timesteps(SAMPLERS[name].spacing, d, steps, **params) == ts


# ----------------------------------------------------------------------------- a wrapped model function
def labelled_net(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A per-image nonlinear 'network' of (x, t, label); label -1 is the unconditional (dropped) label."""
    s = (t.float() / 50).view(-1, 1, 1, 1)
    return 0.6 * torch.tanh(x + 0.3 * (y.float() + 1).view(-1, 1, 1, 1)) * (1 + s)


def guided_by_doubling(labels: torch.Tensor, w: float):
    """Classifier-free guidance the way a wrapper does it: ONE call on the doubled batch (conditional and
    unconditional halves), combined as (1 + w) eps_c - w eps_u. Signature: ``fn(x [B, C, H, W], t long [B]) ->
    [B, C_out, H, W]``, as every sampler calls it."""

    def fn(x, t):
        out = labelled_net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, torch.full_like(labels, -1)]))
        cond, uncond = out.chunk(2)
        return (1 + w) * cond - w * uncond

    return fn


def guided_by_two_calls(labels: torch.Tensor, w: float):
    def fn(x, t):
        return (1 + w) * labelled_net(x, t, labels) - w * labelled_net(x, t, torch.full_like(labels, -1))

    return fn


@pytest.mark.parametrize("name", ["ancestral", "respaced", "ddim", "dpm_solver", "dpm_solver_sde", "restart"])
def test_a_batch_doubling_guidance_wrapper_works_with_every_sampler(name):
    """No sampler knows about labels or guidance: the wrapper alone gives the guided samples (equal to the same
    guidance computed with two calls), they differ from the unguided ones, and per-image seeds still hold."""
    d = GaussianDiffusion.from_config("linear", 50, "eps", "fixed_small", "mse")
    params = {**RESTART} if name == "restart" else {"eta": 0.5} if name == "ddim" else {}
    sampler = SamplerConfig(name=name, steps=None if name == "ancestral" else 8, params=params)
    labels = torch.tensor([0, 3, 7])
    doubled = generate(guided_by_doubling(labels, 2.0), d, [4, 5, 6], (1, 2, 2), sampler)
    twice = generate(guided_by_two_calls(labels, 2.0), d, [4, 5, 6], (1, 2, 2), sampler)
    torch.testing.assert_close(doubled, twice, rtol=0, atol=1e-6)
    unguided = generate(guided_by_two_calls(labels, 0.0), d, [4, 5, 6], (1, 2, 2), sampler)
    assert (doubled - unguided).abs().max() > 1e-2
    alone = generate(guided_by_doubling(labels[1:2], 2.0), d, [5], (1, 2, 2), sampler)
    torch.testing.assert_close(alone, doubled[1:2], rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- a sampler from a test module
@torch.no_grad()
def heun_free_ddim(diffusion, model_fn, x, timesteps, *, noise=None, generator=None, clip_denoised=True,
                   progress=None, gain=1.0):
    """A sampler written outside src/: deterministic DDIM steps on the model's own chain between the given
    indices (no respacing), the last one to the clean image; a setting of its own, ``gain`` on the predicted noise
    (1: plain DDIM), whose default only its YAML outside src/ writes."""
    ts = [int(t) for t in timesteps]
    for i, t in enumerate(ts):
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        x0 = diffusion.p_mean_variance(model_fn, x, tt, clip_denoised=clip_denoised)["pred_xstart"]
        eps = gain * diffusion.predict_eps_from_xstart(x, tt, x0)
        a_next = float(diffusion.alphas_cumprod_np[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        x = math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * eps
        if progress is not None:
            progress(i + 1, len(ts))
        yield {"t": t, "sample": x, "pred_xstart": x0}


@pytest.fixture
def outside_sampler(tmp_path):
    """``test_ddim_on_chain`` registered from here, its YAML in a scratch conf dir on Hydra's search path; both
    gone afterwards."""
    register("test_ddim_on_chain", spacing="even", stochastic=False, params={"gain": float})(heun_free_ddim)
    conf = tmp_path / "conf" / "sampler"
    conf.mkdir(parents=True)
    (conf / "test_ddim_on_chain.yaml").write_text(
        "name: test_ddim_on_chain\nsteps: 4\ngain: 1.0\nclip_denoised: true\nvar_type: null\n")
    yield f"hydra.searchpath=[file://{tmp_path / 'conf'}]"
    SAMPLERS.pop("test_ddim_on_chain")


@pytest.mark.slow  # sample.py, a frontier and a figure on the tiny checkpoint
def test_a_sampler_registered_from_a_test_module_works_in_sample_frontier_and_figures(
        outside_sampler, tmp_path_factory, tmp_path):
    from ddpm.commands.figures import make_figure
    from ddpm.commands.frontier import frontier
    from ddpm.commands.sampling import sample
    from ddpm.services.loading import load_model

    ckpt = tiny_checkpoint(tmp_path_factory)  # T=10
    m = sample(sample_cfg(ckpt, tmp_path / "s", "num_samples=5", "batch_size=2", "sampler=test_ddim_on_chain",
                          outside_sampler))
    assert m["sampler"] == {"name": "test_ddim_on_chain", "steps": 4, "clip_denoised": True, "var_type": None,
                            "gain": 1.0}
    assert m["sampler_label"] == "test_ddim_on_chain4"
    loaded = load_model(ckpt, None, True)
    noise = SeededNoise(seeds_for(0, 0, 5))
    by_hand = final_sample(heun_free_ddim(loaded.diffusion, loaded.model_fn(), noise.randn(*loaded.image_shape),
                                          [9, 6, 3, 0]))
    with np.load(tmp_path / "s" / "samples.npz") as z:
        npz = z["arr_0"]
    want = ((by_hand.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).repeat(1, 1, 1, 3)
    assert np.array_equal(npz, want.numpy())
    with pytest.raises(ValueError, match="sampler.gamma is not a setting of sampler=test_ddim_on_chain"):
        compose("sample", [f"ckpt_path={ckpt}", "sampler=test_ddim_on_chain", "+sampler.gamma=1", outside_sampler])

    result = frontier(compose("frontier", [f"ckpt_path={ckpt}", "samplers=[test_ddim_on_chain]", "steps=[3]",
                                           "num_samples=6", "batch_size=3", "seed_sets=1", "num_boot=10",
                                           "progress=false", f"out_dir={tmp_path / 'f'}", outside_sampler]))
    entry = next(e for e in result["entries"] if e["sampler"] == "test_ddim_on_chain")
    assert entry["label"] == "test_ddim_on_chain3" and entry["network_evaluations"] == 3
    assert entry["stochastic"] is False and (tmp_path / "f" / "entries" / "test_ddim_on_chain3" / "set0.npz").is_file()

    out = tmp_path / "progressive.png"
    make_figure(compose("figures", [f"ckpt_path={ckpt}", "sampler=test_ddim_on_chain", "sampler.steps=4",
                                    f"out={out}", outside_sampler]))
    assert out.is_file() and out.stat().st_size > 0
    json.dumps(result["entries"])  # the entry is plain JSON
