"""``python -m ddpm.export``: a run as a diffusers pipeline folder, checked against diffusers itself.

No network: every diffusers object is built from the exported folder. Networks are randomly initialised
(every tensor, including the zero-initialised output conv, so outputs are O(1)); ``unet_small`` is the
conf/model preset as it is, ``unet_cifar32`` and ``unet_256`` are their conf/model options with the base width
``ch`` reduced from 128 to 32 (the smallest width that keeps 32 GroupNorm groups everywhere) so that a CPU
forward pass takes a second.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import diffusers  # a test extra: pip install -e .[test]
import pytest
import torch
import yaml
from conftest import ROOT, run_python
from sampling_helpers import tiny_checkpoint

from ddpm.commands.convert import main as convert_main
from ddpm.commands.export import main
from ddpm.core.diffusion import (
    SAMPLERS,
    GaussianDiffusion,
    respace,
    space_timesteps,
)
from ddpm.core.nets import UNet
from ddpm.services import interop
from ddpm.services.interop import (
    NotExportableError,
    check_exportable,
    diffusers_scheduler_config,
    diffusers_unet_config,
    export_pipeline,
)
from ddpm.services.loading import load_model

diffusers.utils.logging.set_verbosity_error()
diffusers.utils.logging.disable_progress_bar()

# (preset, image channels, resolution, ch used here)
ARCHS = {
    "unet_small": (1, 8, 32),  # digits 8x8, the preset's own width
    "unet_cifar32": (3, 32, 32),  # preset ch=128
    "unet_256": (3, 256, 32),  # preset ch=128
}


pytestmark = pytest.mark.usefixtures("one_thread")


def preset(name: str) -> dict:
    cfg = yaml.safe_load((ROOT / "conf" / "model" / f"{name}.yaml").read_text())
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


@torch.no_grad()
def random_unet(name: str, learned: bool, seed: int = 0) -> UNet:
    channels, resolution, ch = ARCHS[name]
    kwargs = dict(preset(name), ch=ch)
    net = UNet(in_channels=channels, out_channels=channels * (2 if learned else 1), resolution=resolution, **kwargs)
    g = torch.Generator().manual_seed(seed)
    for pname, p in net.named_parameters():
        if p.ndim >= 2:
            p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
        elif "norm" in pname and pname.endswith("weight"):
            p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return net.eval()


def diffusion_for(var_type: str, schedule: str = "linear", T: int = 1000, mean_type: str = "eps"):
    loss = "hybrid" if var_type.startswith("learned") else "mse"
    return GaussianDiffusion.from_config(schedule, T, mean_type, var_type, loss)


def exported(tmp_path: Path, net: UNet, diffusion: GaussianDiffusion, clip: bool = True):
    out = export_pipeline(net, diffusion, tmp_path / "export", clip_denoised=clip)
    pipe = diffusers.DDPMPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    return out, pipe


# ----------------------------------------------------------------------------------------------------
# the UNet
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("learned", [False, True], ids=["fixed", "learned_range"])
@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.slow  # over 2 s on 2 cores: the fast tier stays under 3 minutes
def test_exported_unet_equals_ours(arch, learned, tmp_path):
    net = random_unet(arch, learned)
    out, pipe = exported(tmp_path, net, diffusion_for("learned_range" if learned else "fixed_large"))
    assert isinstance(pipe.unet, diffusers.UNet2DModel) and isinstance(pipe.scheduler, diffusers.DDPMScheduler)
    cfg = json.loads((out / "unet" / "config.json").read_text())
    conf = preset(arch)
    assert cfg["dropout"] == conf["dropout"] and cfg["layers_per_block"] == conf["num_res_blocks"]
    assert cfg["block_out_channels"] == [32 * m for m in conf["ch_mult"]]
    assert cfg["out_channels"] == cfg["in_channels"] * (2 if learned else 1)
    assert sum(p.numel() for p in pipe.unet.parameters()) == sum(p.numel() for p in net.parameters())
    channels, res, _ = ARCHS[arch]
    batch = 1 if res == 256 else 3
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, channels, res, res, generator=g)
    t = torch.tensor([999, 0, 417][:batch])
    with torch.no_grad():
        want, got = net(x, t), pipe.unet(x, t).sample
    err = (got - want).abs().max().item()
    print(f"{arch} {'learned' if learned else 'fixed'}: max |diffusers - ours| = {err:.2e}, "
          f"output scale {want.abs().max().item():.3g}")
    assert want.abs().max().item() > 0.1  # a real output, not the zero-initialised conv_out
    assert err <= 1e-5


def test_unexpressible_unets_are_refused():
    narrow = UNet(in_channels=1, out_channels=1, ch=8, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[4],
                  dropout=0.0, resolution=8)
    with pytest.raises(NotExportableError, match="GroupNorm.*ch a multiple of 32"):
        diffusers_unet_config(narrow)
    pooled = UNet(in_channels=1, out_channels=1, ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[4],
                  dropout=0.0, resolution=8, resamp_with_conv=False)
    with pytest.raises(NotExportableError, match="resamp_with_conv"):
        diffusers_unet_config(pooled)


# ----------------------------------------------------------------------------------------------------
# the scheduler
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["linear", "cosine", "quad"])
def test_scheduler_holds_the_trained_betas(schedule, tmp_path):
    diffusion = diffusion_for("fixed_large", schedule)
    config = diffusers_scheduler_config(diffusion, True)
    names = {"linear": "linear", "cosine": "squaredcos_cap_v2", "quad": "scaled_linear"}
    assert config["beta_schedule"] == names[schedule]  # a label: diffusers uses trained_betas
    path = tmp_path / "scheduler_config.json"
    path.write_text(json.dumps(config))
    assert json.loads(path.read_text())["trained_betas"] == diffusion.betas_np.tolist()  # float64, exact
    sched = diffusers.DDPMScheduler.from_config(json.loads(path.read_text()))
    assert torch.equal(sched.betas, diffusion.betas)  # float32, bit for bit
    # diffusers' cumprod runs in float32: it equals the float32 cumprod of the same betas exactly, and ours
    # (float64, then rounded) to float32 precision accumulated over T products
    assert torch.equal(sched.alphas_cumprod, torch.cumprod(1.0 - diffusion.betas, 0))
    rel = ((sched.alphas_cumprod.double() - torch.from_numpy(diffusion.alphas_cumprod_np)).abs()
           / torch.from_numpy(diffusion.alphas_cumprod_np)).max().item()
    absolute = (sched.alphas_cumprod - diffusion.alphas_cumprod).abs().max().item()
    print(f"{schedule}: max relative |abar_diffusers - abar_ours| = {rel:.2e} (absolute {absolute:.2e})")
    assert rel <= 1000 * 2**-24  # T float32 roundings


def _float64_cumprod(sched, diffusion: GaussianDiffusion):
    """The same scheduler holding our float64 cumulative products (its own arithmetic, our rounding)."""
    sched = diffusers.DDPMScheduler.from_config(sched.config)
    sched.alphas_cumprod = torch.from_numpy(diffusion.alphas_cumprod_np)
    sched.one = torch.tensor(1.0, dtype=torch.float64)
    return sched


@pytest.mark.parametrize("clip", [True, False], ids=["clip", "noclip"])
@pytest.mark.parametrize("var_type", ["fixed_large", "fixed_small", "learned_range"])
def test_one_scheduler_step_equals_our_reverse_step(var_type, clip, tmp_path):
    learned = var_type == "learned_range"
    net = random_unet("unet_small", learned)
    diffusion = diffusion_for(var_type)
    out, pipe = exported(tmp_path, net, diffusion, clip)
    sched64 = _float64_cumprod(pipe.scheduler, diffusion)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    errs = {}
    for t in (999, 900, 500, 100, 20, 5, 1, 0):
        with torch.no_grad():
            model_output = pipe.unet(x, torch.full((4,), t)).sample
        theirs = pipe.scheduler.step(model_output, t, x, generator=torch.Generator().manual_seed(7)).prev_sample
        theirs64 = sched64.step(model_output, t, x, generator=torch.Generator().manual_seed(7)).prev_sample
        ours = next(SAMPLERS["ancestral"].run(
            diffusion, net, x.shape, generator=torch.Generator().manual_seed(7), x_start_t=x, t_start=t,
            clip_denoised=clip,
        ))["sample"]
        errs[t] = ((theirs - ours).abs().max().item(), (theirs64 - ours).abs().max().item())
    print(f"{var_type} clip={clip}: t -> (max |diffusers - ours|, same with float64 abar): "
          + ", ".join(f"{t}: ({a:.1e}, {b:.1e})" for t, (a, b) in errs.items()))
    for t, (err, err64) in errs.items():
        assert err64 <= 1e-5, t  # the same step, every t, once diffusers holds abar at our precision
        if t >= 100 or t == 0:
            assert err <= 1e-5, t
        else:
            # below t~100 diffusers' float32 1 - abar_t (~t * 1e-4) keeps few digits: measured up to 3e-4
            assert err <= 1e-3, t

    # t = 0 is pinned: diffusers draws no noise there, ours draws z and masks it: both return the mean
    with torch.no_grad():
        mo = pipe.unet(x, torch.zeros(4, dtype=torch.long)).sample
    a = pipe.scheduler.step(mo, 0, x, generator=torch.Generator().manual_seed(1)).prev_sample
    b = pipe.scheduler.step(mo, 0, x, generator=torch.Generator().manual_seed(2)).prev_sample
    assert torch.equal(a, b)
    # and the variance diffusers would state at t = 0 differs from ours (only a likelihood would see it):
    # diffusers fixed_large is beta_1 there, the official code's is beta-tilde_2 (our code index 1)
    if var_type == "fixed_large":
        theirs_var = pipe.scheduler._get_variance(0).item()  # 1 - abar_1 in float32
        ours_var = diffusion.p_mean_variance(None, x, torch.zeros(4, dtype=torch.long), model_output=mo)["variance"]
        assert theirs_var == pytest.approx(diffusion.betas_np[0], rel=1e-3)
        assert ours_var[0, 0, 0, 0].item() == pytest.approx(diffusion.posterior_variance_np[1], rel=1e-6)
        assert ours_var[0, 0, 0, 0].item() < 0.6 * theirs_var


@pytest.mark.parametrize("var_type", ["fixed_large", "learned_range"])
@pytest.mark.slow  # over 2 s on 2 cores: the fast tier stays under 3 minutes
def test_the_whole_pipeline_equals_our_ancestral_sampler(var_type, tmp_path):
    """DDPMPipeline as a user calls it (x_T and every z from one generator, in the same order as ours), T=100."""
    net = random_unet("unet_small", var_type == "learned_range", seed=2)
    diffusion = diffusion_for(var_type, T=100)
    out, pipe = exported(tmp_path, net, diffusion, clip=True)
    images = pipe(batch_size=4, num_inference_steps=100, generator=torch.Generator().manual_seed(11),
                  output_type="np").images
    with torch.no_grad():
        ours = SAMPLERS["ancestral"].sample(diffusion, net, (4, 1, 8, 8), generator=torch.Generator().manual_seed(11))
    ours = (ours / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    err = abs(ours - images).max()
    print(f"DDPMPipeline, {var_type}, 100 steps: max |diffusers - ours| = {err:.2e} (images in [0, 1])")
    assert 0.05 < ours.std() and err <= 1e-4


def test_ddim_in_diffusers_equals_our_ddim(tmp_path):
    net = random_unet("unet_small", False)
    diffusion = diffusion_for("fixed_small")
    out, pipe = exported(tmp_path, net, diffusion, clip=True)
    ddim = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    steps = 10
    ddim.set_timesteps(steps)
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(5))

    def run(use_clipped: bool):
        x = x_T.clone()
        for t in ddim.timesteps:
            with torch.no_grad():
                eps = pipe.unet(x, t).sample
            x = ddim.step(eps, t, x, eta=0.0, use_clipped_model_output=use_clipped).prev_sample
        return x

    respaced = respace(diffusion, space_timesteps(1000, f"ddim{steps}"))
    assert respaced.timestep_map.tolist() == sorted(ddim.timesteps.tolist())
    ours = SAMPLERS["ddim"].sample(diffusion, net, x_T.shape, steps=steps, eta=0.0, clip_denoised=True, x_start_t=x_T)
    err = (run(True) - ours).abs().max().item()
    unclipped_eps = (run(False) - ours).abs().max().item()
    print(f"DDIM {steps} steps: max |diffusers - ours| = {err:.2e}; with diffusers' default "
          f"use_clipped_model_output=False: {unclipped_eps:.2e}")
    assert err <= 1e-4
    # ours (the official DDIM code) re-derives eps from the clipped x_0; diffusers does only when asked
    assert unclipped_eps > 1e-2


# ----------------------------------------------------------------------------------------------------
# refusals
# ----------------------------------------------------------------------------------------------------


def test_unexpressible_diffusions_are_refused():
    with pytest.raises(NotExportableError, match="mean_type=mu"):
        check_exportable(GaussianDiffusion.from_config("linear", 10, "mu", "fixed_large", "mse"))
    with pytest.raises(NotExportableError, match="var_type=learned .*log sigma"):
        check_exportable(GaussianDiffusion.from_config("linear", 10, "eps", "learned", "kl"))
    with pytest.raises(NotExportableError, match="respaced"):
        check_exportable(respace(diffusion_for("fixed_large"), range(0, 1000, 10)))
    x0 = GaussianDiffusion.from_config("linear", 10, "x0", "fixed_small", "mse")
    assert diffusers_scheduler_config(x0)["prediction_type"] == "sample"


# ----------------------------------------------------------------------------------------------------
# round trip
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "var_type", "schedule"), [
    ("unet_small", "fixed_large", "linear"),
    ("unet_small", "learned_range", "cosine"),
    ("unet_cifar32", "fixed_small", "quad"),
])
def test_export_convert_round_trip_is_bit_identical(arch, var_type, schedule, tmp_path):
    net = random_unet(arch, var_type == "learned_range", seed=4)
    diffusion = diffusion_for(var_type, schedule)
    out = export_pipeline(net, diffusion, tmp_path / "export", clip_denoised=False)
    target = tmp_path / "back.safetensors"
    convert_main([str(out), str(target)])
    back, info = interop.load_converted(target)
    assert {k: v for k, v in back.config().items()} == net.config()
    sa, sb = net.state_dict(), back.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert info["schedule"] == schedule and info["num_timesteps"] == 1000
    assert info["var_type"] == var_type and info["clip_denoised"] is False and info["mean_type"] == "eps"
    # the folder also loads directly as published weights (sample.py pretrained=OUT)
    loaded = load_model(pretrained=out)
    assert loaded.diffusion.var_type.value == var_type and loaded.default_clip_denoised is False
    assert torch.equal(loaded.diffusion.betas, diffusion.betas)


def test_convert_refuses_betas_that_are_no_schedule_of_ours():
    with pytest.raises(ValueError, match="trained_betas .* equal none"):
        interop.apply_scheduler_config({"schedule": "linear", "num_timesteps": 3}, {"trained_betas": [0.1, 0.2, 0.3]})


# ----------------------------------------------------------------------------------------------------
# the command, on a trained run
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny trained digits run (ch=32 so that it can be exported), with the evaluations sample.py writes."""
    ckpt = tiny_checkpoint(tmp_path_factory, extra=("model.ch=32",))
    run = tmp_path_factory.mktemp("export_run")
    shutil.copytree(ckpt.parent.parent, run, dirs_exist_ok=True)
    (run / ".hydra").mkdir(exist_ok=True)
    (run / ".hydra" / "overrides.yaml").write_text("- model.ch=32\n- diffusion.num_timesteps=10\n"
                                                   "- paths.output_dir=/somewhere\n")
    (run / "eval" / "fid50").mkdir(parents=True)
    (run / "eval" / "fid50" / "metrics.json").write_text(json.dumps({
        "fid_50": 12.34, "fid_50_std": 0.5, "num_samples": 50, "fid_extractor": "digits_cnn",
        "sampler": {"name": "ancestral", "steps": None}, "ref_split": "train",
    }))
    (run / "eval" / "nll").mkdir(parents=True)
    (run / "eval" / "nll" / "nll.json").write_text(json.dumps(
        {"bpd": 1.987, "num_images": 64, "split": "test", "num_timesteps": 10}))
    from ddpm.core.io import save_png
    save_png(torch.zeros(10, 10, 3, dtype=torch.uint8), run / "samples.png")
    return run


