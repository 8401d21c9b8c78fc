"""sample.py end to end on a tiny digits checkpoint (T=10): exact N, batch/device independence, resume,
provenance, bad input, FID/IS through the command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_python
from sampling_helpers import sample_cfg, tiny_checkpoint

from ddpm.commands.sampling import sample
from ddpm.core.config import SamplerConfig
from ddpm.core.data import model_to_uint8

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def reference_run(ckpt, tmp_path_factory):
    """N=7 (odd), batch 2, shards of 3: the run the other tests compare against."""
    out = tmp_path_factory.mktemp("ref_run")
    cfg = sample_cfg(ckpt, out, "num_samples=7", "batch_size=2", "shard_size=3", "save_images=true")
    metrics = sample(cfg)
    return out, metrics


def _arr(path):
    with np.load(path, allow_pickle=False) as z:
        return z["arr_0"]


def test_outputs_exact_n_and_provenance(reference_run, ckpt):
    out, metrics = reference_run
    x = _arr(out / "samples.npz")
    assert x.shape == (7, 8, 8, 3) and x.dtype == np.uint8  # 1-channel digits repeated to 3 channels
    assert (x[..., 0] == x[..., 2]).all()
    assert (out / "samples.png").is_file()
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{i:06d}.png" for i in range(7)]
    assert sorted(p.name for p in (out / "shards").glob("shard_*.npz")) == [
        "shard_00000000_00000003.npz", "shard_00000003_00000006.npz", "shard_00000006_00000007.npz"
    ]
    m = json.loads((out / "metrics.json").read_text())
    import hashlib

    assert m["model_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert m["use_ema"] is True and m["num_samples"] == 7 and m["seed"] == 0 and m["world_size"] == 1
    assert m["sampler"]["name"] == "ancestral" and m["sampler"]["steps"] == 10
    assert m["newly_sampled"] == 7 and m["images_per_second"] > 0
    assert {"torch", "lightning", "python"} <= set(m["versions"]) and "time" in m
    assert metrics["num_samples"] == 7


def test_batch_size_does_not_change_images(reference_run, ckpt, tmp_path):
    out, _ = reference_run
    sample(sample_cfg(ckpt, tmp_path, "num_samples=7", "batch_size=5", "shard_size=4", "grid_images=0"))
    np.testing.assert_array_equal(_arr(tmp_path / "samples.npz"), _arr(out / "samples.npz"))


def test_matches_generate_and_seed_rule(reference_run, ckpt):
    """Image i is generate() with seeds_for(seed, i, i+1), the same service as the callbacks."""
    from ddpm.core.data import model_to_uint8 as to_uint8
    from ddpm.services.generate import generate, seeds_for
    from ddpm.services.loading import load_model

    out, _ = reference_run
    m = load_model(ckpt, None, True)
    x = to_uint8(generate(m.model_fn(), m.diffusion, seeds_for(0, 5, 7), m.image_shape))
    np.testing.assert_array_equal(_arr(out / "samples.npz")[5:7, ..., 0], x[:, 0].numpy())


@pytest.mark.slow  # over 2 s on 2 cores: the fast tier stays under 3 minutes
def test_resume_after_lost_shard(reference_run, ckpt, tmp_path):
    import shutil

    out, _ = reference_run
    shutil.copytree(out / "shards", tmp_path / "shards")
    (tmp_path / "shards" / "shard_00000003_00000006.npz").unlink()  # the interrupted shard
    m = sample(sample_cfg(ckpt, tmp_path, "num_samples=7", "batch_size=3", "shard_size=3"))
    assert m["newly_sampled"] == 3
    np.testing.assert_array_equal(_arr(tmp_path / "samples.npz"), _arr(out / "samples.npz"))
    # other settings in the same out_dir are refused, not mixed in
    with pytest.raises(ValueError, match="other settings"):
        sample(sample_cfg(ckpt, tmp_path, "num_samples=7", "shard_size=3", "seed=1"))
    # nor other arithmetic: bf16 or a compiled network rounds differently from the eager fp32 shards
    with pytest.raises(ValueError, match="precision"):
        sample(sample_cfg(ckpt, tmp_path, "num_samples=7", "shard_size=3", "trainer.precision=bf16-mixed"))
    with pytest.raises(ValueError, match="compile"):
        sample(sample_cfg(ckpt, tmp_path, "num_samples=7", "shard_size=3", "compile=true",
                          "compile_backend=aot_eager"))
    # a signature.json that lacks a key is not guessed at: its shards are refused like other settings'
    import json

    sig = tmp_path / "shards" / "signature.json"
    sig.write_text(json.dumps({k: v for k, v in json.loads(sig.read_text()).items() if k != "precision"}))
    with pytest.raises(ValueError, match="precision"):
        sample(sample_cfg(ckpt, tmp_path, "num_samples=7", "shard_size=3"))


@pytest.mark.slow
def test_kill_9_halfway_then_rerun_gives_the_uninterrupted_npz(ckpt, tmp_path):
    """A real `python sample.py` killed with SIGKILL after its first shards: started again with the same out_dir
    it keeps the finished shards, samples the rest, and writes exactly the npz of an uninterrupted run."""
    import signal
    import time

    killed = tmp_path / "killed"
    args = [sys.executable, os.path.join(ROOT, "sample.py"), f"ckpt_path={ckpt}", "num_samples=400",
            "shard_size=20", "trainer.accelerator=cpu", "progress=false", f"out_dir={killed}",
            f"hydra.run.dir={killed}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([*args, "batch_size=1"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while len(list((killed / "shards").glob("shard_*.npz"))) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    kept = sorted(p.name for p in (killed / "shards").glob("shard_*.npz"))
    assert 2 <= len(kept) < 20 and not (killed / "samples.npz").exists()

    r = run_python([*args[1:], "batch_size=50"], ROOT, 600, OMP_NUM_THREADS="1")
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((killed / "metrics.json").read_text())
    assert m["newly_sampled"] == 400 - 20 * len(kept)
    straight = sample(sample_cfg(ckpt, tmp_path / "straight", "num_samples=400", "shard_size=20", "batch_size=50"))
    assert straight["newly_sampled"] == 400
    np.testing.assert_array_equal(_arr(killed / "samples.npz"), _arr(tmp_path / "straight" / "samples.npz"))


@pytest.mark.slow  # over 5 s on 2 cores: the fast tier stays under 3 minutes
def test_compile_option_samples_the_same_images(reference_run, ckpt, tmp_path):
    """compile=true (opt-in) runs the network through torch.compile; aot_eager (no C++ compiler needed) replays
    the same aten ops, so the images are those of the eager reference run."""
    import torch._dynamo

    out, _ = reference_run
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    sample(sample_cfg(ckpt, tmp_path, "num_samples=7", "batch_size=2", "shard_size=3", "compile=true",
                      "compile_backend=aot_eager"))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the network did go through dynamo
    np.testing.assert_array_equal(_arr(tmp_path / "samples.npz"), _arr(out / "samples.npz"))


@pytest.mark.slow  # over 2 s on 2 cores: the fast tier stays under 3 minutes
def test_samplers_and_raw_weights(reference_run, ckpt, tmp_path):
    out, _ = reference_run
    ref = _arr(out / "samples.npz")
    m = sample(sample_cfg(ckpt, tmp_path / "ddim", "num_samples=3", "sampler=ddim", "sampler.steps=5",
                          "sampler.eta=0.0"))
    assert m["sampler"] == {"name": "ddim", "steps": 5, "eta": 0.0, "clip_denoised": True, "var_type": None}
    assert m["sampler_label"] == "ddim5"
    assert not np.array_equal(_arr(tmp_path / "ddim" / "samples.npz"), ref[:3])
    m = sample(sample_cfg(ckpt, tmp_path / "resp", "num_samples=3", "sampler=respaced", "sampler.steps=5"))
    assert m["sampler"]["steps"] == 5 and m["sampler"]["name"] == "respaced"
    # use_ema=false on a copy of the checkpoint whose EMA weights are far from the raw ones (after 6 steps they
    # are within 6e-4 of each other: the same uint8 images either way)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    gen = torch.Generator().manual_seed(0)
    for key, value in state["state_dict"].items():
        if key.startswith("ema.") and value.is_floating_point():
            state["state_dict"][key] = value + 0.3 * torch.randn(value.shape, generator=gen)
    far = tmp_path / "far_ema.ckpt"
    torch.save(state, far)
    m = sample(sample_cfg(far, tmp_path / "raw", "num_samples=3", "use_ema=false", "sampler.clip_denoised=false"))
    assert m["use_ema"] is False and m["sampler"]["clip_denoised"] is False

    # the images themselves, drawn again straight from the math layer (no sample.py, no generate): the run's
    # per-image seeds, the respaced / DDIM chains built by hand, the raw (non-EMA) network, no clipping
    from ddpm.core.diffusion import SAMPLERS, SeededNoise, respace, space_timesteps
    from ddpm.core.seeds import image_seeds
    from ddpm.services.loading import load_model

    def by_hand(path, use_ema: bool, draw) -> np.ndarray:
        loaded = load_model(str(path), None, use_ema)
        noise = SeededNoise(image_seeds(0, 0, 3))
        with torch.no_grad():
            x = draw(loaded.model_fn(), loaded.diffusion, (3, *loaded.image_shape), noise)
        return model_to_uint8(x).numpy()[:, 0]

    def unclipped(f, d, shape, noise):
        return SAMPLERS["ancestral"].sample(d, f, shape, noise=noise, clip_denoised=False)

    expected = {
        "ddim": by_hand(ckpt, True, lambda f, d, shape, noise: SAMPLERS["ddim"].sample(
            respace(d, space_timesteps(10, "ddim5")), f, shape, steps=5, eta=0.0, noise=noise)),
        "resp": by_hand(ckpt, True, lambda f, d, shape, noise: SAMPLERS["ancestral"].sample(
            respace(d, space_timesteps(10, 5)), f, shape, noise=noise)),
        "raw": by_hand(far, False, unclipped),
    }  # fmt: skip
    for name, images in expected.items():
        np.testing.assert_array_equal(_arr(tmp_path / name / "samples.npz")[..., 0], images, err_msg=name)
    assert not np.array_equal(expected["resp"], ref[:3, ..., 0])  # each option changes the images
    assert not np.array_equal(expected["raw"], by_hand(far, True, unclipped))  # the EMA copy would
    assert not np.array_equal(by_hand(ckpt, False, unclipped), ref[:3, ..., 0])  # and so would clipping
    with pytest.raises(ValueError, match="sampler=respaced"):
        sample(sample_cfg(ckpt, tmp_path / "bad", "num_samples=3", "sampler.steps=5"))


def test_the_stochastic_solvers_through_sample_py(reference_run, ckpt, tmp_path):
    """sampler=dpm_solver_sde and sampler=restart as a user writes them (T=10 here, so the restart interval is
    given in this model's code indices); metrics.json records every setting; the same command gives the same
    images; the restart interval is checked against the model's T before any image is drawn."""
    from ddpm.services.generate import generate, seeds_for
    from ddpm.services.loading import load_model

    restart = ("sampler=restart", "sampler.steps=6", "sampler.restart_t_min=2", "sampler.restart_t_max=7")
    m = sample(sample_cfg(ckpt, tmp_path / "sde", "num_samples=3", "sampler=dpm_solver_sde", "sampler.steps=5"))
    assert m["sampler"] == {"name": "dpm_solver_sde", "steps": 5, "clip_denoised": True, "var_type": None}
    assert m["sampler_label"] == "dpm_solver_sde5"
    m = sample(sample_cfg(ckpt, tmp_path / "restart", "num_samples=3", *restart))
    assert m["sampler"] == {"name": "restart", "steps": 6, "clip_denoised": True, "var_type": None,
                            "restart_t_min": 2, "restart_t_max": 7, "restart_k": 2, "restart_share": 0.4}
    loaded = load_model(str(ckpt), None, True)
    x = generate(loaded.model_fn(), loaded.diffusion, seeds_for(0, 0, 3), loaded.image_shape,
                 SamplerConfig.from_node(m["sampler"]))
    np.testing.assert_array_equal(_arr(tmp_path / "restart" / "samples.npz")[..., 0],
                                  model_to_uint8(x).numpy()[:, 0])
    with pytest.raises(ValueError, match=r"restart_t_max < T=10"):
        sample(sample_cfg(ckpt, tmp_path / "bad", "num_samples=3", "sampler=restart", "sampler.steps=6"))
    assert not (tmp_path / "bad" / "samples.npz").exists()


def test_bad_input(ckpt, tmp_path):
    with pytest.raises(ValueError, match="num_samples=0 is not valid: expected an integer >= 1"):
        sample(sample_cfg(ckpt, tmp_path, "num_samples=0"))
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match="not writable"):
        sample(sample_cfg(ckpt, blocker / "sub", "num_samples=2"))
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        sample(sample_cfg(tmp_path / "missing.ckpt", tmp_path / "o", "num_samples=2"))
    # steps above T: said as such, not the full chain's advice to respace to as many steps
    with pytest.raises(ValueError, match=r"^sampler.steps=50 exceeds the model's T=10"):
        sample(sample_cfg(ckpt, tmp_path / "o2", "num_samples=2", "sampler=ancestral", "sampler.steps=50"))


def test_a_runs_checkpoints_folder_names_its_last_checkpoint(ckpt, tmp_path):
    from ddpm.services.loading import resolve_checkpoint

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(Path(ckpt).read_bytes())
    assert resolve_checkpoint(run) == resolve_checkpoint(run / "checkpoints") == run / "checkpoints" / "last.ckpt"
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        resolve_checkpoint(tmp_path)  # a folder with neither


@pytest.mark.slow  # over 2 s on 2 cores: the fast tier stays under 3 minutes
def test_fid_through_sample_py(reference_run, ckpt, tmp_path):
    """FID of a set against its own statistics is ~0 (computed by sample.py, the ddpm and torch-fidelity
    paths agree), and grows as the images are corrupted."""
    import shutil

    from ddpm.services.metrics.extractors import get_extractor
    from ddpm.services.metrics.fid import compute_fid_is
    from ddpm.services.metrics.refstats import build_ref_stats

    out, _ = reference_run
    # more images: extend the reference run's shards to N=24 (resume samples only the new ones)
    shutil.copytree(out / "shards", tmp_path / "shards")
    sample(sample_cfg(ckpt, tmp_path, "num_samples=24", "batch_size=20", "shard_size=3"))
    imgs = _arr(tmp_path / "samples.npz")
    ext = get_extractor("digits")
    ref = build_ref_stats(imgs, ext, id="self")
    ref_path = tmp_path / "self_stats.npz"
    ref.save(ref_path)
    with pytest.warns(UserWarning, match="not comparable"):
        m = sample(sample_cfg(ckpt, tmp_path, "num_samples=24", "batch_size=20", "shard_size=3",
                              "compute_fid=true", "fid.feature_extractor=digits", f"fid.ref_stats={ref_path}",
                              "fid_backend=ddpm"))
    assert m["newly_sampled"] == 0
    assert m["fid_24"] == pytest.approx(0.0, abs=1e-6) and m["is_24"] > 1.0
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["fid_24"] == m["fid_24"] and saved["fid_extractor"] == "ddpm-digits"
    # every digits score names both extractors (A: digits/..., B: digits_b/...), against the train split
    from ddpm.services.metrics.digits_classifier import DigitsExtractorB
    from ddpm.services.metrics.digits_score import digits_quality

    q_b = digits_quality(imgs[..., 0], extractor=DigitsExtractorB())
    for key in ("fid", "kid", "class_kl", "fid_classmix", "kid_classmix"):
        assert saved[f"digits_b/{key}"] == pytest.approx(q_b[key], rel=1e-9) and f"digits/{key}" in saved
    assert saved["digits/fid"] == pytest.approx(digits_quality(imgs[..., 0])["fid"], rel=1e-9)
    g = torch.Generator().manual_seed(0)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float()
    fids = []
    for s in (0.0, 20.0, 60.0):
        y = (x + s * torch.randn(x.shape, generator=g)).clamp(0, 255).round().to(torch.uint8)
        fids.append(compute_fid_is(y, ref, ext)["fid_24"])
    assert fids[0] == pytest.approx(0.0, abs=1e-6) and fids[0] < fids[1] < fids[2]


def test_fid_reference_from_data_and_torch_fidelity(reference_run, ckpt, tmp_path):
    """Default reference: the checkpoint's training split, cached under the canonical name; torch-fidelity
    gives the same FID on the same images."""
    import shutil

    out, _ = reference_run
    shutil.copytree(out / "shards", tmp_path / "shards")
    m = sample(sample_cfg(ckpt, tmp_path, "num_samples=7", "shard_size=3", "compute_fid=true",
                          "fid.feature_extractor=digits", "fid_backend=both", "fid.is_splits=2"))
    assert m["ref_id"].startswith("digits-8-train-ddpm-digits-n1437")
    assert (Path(os.environ["DDPM_CACHE"]) / "refstats" / f"{m['ref_id']}.npz").is_file()
    assert m["fid_7"] == pytest.approx(m["fid_7_torch_fidelity"], rel=1e-3, abs=1e-3)
    assert m["is_7"] == pytest.approx(m["is_7_torch_fidelity"], rel=1e-3)


@pytest.mark.slow
def test_two_processes_equal_one(reference_run, ckpt, tmp_path):
    """python sample.py ... trainer.devices=2 (two CPU processes, gloo): the same npz as one process."""
    out, _ = reference_run
    cmd = [os.path.join(ROOT, "sample.py"), f"ckpt_path={ckpt}", "num_samples=7",
           "batch_size=3", "shard_size=2", "trainer.devices=2", "trainer.accelerator=cpu", "progress=false",
           f"out_dir={tmp_path}", f"hydra.run.dir={tmp_path}"]
    r = run_python(cmd, ROOT, 600, OMP_NUM_THREADS="1")
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["num_samples"] == 7
    np.testing.assert_array_equal(_arr(tmp_path / "samples.npz"), _arr(out / "samples.npz"))


def test_pretrained_converted_weights(tmp_path):
    """pretrained=FILE from `python -m ddpm.convert` (safetensors + metadata): no model flags needed."""
    from ddpm.core.nets import UNet
    from ddpm.services.interop import save_converted

    torch.manual_seed(0)
    unet = UNet(in_channels=3, out_channels=3, resolution=8, ch=8, ch_mult=[1, 2], num_res_blocks=1,
                attn_resolutions=[4], dropout=0.0)
    info = {"schedule": "linear", "num_timesteps": 10, "mean_type": "eps", "var_type": "fixed_small",
            "clip_denoised": True, "source": "unit-test"}
    path = save_converted(unet, info, tmp_path / "w.safetensors")
    from ddpm.core.config import compose

    cfg = compose("sample", [f"pretrained={path}", f"out_dir={tmp_path / 'o'}", "num_samples=3",
                             "progress=false", "trainer.accelerator=cpu"])
    m = sample(cfg)
    assert m["source"] == "pretrained" and m["num_timesteps"] == 10 and m["image_shape"] == [3, 8, 8]
    images = _arr(tmp_path / "o" / "samples.npz")
    assert images.shape == (3, 8, 8, 3)
    # the images are those of the network that was saved, in memory, with the schedule and variance the file
    # names, drawn straight from the math layer with the run's per-image seeds (wrong weights, a wrong schedule
    # or variance, or random init would change them)
    from ddpm.core.diffusion import SAMPLERS, GaussianDiffusion, SeededNoise
    from ddpm.core.seeds import image_seeds

    diffusion = GaussianDiffusion.from_config("linear", 10, "eps", "fixed_small", "mse")
    with torch.no_grad():
        x = SAMPLERS["ancestral"].sample(diffusion, unet.eval(), (3, 3, 8, 8), noise=SeededNoise(image_seeds(0, 0, 3)))
    np.testing.assert_array_equal(images, model_to_uint8(x).permute(0, 2, 3, 1).numpy())
    large = GaussianDiffusion.from_config("linear", 10, "eps", "fixed_large", "mse")
    with torch.no_grad():
        y = SAMPLERS["ancestral"].sample(large, unet.eval(), (3, 3, 8, 8), noise=SeededNoise(image_seeds(0, 0, 3)))
    assert not np.array_equal(images, model_to_uint8(y).permute(0, 2, 3, 1).numpy())  # the check can tell
    with pytest.raises(ValueError, match="exactly one"):
        sample(compose("sample", [f"out_dir={tmp_path / 'x'}", "num_samples=1"]))


def test_build_refstats_command(tmp_path):
    """python -m ddpm.build_refstats data=digits split=train feature_extractor=digits out_dir=..."""
    from ddpm.commands.build_refstats import build_refstats
    from ddpm.core.config import compose
    from ddpm.services.metrics.refstats import RefStats

    cfg = compose("build_refstats", ["data=digits", "split=test", "feature_extractor=digits", f"out_dir={tmp_path}"])
    path = build_refstats(cfg)
    assert path.name == "digits-8-test-ddpm-digits-n181.npz"
    s = RefStats.load(path, extractor="ddpm-digits")
    assert s.n == 181 and s.mu.shape == (64,)
    assert build_refstats(cfg) == path
