"""Smoke tests of the benchmark scripts (bench/): they run end to end on tiny models and print their tables.

No timing is asserted; these only keep the scripts working.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_bench

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow  # over 5 s on 2 cores: the fast tier stays under 3 minutes
def test_bench_cpu_quick_prints_tables(capsys, tmp_path):
    import diffusers  # noqa: F401  (a test extra)

    bench = load_bench("bench_cpu")
    out = tmp_path / "cpu.md"
    bench.main(
        ["--quick", "--skip-e2e", "--skip-memory", "--repeats", "1", "--warmup", "0", "--digits", "4",
         "--t-batches", "1,25", "--variants", "cl,fused_adam", "--out", str(out)]
    )  # fmt: skip
    text = capsys.readouterr().out
    assert "| benchmark | metric | ours | diffusers | ours/diffusers | target |" in text
    for what in ("train b4", "sample b4", "20-step sampling of 4 digits", "ours+cl", "ours+fused_adam"):
        assert what in text, what
    assert "calc_bpd_loop" in text and "| 25 | 2 | 200 |" in text  # T=50 in two forward calls
    assert "same weights, eval outputs differ by at most" in text  # the diffusers twin computes the same net
    assert out.read_text().strip() in text


def test_bench_cpu_profile(capsys):
    import diffusers  # noqa: F401  (a test extra)

    bench = load_bench("bench_cpu")
    bench.main(["--quick", "--sections", "sample", "--skip-memory", "--repeats", "1", "--warmup", "0", "--profile"])
    text = capsys.readouterr().out
    assert "Profile of one step, sample ours" in text and "Profile of one step, sample diffusers" in text
    assert "aten::" in text


def test_bench_cpu_memory_child(monkeypatch):
    """The memory figure is the peak over the steps above the RSS before them: an implementation whose step
    allocates (and touches) 64 MiB and frees it again reads ~64 MiB, although the RSS after the step is back where
    it was (a figure from the RSS after, or from a peak that was not reset, would not); the real one runs."""
    bench = load_bench("bench_cpu")

    class Allocates:
        def step(self):
            block = torch.ones(64 * 2**20 // 4, dtype=torch.float32)  # 64 MiB, every page written
            del block

    monkeypatch.setattr(bench, "make_impl", lambda *a, **k: Allocates())
    big = torch.ones(96 * 2**20 // 4)  # an earlier, higher peak in this process: it must not count
    del big
    res = bench.child_memory("train:ours", quick=True, batch=2, steps=1, threads=1)
    if res["method"] == "VmHWM after clear_refs":
        assert 60 <= res["delta_mb"] <= 80, res
    assert bench._rss_kb() / 1024 < res["rss_before_mb"] + 32  # freed again: the RSS alone would miss it
    monkeypatch.undo()
    res = bench.child_memory("train:ours", quick=True, batch=2, steps=1, threads=1)
    assert res["delta_mb"] >= 0 and res["peak_mb"] >= res["rss_before_mb"] > 0


@pytest.mark.slow  # over 5 s on 2 cores: the fast tier stays under 3 minutes
def test_bench_gpu_runs_on_cpu_without_app_dependencies():
    res = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_gpu.py"), "--device", "cpu", "--quick", "--steps", "1"],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "| training step (fwd+bwd+Adam+EMA) | 4 |" in res.stdout
    assert "| sampling step (fwd, no grad) | 4 |" in res.stdout
    assert "WARNING: bench_gpu.py imported" not in res.stderr  # no hydra/omegaconf/lightning/wandb/diffusers


@pytest.mark.slow  # over 5 s on 2 cores: the fast tier stays under 3 minutes
def test_gpu_suite_rows_are_valid_bench_gpu_runs(tmp_path):
    """bench/gpu_suite.sh is the one prepared run for a lent GPU (minutes of device time): every row must be a
    valid bench_gpu.py command, the limits must fit one 10-minute device call, and the rows that do not compile
    must run (here on the CPU, tiny model) and differ from the default in what they say they switch off."""
    import shlex

    bench = load_bench("bench_gpu")
    rows = [shlex.split(line.split("#")[0])[1:] for line in (ROOT / "bench" / "gpu_suite.sh").read_text().splitlines()
            if line.startswith("row ")]  # fmt: skip
    assert len(rows) >= 7 and rows[0][0] == "bf16" and rows[0][2:] == []
    assert sum(int(r[1]) for r in rows) <= 600
    parser = bench.make_parser()
    for name, _, *args in rows:
        parser.parse_args(args)  # SystemExit on a flag bench_gpu.py does not have
        if any("compile" in a for a in args):
            continue  # inductor needs minutes on a CPU; the flags parsed
        out = tmp_path / f"{name}.md"
        res = bench.main(["--device", "cpu", "--quick", "--steps", "1", "--warmup", "0", "--out", str(out), *args])
        assert res["train_images_per_s"] > 0 and res["sample_images_per_s"] > 0
        text = out.read_text()
        assert ("fused Adam False" in text) == ("--no-fused-adam" in args)
        assert ("channels_last False" in text) == ("--no-channels-last" in args)
        assert ("autocast fp32" in text) == (args[:2] == ["--dtype", "fp32"])


def test_bench_convs_winograd_is_a_convolution_and_the_table_prints(tmp_path):
    import torch.nn.functional as F

    bench = load_bench("bench_convs")
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(3, 5, 6, 10, generator=g, dtype=torch.float64), torch.randn(7, 5, 3, 3, generator=g,
                                                                                   dtype=torch.float64)
    torch.testing.assert_close(bench.winograd_conv3x3(x, w), F.conv2d(x, w, padding=1), rtol=1e-12, atol=1e-12)
    text = bench.main(["--quick", "--out", str(tmp_path / "c.md")])
    assert text.count("| 256->256, ") == 2 and (tmp_path / "c.md").read_text() == text


@pytest.mark.slow  # over 5 s on 2 cores: the fast tier stays under 3 minutes
def test_nets_and_diffusion_import_no_app_dependencies():
    code = (
        "import sys, ddpm.core.nets, ddpm.core.diffusion; "
        "bad = [m for m in ('hydra', 'omegaconf', 'lightning', 'wandb', 'diffusers', 'torch_fidelity') "
        "if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=300)


@pytest.mark.slow  # a real `python train.py` (20 steps) and a 3-second diffusers run
def test_bench_quickstart_quick_prints_our_arm_the_diffusers_arm_and_references(tmp_path):
    """Our arm and the diffusers arm (diffusers is in [test]) with their parameter counts, and the reference rows.
    lucidrains' arms need the optional bench extra, which the tests do not install: they are left out here
    (--skip-lucidrains) and nothing about them is claimed."""
    import diffusers  # noqa: F401  (a test extra)
    from conftest import run_cli

    out = tmp_path / "qs.md"
    run_cli([str(ROOT / "bench" / "bench_quickstart.py"), "--quick", "--skip-lucidrains", "--out", str(out)],
            cwd=tmp_path, OMP_NUM_THREADS="1")  # fmt: skip
    text = out.read_text()
    for row in ("| ours: `python train.py model.num_classes=null` | 701,345 | 20 (256)", "| diffusers recipe, quickstart UNet | 701,345 |",
                "| real held-out digits (n=16)", "| uniform noise (n=16)"):
        assert row in text, row
    assert "lucidrains" not in text.split("Command:")[1].split("\n", 1)[1]  # no arm, no line about one


@pytest.mark.slow  # over 5 s on 2 cores: the fast tier stays under 3 minutes
def test_frontier_digits_study_quick_writes_the_timesteps_and_gaussian_tables(tmp_path):
    bench = load_bench("frontier_digits")
    out = tmp_path / "study.md"
    bench.main(["--study", "--quick", "--out", str(out)])
    text = out.read_text()
    for name in ("logsnr", "uniform_t", "linspace", "quadratic"):
        assert f"| {name} | True | 3 |" in text
    assert "relative to the exact ODE map" in text


@pytest.mark.slow  # over 2 s on 2 cores: the fast tier stays under 3 minutes
def test_table2_gradients_quick_prints_weights_snr_and_minibatch_tables(tmp_path):
    bench = load_bench("table2_gradients")
    out = tmp_path / "g.md"
    bench.main(["--quick", "--out", str(out)])
    text = out.read_text()
    assert "SNR" in text or "signal-to-noise" in text
    assert "| simple | init |" in text


@pytest.mark.slow  # two tiny runs, then 3 x 2 x 20 samples scored by both extractors
def test_cond_guidance_scores_both_extractors_pairs_each_w_and_rescores_kept_samples(tmp_path_factory, tmp_path,
                                                                                   capsys):
    import json

    import numpy as np
    from sampling_helpers import tiny_checkpoint

    uncond = tiny_checkpoint(tmp_path_factory).parents[1]
    cond = tiny_checkpoint(tmp_path_factory, extra=("model.num_classes=10",)).parents[1]
    bench = load_bench("cond_guidance")
    out = tmp_path / "guidance.md"
    argv = ["--uncond", str(uncond), "--cond", str(cond), "--work", str(tmp_path / "work"), "--sets", "2", "--n", "20",
            "--w", "0", "2", "--steps", "5", "--num-boot", "5", "--out", str(out)]
    bench.main(argv)
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [(r["model"], r["w"]) for r in rows] == [("uncond", None), ("cond", 0.0), ("cond", 2.0)]
    for r in rows:
        for prefix in ("digits", "digits_b"):
            assert np.isfinite(r[prefix]["fid"]) and 0 <= r[prefix].get("accuracy", 0.5) <= 1
        if r["w"] is not None:
            assert r["verdict_lower_than_uncond"] in ("reproduced", "the opposite", "extractor-dependent",
                                                      "not established")
            lo, hi = r["digits_b"]["fid_minus_uncond_interval"]
            assert lo <= hi and len(r["digits"]["accuracy_sets"]) == 2
    assert rows[1]["evals_per_image"] == 5 and rows[2]["evals_per_image"] == 10
    text = out.read_text()
    assert "| cond | 2 | 3 |" in text and "accuracy B" in text  # diffusers' guidance_scale = 1 + w
    kept = sorted(p.name for p in (tmp_path / "work" / "samples").iterdir())
    assert len(kept) == 6 and "cond_w2.0_set1_n20.npz" in kept
    with np.load(tmp_path / "work" / "samples" / "cond_w2.0_set1_n20.npz") as z:
        assert z["arr_0"].shape == (20, 1, 8, 8) and list(z["arr_1"][:11]) == [*range(10), 0]

    # a rerun rescores the kept samples: nothing sampled, the same figures
    capsys.readouterr()
    bench.main(argv)
    again = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert all(r["sample_seconds"] == 0.0 for r in again)
    assert [r["digits_b"]["fid"] for r in again] == [r["digits_b"]["fid"] for r in rows]


@pytest.mark.slow  # two tiny checkpoints: over 2 s on 2 cores
def test_quickstart_pooled_draws_a_conditional_model_with_balanced_labels(tmp_path_factory, monkeypatch):
    """The quickstart is class-conditional: its draws get sample.py's balanced labels (before, no labels at all,
    which samples the null token); an unconditional model's get none."""
    from sampling_helpers import tiny_checkpoint

    import ddpm.services.generate as gen

    bench = load_bench("quickstart_pooled")
    seen = []
    real = gen.generate
    monkeypatch.setattr(gen, "generate", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    cond = tiny_checkpoint(tmp_path_factory, extra=("model.num_classes=10",)).parents[1]
    assert bench.draws(str(cond), 2, 100, n=13, steps=5).shape == (2, 13, 1, 8, 8)
    assert [kw["labels"].tolist() for kw in seen] == [[i % 10 for i in range(13)]] * 2
    assert all(kw["num_classes"] == 10 and kw["guidance_scale"] == 0.0 for kw in seen)
    seen.clear()
    bench.draws(str(tiny_checkpoint(tmp_path_factory).parents[1]), 1, 100, n=3, steps=5)
    assert "labels" not in seen[0]


@pytest.mark.slow  # over 5 s on 2 cores: the fast tier stays under 3 minutes
def test_quickstart_pooled_pairs_per_set_and_pooled_groups_under_both_extractors(tmp_path_factory, tmp_path):
    import numpy as np
    from sampling_helpers import tiny_checkpoint

    from ddpm.core.data.digits import digits_split

    bench = load_bench("quickstart_pooled")
    real = digits_split("train")[0][:360].reshape(6, 60, 1, 8, 8)
    rng = np.random.default_rng(0)
    noisy = torch.from_numpy(np.clip(real.numpy() + rng.normal(0, 60, real.shape), 0, 255).round().astype(np.uint8))
    res = bench.compare(real, noisy, group=2)  # real digits against noisy ones: lower on every set and group
    assert res["per_set"]["verdict"] == res["pooled"]["verdict"] == "reproduced"
    for prefix in ("digits", "digits_b"):
        assert res["per_set"][prefix]["lower"] == 6 and res["pooled"][prefix]["of"] == 3
        assert res["pooled"][prefix]["new"][0] < res["per_set"][prefix]["new"][0]  # 120 images: less FID bias
    assert bench.compare(noisy, real, group=2)["pooled"]["verdict"] == "the opposite"

    run = tiny_checkpoint(tmp_path_factory).parents[1]
    out = tmp_path / "pooled.md"
    bench.main([str(run), str(run), "--sets", "4", "--group", "2", "--n", "30", "--steps", "5", "--out", str(out)])
    text = out.read_text()  # one model against itself: every difference is 0
    assert "| pooled | B |" in text and "+0.00 [+0.00, +0.00] | 0 of 2 |" in text
    assert 'per set **not established**, pooled **not established**' in text
    with pytest.raises(SystemExit):
        bench.main([str(run), str(run), "--sets", "3", "--group", "2"])