def test_export_command_writes_a_hub_folder(run_dir, tmp_path, capsys):
    out = tmp_path / "hub"
    assert main([str(run_dir), str(out)]) is None  # a console script exits with main's return value
    printed = capsys.readouterr().out
    assert "hf upload USER/REPO" in printed and f"load: DDPMPipeline.from_pretrained({str(out)!r})" in printed
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert names == ["README.md", "model_index.json", "samples.png", "scheduler/scheduler_config.json",
                     "unet/config.json", "unet/diffusion_pytorch_model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name != "hub"], "temporary folders left behind"

    ema = load_model(ckpt_path=run_dir)
    pipe = diffusers.DDPMPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([9, 0])
    with torch.no_grad():
        assert (pipe.unet(x, t).sample - ema.net(x, t)).abs().max().item() <= 1e-5
    sched = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert sched["num_train_timesteps"] == 10 and sched["trained_betas"] == ema.diffusion.betas_np.tolist()
    assert sched["variance_type"] == "fixed_large" and sched["clip_sample"] is True
    images = pipe(batch_size=2, num_inference_steps=10, generator=torch.Generator().manual_seed(0),
                  output_type="np").images
    assert images.shape == (2, 8, 8, 1) and images.min() >= 0 and images.max() <= 1

    card = (out / "README.md").read_text()
    _, header, body = card.split("---\n", 2)
    meta = yaml.safe_load(header)
    assert meta["library_name"] == "diffusers" and meta["pipeline_tag"] == "unconditional-image-generation"
    assert "ddpm" in meta["tags"] and "digits" in meta["tags"]
    from huggingface_hub import ModelCard  # the Hub's own parser of the card (local file, no network)

    hub = ModelCard.load(out / "README.md").data.to_dict()
    assert hub["library_name"] == "diffusers" and hub["pipeline_tag"] == "unconditional-image-generation"
    for text in ("| FID | 12.34 | sample.py, 50 samples, ancestral sampler, EMA weights; digits_cnn features, against "
                 "the train split; `eval/fid50/metrics.json fid_50` |", "| NLL (bits/dim) | 1.987 |",
                 "test split, 64 images", "![samples](samples.png)", "| training steps | 6 |", "EMA (decay",
                 "python train.py model.ch=32 diffusion.num_timesteps=10\n", "mean `eps`, variance `fixed_large`"):
        assert text in body, text
    assert "/somewhere" not in body

    # --raw: the raw weights; an existing folder is not replaced without --overwrite
    with pytest.raises(ValueError, match="--overwrite"):
        main([str(run_dir), str(out), "--raw"])
    main([str(run_dir), str(out), "--raw", "--overwrite"])
    raw = load_model(ckpt_path=run_dir, use_ema=False)
    back, _ = interop.load_diffusers_unet(out)
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), raw.net.state_dict().values()))
    assert "raw (not the EMA average)" in (out / "README.md").read_text()


