"""Shared fixtures: tiny, fast training configs composed from conf/ (nothing downloads, CPU only)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")

ROOT = Path(__file__).resolve().parents[1]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a real ``python train.py`` / ``sample.py`` process started by a test."""
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "WANDB_MODE": "offline", **extra}


def run_cli(args: list[str], cwd: Path, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    """Run ``python *args`` (env: :func:`cli_env` plus ``env``) and require exit status 0."""
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=cli_env(**env), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc

# A network of a few thousand parameters and T=10: every objective trains for a few steps in ~1 s.
TINY_MODEL = [
    "model=unet_small",
    "model.ch=8",
    "model.ch_mult=[1,2]",
    "model.num_res_blocks=1",
    "model.attn_resolutions=[4]",
]


def tiny_overrides(output_dir: Path | str, *, steps: int = 4, timesteps: int = 10, batch: int = 8) -> list[str]:
    """Overrides for a seconds-long CPU run writing into ``output_dir``."""
    return [
        f"paths.output_dir={output_dir}",
        *TINY_MODEL,
        f"diffusion.num_timesteps={timesteps}",
        f"data.batch_size={batch}",
        f"trainer.max_steps={steps}",
        "trainer.accelerator=cpu",
        f"trainer.val_check_interval={steps}",
        "trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=1",
        "trainer.enable_model_summary=false",
        "~callbacks.progress_bar",
        "trainer.enable_progress_bar=false",
        "callbacks.sample_grid.every_n_steps=0",
        "final_samples=4",
        "logger=csv",
    ]


@pytest.fixture
def tiny(tmp_path):
    """``tiny(*extra)`` -> a composed, validated config for a tiny run in ``tmp_path/run``."""
    from ddpm.core.config import compose

    def make(*extra: str, output_dir: Path | None = None, **kw):
        return compose("train", tiny_overrides(output_dir or tmp_path / "run", **kw) + list(extra))

    return make


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tests never read or write the user's ~/.cache/ddpm (reference stats, digits classifier)."""
    if "DDPM_CACHE" not in os.environ:
        os.environ["DDPM_CACHE"] = str(tmp_path_factory.mktemp("ddpm_cache"))
    yield


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is faster and avoids OpenMP thrashing on a shared 2-core machine
    (a module uses it with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
