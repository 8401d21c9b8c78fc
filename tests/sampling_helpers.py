"""A tiny trained checkpoint shared by the sampling / NLL / figures tests (trained once per session)."""

from __future__ import annotations

from pathlib import Path

from conftest import tiny_overrides

_CACHE: dict[str, Path] = {}


def tiny_checkpoint(
    tmp_path_factory, steps: int = 6, timesteps: int = 10, extra: tuple[str, ...] = ()
) -> Path:
    """Train the conftest tiny digits model for a few steps (T=10); returns ``.../checkpoints/last.ckpt``."""
    key = f"{steps}-{timesteps}-{'-'.join(extra)}"
    if key not in _CACHE:
        from ddpm.commands.training import train
        from ddpm.core.config import compose

        out = tmp_path_factory.mktemp(f"tiny_run_{steps}_{timesteps}")
        cfg = compose(
            "train",
            tiny_overrides(out, steps=steps, timesteps=timesteps)
            + ["final_samples=0", "logger=none", "~callbacks.lr_monitor", *extra],
        )
        train(cfg)
        _CACHE[key] = out / "checkpoints" / "last.ckpt"
    return _CACHE[key]


def sample_cfg(ckpt: Path, out_dir: Path, *extra: str):
    from ddpm.core.config import compose

    return compose(
        "sample",
        [f"ckpt_path={ckpt}", f"out_dir={out_dir}", "progress=false", "trainer.accelerator=cpu", *extra],
    )