@pytest.mark.slow  # over 5 s on 2 cores: the fast tier stays under 3 minutes
def test_mu_run_is_refused_with_one_line(run_dir, tmp_path):
    from ddpm.core.io import safe_load_checkpoint

    ckpt = safe_load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    ckpt["hyper_parameters"]["objective"] = {"mean_type": "mu", "var_type": "fixed_large", "loss_type": "mse"}
    mu = tmp_path / "mu.ckpt"
    torch.save(ckpt, mu)
    out = tmp_path / "out"
    proc = run_python(["-m", "ddpm.export", str(mu), str(out)], tmp_path, 300, HYDRA_FULL_ERROR="0",
                      DDPM_DEBUG="0")
    assert proc.returncode == 1, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "mean_type=mu" in errors[0] and "diffusers" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == [mu]


@pytest.mark.slow  # over 2 s on 2 cores: the fast tier stays under 3 minutes
def test_an_exported_v_model_samples_in_ddpm_pipeline(tmp_path):
    """issue 33: a v network exports as prediction_type="v_prediction", and DDPMPipeline as a user calls it samples
    it as our ancestral sampler does (same x_T and z from one generator), T=100."""
    net = random_unet("unet_small", False, seed=5)
    diffusion = diffusion_for("fixed_large", T=100, mean_type="v")
    out, pipe = exported(tmp_path, net, diffusion, clip=True)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    images = pipe(batch_size=4, num_inference_steps=100, generator=torch.Generator().manual_seed(12),
                  output_type="np").images
    with torch.no_grad():
        ours = SAMPLERS["ancestral"].sample(diffusion, net, (4, 1, 8, 8), generator=torch.Generator().manual_seed(12))
        as_eps = SAMPLERS["ancestral"].sample(diffusion_for("fixed_large", T=100), net, (4, 1, 8, 8),
                                                   generator=torch.Generator().manual_seed(12))
    ours, as_eps = ((x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy() for x in (ours, as_eps))
    err = abs(ours - images).max()
    print(f"DDPMPipeline, v, 100 steps: max |diffusers - ours| = {err:.2e} (images in [0, 1])")
    assert 0.05 < ours.std() and err <= 1e-4
    assert abs(as_eps - images).max() > 1e-2  # the same network read as eps samples other images


# ----------------------------------------------------------------------------------------------------
# a class-conditional UNet (model.num_classes=K; diffusers' num_class_embeds = K + 1, the null token K)
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("learned", [False, True], ids=["fixed", "learned_range"])
def test_conditional_unet_exports_with_class_embeddings_and_converts_back(learned, tmp_path):
    channels, resolution, ch = ARCHS["unet_small"]
    kwargs = dict(preset("unet_small"), ch=ch, num_classes=10)
    torch.manual_seed(0)
    net = UNet(in_channels=channels, out_channels=channels * (2 if learned else 1), resolution=resolution, **kwargs)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / max(p[0].numel(), 1) ** 0.5 if p.ndim >= 2
                    else 0.2 * torch.randn(p.shape, generator=g))
    net.eval()
    diffusion = diffusion_for("learned_range" if learned else "fixed_large")
    out, pipe = exported(tmp_path, net, diffusion)
    cfg = json.loads((out / "unet" / "config.json").read_text())
    assert cfg["num_class_embeds"] == 11 and cfg["class_embed_type"] is None
    x = torch.randn(4, channels, resolution, resolution, generator=g)
    t, y = torch.tensor([999, 0, 417, 50]), torch.tensor([0, 3, 9, 10])  # 10: the null token
    with torch.no_grad():
        want, got = net(x, t, y), pipe.unet(x, t, class_labels=y).sample
        other = net(x, t, torch.tensor([1, 4, 8, 10]))
    assert (want - other)[:3].abs().max() > 1e-3  # the labels matter (400x the tolerance below)
    assert (got - want).abs().max().item() <= 1e-5
    target = tmp_path / "back.safetensors"
    convert_main([str(out), str(target)])
    back, _ = interop.load_converted(target)
    assert back.config() == net.config() and back.num_classes == 10
    sa, sb = net.state_dict(), back.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    loaded = load_model(pretrained=out)  # sample.py pretrained=OUT: a conditional model again
    assert loaded.num_classes == 10


@pytest.mark.parametrize("objective", ["simple", "hybrid"])
@pytest.mark.slow  # over 2 s on 2 cores: the fast tier stays under 3 minutes
def test_conditional_run_card_shows_a_guided_loop_that_runs(objective, tmp_path_factory, tmp_path, capsys):
    """The quickstart is class-conditional: its card and the console point at the guided loop, not at
    DDPMPipeline, which a class-conditional UNet2DModel refuses (checked below, so the advice stays true)."""
    ckpt = tiny_checkpoint(tmp_path_factory, extra=("model.ch=32", "model.num_classes=10", f"objective={objective}"))
    out = tmp_path / "hub"
    main([str(ckpt.parent.parent), str(out)])
    printed = capsys.readouterr().out
    assert "DDPMPipeline cannot pass labels" in printed and "DDPMPipeline.from_pretrained" not in printed
    assert str(out / "README.md") in printed and "class_labels 0..9, 10 = no class" in printed
    assert json.loads((out / "unet" / "config.json").read_text())["num_class_embeds"] == 11
    card = (out / "README.md").read_text()
    assert "guidance_scale` is `1 + w`" in card and "0=0, 1=1" in card
    assert "## Usage" not in card and "pipe = DDPMPipeline" not in card  # no usage that fails
    pipe = diffusers.DDPMPipeline.from_pretrained(out)
    with pytest.raises(ValueError, match="class_labels"):
        pipe(batch_size=1, num_inference_steps=2)
    code = card.split("## Class-conditional sampling")[1].split("```python\n")[1].split("```")[0]
    scope: dict = {}
    exec(code.replace("REPO_OR_FOLDER", str(out)), scope)  # the card's loop, as a user would paste it
    images = scope["images"]
    assert images.shape == (10, 1, 8, 8) and images.dtype == torch.uint8
    assert images.float().std() > 0  # sampled, not a constant
