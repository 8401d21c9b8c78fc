"""The diffusers bridge both ways (:mod:`ddpm.services.interop`): one name table, and round trips that are bit-identical.

``convert(export(run))`` starts from our network and diffusion; ``export(convert(weights))`` starts from a folder
that diffusers itself wrote (``UNet2DModel`` + ``DDPMScheduler`` with a named schedule, no ``trained_betas``),
so the table is checked against diffusers' own names. Every schedule, mean type and variance type that exports
is covered, on a tiny UNet (ch=32, 8x8) with T=100. No network.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import diffusers  # a test extra: pip install -e .[test]
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ddpm.commands.convert import main as convert_main
from ddpm.commands.export import main as export_main
from ddpm.core.diffusion import GaussianDiffusion, get_beta_schedule
from ddpm.core.nets import UNet
from ddpm.services import interop
from ddpm.services.interop import PREDICTIONS, SCHEDULES, VARIANCES, NotExportableError
from ddpm.services.loading import load_model

diffusers.utils.logging.set_verbosity_error()
pytestmark = pytest.mark.usefixtures("one_thread")

T = 100
# What diffusers calls each of our names (from diffusers' DDPMScheduler, not from the table under test).
DIFFUSERS_NAMES = {
    "schedule": {"linear": "linear", "cosine": "squaredcos_cap_v2", "quad": "scaled_linear"},
    "mean_type": {"eps": "epsilon", "x0": "sample", "v": "v_prediction"},
    "var_type": {"fixed_large": "fixed_large", "fixed_small": "fixed_small", "learned_range": "learned_range"},
}
EXPORTABLE = list(itertools.product(DIFFUSERS_NAMES["schedule"], DIFFUSERS_NAMES["mean_type"],
                                    DIFFUSERS_NAMES["var_type"]))
TINY = dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[4], dropout=0.0, resolution=8)


@torch.no_grad()
def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random values in every tensor (also the zero-initialised ones), activations kept O(1)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
        elif "norm" in name and name.endswith("weight"):
            p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def _diffusion(schedule: str, mean_type: str, var_type: str) -> GaussianDiffusion:
    return GaussianDiffusion.from_config(schedule, T, mean_type, var_type,
                                         "hybrid" if var_type.startswith("learned") else "mse")


# ----------------------------------------------------------------------------------------------------
# the name table
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("table", [SCHEDULES, PREDICTIONS, VARIANCES], ids=lambda t: t.ours_key)
def test_the_one_table_reads_back_every_name_it_writes(table):
    assert dict(table.ours_to_theirs) == DIFFUSERS_NAMES[table.ours_key]
    for ours, theirs in DIFFUSERS_NAMES[table.ours_key].items():
        assert table.to_diffusers(ours) == theirs and table.from_diffusers(theirs) == ours
    for alias, ours in table.aliases.items():  # read, never written
        assert table.from_diffusers(alias) == ours and table.to_diffusers(ours) != alias
    with pytest.raises(ValueError, match=f"{table.key} 'nonsense' is not supported"):
        table.from_diffusers("nonsense")
    with pytest.raises(NotExportableError, match=f"{table.ours_key}=nonsense cannot be exported"):
        table.to_diffusers("nonsense")


def test_diffusers_builds_each_named_schedule_as_ours():
    """The schedule names mean the same formulas: diffusers' float32 betas equal our float64 ones to float32
    precision, at the endpoints the exporter writes."""
    for ours, theirs in DIFFUSERS_NAMES["schedule"].items():
        betas = get_beta_schedule(ours, T)
        sched = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule=theirs, beta_start=float(betas[0]),
                                        beta_end=float(betas[-1]))
        rel = np.abs(sched.betas.double().numpy() - betas) / betas
        assert rel.max() < 1e-6, (ours, rel.max())
    # the wrong pairing is far off (so the check above can fail)
    sched = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-3, beta_end=0.2)
    assert np.abs(sched.betas.double().numpy() - get_beta_schedule("quad", T)).max() > 1e-2


def test_names_that_cannot_cross_say_why():
    with pytest.raises(NotExportableError, match="mean_type=mu .*diffusers"):
        interop.check_exportable(_diffusion("linear", "mu", "fixed_large"))
    with pytest.raises(NotExportableError, match="var_type=learned .*log sigma"):
        interop.check_exportable(GaussianDiffusion.from_config("linear", T, "eps", "learned", "kl"))
    info = interop.default_diffusion_settings(32)
    for key, value, why in [("variance_type", "learned", "log sigma"),
                            ("beta_schedule", "sigmoid", "no sigmoid"), ("thresholding", True, "changes how"),
                            ("rescale_betas_zero_snr", True, "changes how")]:
        with pytest.raises(ValueError, match=f"{key}.*{why}"):
            interop.apply_scheduler_config(info, {key: value})
    assert interop.apply_scheduler_config(info, {"variance_type": "fixed_small_log"})["var_type"] == "fixed_small"
    with pytest.raises(ValueError, match="beta_end=0.03 differs from this project's quad schedule"):
        interop.apply_scheduler_config(info, {"beta_schedule": "scaled_linear", "beta_end": 0.03})


# ----------------------------------------------------------------------------------------------------
# convert(export(run))
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("schedule", "mean_type", "var_type"), EXPORTABLE)
@pytest.mark.slow  # over 2 s on 2 cores: the fast tier stays under 3 minutes
def test_convert_of_export_is_bit_identical(schedule, mean_type, var_type, tmp_path, capsys):
    learned = var_type == "learned_range"
    net = _randomise(UNet(in_channels=1, out_channels=2 if learned else 1, **TINY), seed=3)
    diffusion = _diffusion(schedule, mean_type, var_type)
    out = interop.export_pipeline(net, diffusion, tmp_path / "export", clip_denoised=False)
    sched = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert (sched["beta_schedule"], sched["prediction_type"], sched["variance_type"]) == (
        DIFFUSERS_NAMES["schedule"][schedule], DIFFUSERS_NAMES["mean_type"][mean_type],
        DIFFUSERS_NAMES["var_type"][var_type])

    assert convert_main([str(out), str(tmp_path / "back.safetensors")]) is None  # ddpm-convert exits 0
    assert "wrote" in capsys.readouterr().out
    back, info = interop.load_converted(tmp_path / "back.safetensors")
    assert back.config() == net.config()
    sa, sb = net.state_dict(), back.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert (info["schedule"], info["num_timesteps"], info["mean_type"], info["var_type"], info["clip_denoised"]) == (
        schedule, T, mean_type, var_type, False)
    loaded = load_model(pretrained=tmp_path / "back.safetensors")
    assert np.array_equal(loaded.diffusion.betas_np, diffusion.betas_np)
    assert (loaded.diffusion.mean_type, loaded.diffusion.var_type) == (diffusion.mean_type, diffusion.var_type)

    # the names alone read back too (a scheduler_config.json whose trained_betas were dropped)
    named = {k: v for k, v in sched.items() if k != "trained_betas"}
    assert interop.apply_scheduler_config({}, named)["schedule"] == schedule


# ----------------------------------------------------------------------------------------------------
# export(convert(weights))
# ----------------------------------------------------------------------------------------------------


def _diffusers_folder(root: Path, schedule: str, mean_type: str, var_type: str) -> Path:
    """A pipeline folder as diffusers writes it: a random UNet2DModel and a DDPMScheduler with a named schedule."""
    channels = 2 if var_type == "learned_range" else 1
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=channels, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1, attention_head_dim=None, norm_num_groups=32, norm_eps=1e-6, act_fn="silu",
        downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, dropout=0.0)
    _randomise(unet, seed=7).save_pretrained(root / "unet", safe_serialization=True)
    betas = get_beta_schedule(schedule, T)
    diffusers.DDPMScheduler(
        num_train_timesteps=T, beta_schedule=DIFFUSERS_NAMES["schedule"][schedule], beta_start=float(betas[0]),
        beta_end=float(betas[-1]), variance_type=DIFFUSERS_NAMES["var_type"][var_type],
        prediction_type=DIFFUSERS_NAMES["mean_type"][mean_type], clip_sample=var_type != "fixed_small",
    ).save_pretrained(root / "scheduler")
    return root


@pytest.mark.parametrize(("schedule", "mean_type", "var_type"), EXPORTABLE)
@pytest.mark.slow  # over 2 s on 2 cores: the fast tier stays under 3 minutes
def test_export_of_convert_is_bit_identical(schedule, mean_type, var_type, tmp_path):
    src = _diffusers_folder(tmp_path / "src", schedule, mean_type, var_type)
    convert_main([str(src), str(tmp_path / "ours.safetensors")])
    loaded = load_model(pretrained=tmp_path / "ours.safetensors")
    out = interop.export_pipeline(loaded.net, loaded.diffusion, tmp_path / "out",
                                  clip_denoised=loaded.default_clip_denoised)

    a = load_file(str(src / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    unet_a = diffusers.UNet2DModel.load_config(src / "unet")
    unet_b = diffusers.UNet2DModel.load_config(out / "unet")
    drop = ("_diffusers_version", "_name_or_path", "_use_default_values")  # diffusers' bookkeeping
    assert {k: v for k, v in diffusers.UNet2DModel.from_config(unet_a).config.items() if k not in drop} == {
        k: v for k, v in diffusers.UNet2DModel.from_config(unet_b).config.items() if k not in drop}

    sched_a = diffusers.DDPMScheduler.from_pretrained(src / "scheduler")
    sched_b = diffusers.DDPMScheduler.from_pretrained(out / "scheduler")
    exact = ("num_train_timesteps", "beta_schedule", "variance_type", "prediction_type", "clip_sample",
             "clip_sample_range", "thresholding", "timestep_spacing", "steps_offset", "rescale_betas_zero_snr")
    assert {k: sched_a.config[k] for k in exact} == {k: sched_b.config[k] for k in exact}
    # the betas travel as our exact float64 schedule (trained_betas); diffusers' own float32 arithmetic for the
    # name gives the same numbers to float32 precision
    assert sched_a.config["trained_betas"] is None
    assert torch.equal(sched_b.betas, torch.from_numpy(get_beta_schedule(schedule, T)).float())
    assert ((sched_a.betas - sched_b.betas).abs() / sched_b.betas).max().item() <= 4 * 2**-24


# ----------------------------------------------------------------------------------------------------
# the commands
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("main", [convert_main, export_main], ids=["convert", "export"])
def test_the_commands_fail_with_one_error_line_and_write_nothing(main, tmp_path, capsys, monkeypatch):
    """As ``python -m ddpm.convert`` / ``ddpm.commands.export`` run them (``__main__``: ``ddpm.core.cli.user_errors``)."""
    from ddpm.core.cli import user_errors

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.delenv("DDPM_DEBUG", raising=False)
    with pytest.raises(SystemExit) as info, user_errors():
        main([str(tmp_path / "missing"), str(tmp_path / "out")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert info.value.code == 1 and len(errors) == 1 and "missing" in errors[0] and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []
