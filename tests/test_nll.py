"""NLL (bits/dim) through its command (``python -m ddpm.nll``, conf/nll.yaml) vs diffusion.calc_bpd_loop, output
files, and a trained tiny run."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from sampling_helpers import tiny_checkpoint

from ddpm.commands.nll import evaluate_nll


def nll_cfg(ckpt, out_dir, *extra: str):
    """conf/nll.yaml composed for ``ckpt`` on the CPU, as ``python -m ddpm.nll`` composes it."""
    from ddpm.core.config import compose

    return compose("nll", [f"ckpt_path={ckpt}", f"out_dir={out_dir}", "progress=false", "trainer.accelerator=cpu",
                           *extra])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory)


def test_nll_command_equals_calc_bpd_loop(ckpt, tmp_path):
    from ddpm.core.data.base import uint8_to_model
    from ddpm.core.diffusion import SeededNoise
    from ddpm.services.generate import seeds_for
    from ddpm.services.loading import load_model, model_datamodule

    summary = evaluate_nll(nll_cfg(ckpt, tmp_path, "max_images=5", "batch_size=2", "seed=3"))
    # the same images, the same noise, one batch of 5 (the command used batches of 2)
    m = load_model(ckpt, None, True)
    dm = model_datamodule(m, None, "test")
    test = dm.splits()["test"]
    x = torch.stack([uint8_to_model(test[i]) for i in range(5)])
    ref = m.diffusion.calc_bpd_loop(m.model_fn(), x, clip_denoised=True,
                                    noise_fn=SeededNoise(seeds_for(3, 0, 5)))
    with np.load(tmp_path / "nll_terms.npz") as z:
        np.testing.assert_allclose(z["total_bpd"], ref["total_bpd"].numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(z["bpd"], ref["vb"].mean(0).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(z["index"], np.arange(5))
        rate, dist = z["rate_bpd"], z["distortion_rmse"]
    assert summary["bpd"] == pytest.approx(float(ref["total_bpd"].mean()), rel=1e-5)
    assert summary["num_images"] == 5 and summary["num_timesteps"] == 10 and summary["split"] == "test"
    # Table 4 columns: full rate at t=0 excludes the decoder term; distortion = RMSE of x0-hat on 0..255
    vb = ref["vb"].mean(0).numpy().astype(np.float64)
    prior = float(ref["prior_bpd"].mean())
    assert rate[0] == pytest.approx(prior + vb[1:].sum(), rel=1e-5)
    assert rate[-1] == pytest.approx(prior, abs=1e-6)
    assert dist[0] == pytest.approx(float(ref["xstart_mse"][:, 0].mean().sqrt()) * 127.5, rel=1e-4)
    assert summary["rate_bpd"] + summary["decoder_bpd"] + 0 == pytest.approx(summary["bpd"], rel=1e-5)
    rows = list(csv.DictReader(open(tmp_path / "nll_terms.csv")))
    assert len(rows) == 10 and {"t", "bpd", "rate_bpd", "distortion_rmse", "reverse_step"} <= set(rows[0])
    saved = json.loads((tmp_path / "nll.json").read_text())
    assert saved["use_ema"] is True and saved["clip_denoised"] is True and len(saved["table4"]) == 10
    from PIL import Image

    assert Image.open(tmp_path / "nll_bits_per_timestep.png").size[0] > 100


@pytest.mark.slow
def test_nll_two_processes_equal_one(ckpt, tmp_path):
    """python -m ddpm.nll trainer.devices=2 (two CPU processes, gloo): the images are split over the
    ranks and gathered on rank 0; every per-image and per-t number equals the one-process run."""
    from conftest import ROOT as root
    from conftest import run_cli

    one = evaluate_nll(nll_cfg(ckpt, tmp_path / "one", "max_images=5", "batch_size=2", "seed=3"))
    two = tmp_path / "two"
    cmd = ["-m", "ddpm.nll", f"ckpt_path={ckpt}", "max_images=5", "batch_size=2", "seed=3", "trainer.devices=2",
           "trainer.accelerator=cpu", "progress=false",
           f"out_dir={two}", f"hydra.run.dir={two}"]
    run_cli(cmd, cwd=root, OMP_NUM_THREADS="1")
    saved = json.loads((two / "nll.json").read_text())
    assert saved["world_size"] == 2 and one["world_size"] == 1
    assert saved["num_images"] == 5 and saved["bpd"] == pytest.approx(one["bpd"], rel=1e-6)
    assert sorted(p.name for p in two.rglob("rank*_of002.npz")) == ["rank000_of002.npz", "rank001_of002.npz"]
    with np.load(tmp_path / "one" / "nll_terms.npz") as a, np.load(two / "nll_terms.npz") as b:
        assert set(a.files) == set(b.files)
        np.testing.assert_array_equal(b["index"], np.arange(5))
        for k in a.files:
            np.testing.assert_allclose(b[k], a[k], rtol=1e-6, atol=1e-7, err_msg=k)


@pytest.mark.slow
def test_trained_tiny_run_bits_per_dim(tmp_path_factory, tmp_path):
    """A short quickstart-like run (T=20, fast EMA): the test-split bound is finite and far below 8 bits/dim
    (8 = a uniform distribution over the 256 levels)."""
    extra = ("optim.ema_decay=0.9", "optim.warmup_steps=10", "model.ch=16", "data.batch_size=32")
    ckpt = tiny_checkpoint(tmp_path_factory, steps=200, timesteps=20, extra=extra)
    s = evaluate_nll(nll_cfg(ckpt, tmp_path, "max_images=16", "batch_size=16", "t_batch=10"))
    # measured 5.42 after 200 steps (an untrained net at T=20 gives ~6.6; uniform over 256 levels is 8)
    assert np.isfinite(s["bpd"]) and s["bpd"] < 6.0, s["bpd"]
    assert s["prior_bpd"] < 0.05 and 0 < s["decoder_bpd"] < s["bpd"]
