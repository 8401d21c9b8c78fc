"""The quickstart itself: ``python train.py`` with no arguments, exactly as the README says, must leave a
checkpoint, a sample grid and metrics, and its samples must look like digits: the digits-classifier FID of
its samples must sit far below that of noise (and near that of real held-out digits)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_default_train_py_makes_digits(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "samples.png").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())

    from ddpm.metrics.digits_score import digits_reference_scores

    ref = digits_reference_scores()
    noise_fid = min(ref["uniform_noise"]["fid"], ref["blurred_noise"]["fid"])
    print(f"quickstart digits FID {metrics['digits/fid']:.2f} (real held-out {ref['real_test']['fid']:.2f}, "
          f"noise {noise_fid:.1f}); confidence {metrics['digits/confidence']:.3f}")
    # Far from noise: a model whose samples fall to the level of noise fails here.
    assert metrics["digits/fid"] < 0.2 * noise_fid
    assert metrics["digits/confidence"] > ref["uniform_noise"]["confidence"]
    # Several classes, not one collapsed digit: class entropy of the predictions (max log2(10) = 3.32 bits).
    assert metrics["digits/class_entropy"] > 2.5

    # The quickstart's NLL bound on held-out digits, all 1000 terms + prior + decoder (measured: 4.83 bits/dim
    # on 128 test digits): finite and far below the 8 bits/dim of a uniform code.
    nll_dir = tmp_path / "nll"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "sample.py"), f"ckpt_path={run_dir}", "nll=true", "nll_max_images=32",
         "nll_t_batch=100", "nll_batch_size=32", f"out_dir={nll_dir}", f"hydra.run.dir={nll_dir}", "progress=false"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    nll = json.loads((nll_dir / "nll.json").read_text())
    print(f"quickstart NLL <= {nll['bpd']:.3f} bits/dim on {nll['num_images']} test digits")
    assert nll["num_images"] == 32 and nll["num_timesteps"] == 1000
    assert 0 < nll["bpd"] < 6.0
