"""The FID/IS training callback: key naming, and the same numbers as sample.py on the same images."""

from __future__ import annotations

import pytest
from conftest import tiny_overrides
from sampling_helpers import sample_cfg

from ddpm.commands.sampling import sample
from ddpm.services.callbacks.fid import FIDCallback


def _fid_callback(*overrides: str) -> FIDCallback:
    """The callback of ``callbacks=fid`` (its settings from conf/callbacks/fid.yaml) with ``overrides``."""
    from hydra.utils import instantiate

    from ddpm.core.config import compose

    cfg = compose("train", ["paths.output_dir=/unused", "callbacks=fid", *overrides])
    return instantiate(cfg.callbacks.fid)


def test_callback_key_names():
    cb = _fid_callback()
    assert cb.key("fid", 1000) == "val/fid_5k_ddim100" and cb.key("is", 1000) == "val/is_5k_ddim100"
    full = _fid_callback("callbacks.fid.num_samples=50000", "sampler@callbacks.fid.sampler=ancestral")
    assert full.key("fid", 1000) == "val/fid_50k"
    part = _fid_callback("callbacks.fid.num_samples=2500", "sampler@callbacks.fid.sampler=respaced",
                         "callbacks.fid.sampler.steps=250")
    assert part.key("fid", 1000) == "val/fid_2500_respaced250"
    from hydra.errors import InstantiationException

    with pytest.raises(InstantiationException, match="num_samples must be >= 2"):
        _fid_callback("callbacks.fid.num_samples=1")


@pytest.mark.slow  # over 5 s on 2 cores: the fast tier stays under 3 minutes
def test_callback_agrees_with_sample_py(tmp_path):
    """Train a tiny model with callbacks=fid (FID at the last step, raw weights), then sample.py on the final
    checkpoint with the same seed/N/sampler: the same images, hence the same FID and IS."""
    from ddpm.commands.training import train
    from ddpm.core.config import compose

    steps, n = 4, 12
    cfg = compose(
        "train",
        tiny_overrides(tmp_path / "run", steps=steps)
        + ["final_samples=0", "logger=none", "~callbacks.lr_monitor", "callbacks=fid",
           f"callbacks.fid.every_n_steps={steps}", f"callbacks.fid.num_samples={n}",
           "callbacks.fid.batch_size=5", "callbacks.fid.sampler.steps=5",
           "callbacks.fid.metric.feature_extractor=digits", "callbacks.fid.use_ema=false",
           "callbacks.fid.metric.is_splits=3"],
    )
    metrics, objs = train(cfg)
    cb = next(c for c in objs["trainer"].callbacks if isinstance(c, FIDCallback))
    res = cb.last_result
    assert res is not None and "val/fid_12_ddim5" in res and "val/is_12_ddim5" in res
    assert metrics["val/fid_12_ddim5"] == pytest.approx(res["val/fid_12_ddim5"])
    assert int(cb.metric.count) == 0  # reset after compute
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    m = sample(sample_cfg(ckpt, tmp_path / "s", f"num_samples={n}", "batch_size=7", "sampler=ddim",
                          "sampler.steps=5", "use_ema=false", "compute_fid=true", "fid.feature_extractor=digits",
                          "fid.is_splits=3"))
    assert m["fid_12_ddim5"] == pytest.approx(res["val/fid_12_ddim5"], rel=1e-6, abs=1e-6)
    assert m["is_12_ddim5"] == pytest.approx(res["val/is_12_ddim5"], rel=1e-6)
    assert m["ref_id"] == res["ref_id"]


@pytest.mark.slow
def test_callback_under_two_ddp_processes_equals_sample_py(tmp_path):
    """callbacks=fid in a 2-process gloo DDP run (`python train.py trainer=ddp trainer.devices=2`): no hang, each
    rank samples its share of an odd N, and the gathered images give the FID/IS of one-process sample.py."""
    import json

    from conftest import ROOT as root
    from conftest import run_cli

    steps, n = 4, 11
    out = tmp_path / "ddp"
    args = [str(root / "train.py"), *tiny_overrides(out, steps=steps), "trainer=ddp", "trainer.devices=2",
            "final_samples=0", "~callbacks.lr_monitor", "callbacks=fid", f"callbacks.fid.every_n_steps={steps}",
            f"callbacks.fid.num_samples={n}", "callbacks.fid.batch_size=4",
            "callbacks.fid.sampler.steps=5", "callbacks.fid.metric.feature_extractor=digits",
            "callbacks.fid.use_ema=false", "callbacks.fid.metric.is_splits=3", f"hydra.run.dir={out}"]
    run_cli(args, cwd=tmp_path, OMP_NUM_THREADS="1")
    metrics = json.loads((out / "metrics.json").read_text())
    key = f"val/fid_{n}_ddim5"
    assert key in metrics and f"val/is_{n}_ddim5" in metrics
    m = sample(sample_cfg(out / "checkpoints" / "last.ckpt", tmp_path / "s", f"num_samples={n}", "batch_size=7",
                          "sampler=ddim", "sampler.steps=5", "use_ema=false", "compute_fid=true",
                          "fid.feature_extractor=digits", "fid.is_splits=3"))
    assert m[f"fid_{n}_ddim5"] == pytest.approx(metrics[key], rel=1e-5, abs=1e-5)
    assert m[f"is_{n}_ddim5"] == pytest.approx(metrics[f"val/is_{n}_ddim5"], rel=1e-5)
