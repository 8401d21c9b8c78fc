"""``ddpm.services.loading`` reading a training checkpoint: what it needs is in the checkpoint, or one clean error."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from ddpm.core.io import CheckpointError
from ddpm.core.module import DiffusionModule
from ddpm.services.loading import load_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_checkpoint_without_a_constructor_argument_is_one_clean_error(tiny, tmp_path):
    """No placeholder fills in a missing setting: the checkpoint loads as written, or the error names the keys."""
    cfg = tiny()
    parts = {k: OmegaConf.to_container(cfg[k], resolve=True, enum_to_str=True)
             for k in ("model", "diffusion", "objective", "optim")}
    module = DiffusionModule(**parts, image_shape=(1, 8, 8), seed=5, nan_policy="stop", nan_max_consecutive=1)
    hp = dict(module.hparams)
    torch.save({"hyper_parameters": hp, "state_dict": module.state_dict()}, tmp_path / "good.ckpt")
    loaded = load_model(ckpt_path=tmp_path / "good.ckpt", use_ema=False)
    assert all(torch.equal(a, b) for a, b in zip(loaded.net.state_dict().values(), module.net.state_dict().values()))

    for key in ("seed", "nan_policy"):
        torch.save({"hyper_parameters": {k: v for k, v in hp.items() if k != key}, "state_dict": module.state_dict(),
                    "ddpm_version": "0.0.9"}, tmp_path / "old.ckpt")
        with pytest.raises(CheckpointError, match=rf"lacks the hyper_parameters \['{key}'\] .*ddpm 0\.0\.9"):
            load_model(ckpt_path=tmp_path / "old.ckpt")
