"""The diffusers -> ddpm UNet converter, checked against a randomly initialised diffusers UNet2DModel.

No network: the diffusers models are built locally with the published configs and random weights.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
from pathlib import Path

import diffusers  # noqa: E402  (a test extra: pip install -e .[test])
import pytest
import torch
from conftest import torch_threads

import ddpm.commands.convert
import ddpm.services.interop
from ddpm.commands.convert import main
from ddpm.core.nets import UNet
from ddpm.services.interop import (
    PRETRAINED,
    convert_diffusers_state_dict,
    load_converted,
    load_diffusers_unet,
    read_weights,
    resolve_pretrained,
    save_converted,
    unet_kwargs_from_diffusers_config,
)

CIFAR10_CONFIG = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    layers_per_block=2,
    attention_head_dim=None,
    norm_num_groups=32,
    norm_eps=1e-6,
    act_fn="silu",
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
    center_input_sample=False,
    time_embedding_type="positional",
    mid_block_scale_factor=1,
    resnet_time_scale_shift="default",
)
CONFIG_256 = dict(
    CIFAR10_CONFIG,
    sample_size=256,
    block_out_channels=(128, 128, 256, 256, 512, 512),
    down_block_types=(
        "DownBlock2D",
        "DownBlock2D",
        "DownBlock2D",
        "DownBlock2D",
        "AttnDownBlock2D",
        "DownBlock2D",
    ),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
)


pytestmark = pytest.mark.usefixtures("one_thread")


@torch.no_grad()
def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Random values in every tensor (including diffusers' zero-initialised ones), activations kept O(1)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            fan_in = p[0].numel()
            p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
        elif "norm" in name and name.endswith("weight"):
            p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(0.2 * torch.randn(p.shape, generator=g))


def _diffusers_unet(config: dict, seed: int = 0):
    torch.manual_seed(seed)
    model = diffusers.UNet2DModel(**config)
    _randomise(model, seed)
    return model.eval()


@torch.no_grad()
def _assert_same_outputs(ours: UNet, theirs, batch: int, size: int, timesteps: list[list[int]]) -> None:
    ours.eval()
    g = torch.Generator().manual_seed(1)
    for ts in timesteps:
        x = torch.randn(batch, 3, size, size, generator=g)
        t = torch.tensor(ts)
        want = theirs(x, t).sample
        got = ours(x, t)
        assert got.shape == want.shape
        err = (got - want).abs().max().item()
        assert err < 1e-5, f"max abs diff {err} at t={ts} (output scale {want.abs().max().item():.3g})"


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """A random google/ddpm-cifar10-32-shaped diffusers model saved as safetensors and as .bin."""
    root = tmp_path_factory.mktemp("cifar")
    model = _diffusers_unet(CIFAR10_CONFIG)
    model.save_pretrained(root / "st", safe_serialization=True)
    model.save_pretrained(root / "bin", safe_serialization=False)
    return model, root


@pytest.fixture(scope="module")
def converted(cifar):
    """Our UNet loaded from the safetensors folder (its outputs are checked against diffusers once)."""
    return load_diffusers_unet(cifar[1] / "st")


def _assert_same_weights(a: UNet, b: UNet) -> None:
    assert a.config() == b.config()
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.slow  # over 2 s on 2 cores: the fast tier stays under 3 minutes
def test_safetensors_folder_matches_diffusers(cifar, converted):
    theirs, root = cifar
    assert (root / "st" / "diffusion_pytorch_model.safetensors").is_file()
    ours, info = converted
    assert all(p.requires_grad and p.device.type == "cpu" for p in ours.parameters())
    assert sum(p.numel() for p in ours.parameters()) == 35_746_307
    assert ours.config()["attn_resolutions"] == [16] and ours.config()["ch_mult"] == [1, 2, 2, 2]
    assert info["var_type"] == "fixed_large" and info["num_timesteps"] == 1000
    assert info["schedule"] == "linear" and info["clip_denoised"] is True and info["mean_type"] == "eps"
    _assert_same_outputs(ours, theirs, batch=4, size=32, timesteps=[[0, 1, 500, 999]])


def test_bin_folder_gives_the_same_weights(cifar, converted):
    _, root = cifar
    assert (root / "bin" / "diffusion_pytorch_model.bin").is_file()
    assert not (root / "bin" / "diffusion_pytorch_model.safetensors").exists()
    ours, _ = load_diffusers_unet(root / "bin")
    _assert_same_weights(ours, converted[0])


def test_old_attention_key_names(cifar, converted, tmp_path):
    from safetensors.torch import load_file, save_file

    _, root = cifar
    sd = load_file(str(root / "st" / "diffusion_pytorch_model.safetensors"))
    old_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    renamed = {}
    for k, v in sd.items():
        for new, old in old_names.items():
            k = k.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
            k = k.replace(f".attentions.1.{new}.", f".attentions.1.{old}.")
            k = k.replace(f".attentions.2.{new}.", f".attentions.2.{old}.")
        renamed[k] = v
    assert any(".query.weight" in k for k in renamed) and any(".proj_attn.bias" in k for k in renamed)
    assert not any(".to_q." in k for k in renamed)
    save_file(renamed, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    (tmp_path / "config.json").write_text((root / "st" / "config.json").read_text())

    old, _ = load_diffusers_unet(tmp_path)
    _assert_same_weights(old, converted[0])


def test_single_file_without_config(cifar, converted, tmp_path):
    """A bare weights file: the architecture is inferred (4 levels -> 32x32)."""
    _, root = cifar
    src = root / "st" / "diffusion_pytorch_model.safetensors"
    (tmp_path / "w.safetensors").write_bytes(src.read_bytes())
    ours, info = load_diffusers_unet(tmp_path / "w.safetensors")
    _assert_same_weights(ours, converted[0])
    assert info["var_type"] == "fixed_large"


def test_scheduler_config_overrides(cifar, tmp_path):
    _, root = cifar
    folder = tmp_path / "pipe"
    (folder / "unet").mkdir(parents=True)
    (folder / "scheduler").mkdir()
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        (folder / "unet" / name).write_bytes((root / "st" / name).read_bytes())
    sched = {
        "_class_name": "DDPMScheduler",
        "num_train_timesteps": 1000,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "variance_type": "fixed_small",
        "clip_sample": False,
    }
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched))
    _, info = load_diffusers_unet(folder)
    assert info["var_type"] == "fixed_small" and info["clip_denoised"] is False


def test_unmappable_key_and_shape_mismatch_are_named(cifar):
    from safetensors.torch import load_file

    _, root = cifar
    sd = load_file(str(root / "st" / "diffusion_pytorch_model.safetensors"))
    unet = UNet(**unet_kwargs_from_diffusers_config(json.loads((root / "st" / "config.json").read_text())))

    extra = dict(sd, **{"down_blocks.0.mystery.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"down_blocks\.0\.mystery\.weight"):
        convert_diffusers_state_dict(extra, unet)

    missing = {k: v for k, v in sd.items() if k != "conv_norm_out.bias"}
    with pytest.raises(ValueError, match=r"missing.*conv_norm_out\.bias"):
        convert_diffusers_state_dict(missing, unet)

    wrong = dict(sd, **{"down_blocks.1.resnets.0.conv1.weight": torch.zeros(256, 128, 1, 1)})
    with pytest.raises(ValueError, match=r"down_blocks\.1\.resnets\.0\.conv1\.weight.*\(256, 128, 1, 1\).*"):
        convert_diffusers_state_dict(wrong, unet)
    with pytest.raises(ValueError, match=r"\(256, 128, 3, 3\)"):
        convert_diffusers_state_dict(wrong, unet)


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_bin_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    torch_file = tmp_path / "evil_torch.bin"
    torch.save({"conv_in.weight": _Evil(str(marker))}, torch_file)
    raw_file = tmp_path / "evil_raw.bin"
    with open(raw_file, "wb") as f:
        pickle.dump({"conv_in.weight": _Evil(str(marker))}, f)
    for path in (torch_file, raw_file):
        with pytest.raises(ValueError, match="refusing to load"):
            read_weights(path)
        folder = tmp_path / f"folder_{path.stem}"
        folder.mkdir()
        (folder / "diffusion_pytorch_model.bin").write_bytes(path.read_bytes())
        (folder / "config.json").write_text(json.dumps(CIFAR10_CONFIG))
        with pytest.raises(ValueError, match="refusing to load"):
            load_diffusers_unet(folder)
    assert not marker.exists(), "unpickling ran code"


def test_a_train_checkpoint_given_to_convert_says_which_command_takes_it(tmp_path):
    """A Lightning checkpoint of train.py (its weights under net.* and ema.*) is not a diffusers file."""
    ckpt = tmp_path / "last.ckpt"
    weights = torch.zeros(2, 1, 3, 3)
    torch.save({"state_dict": {"net.conv_in.weight": weights, "ema.conv_in.weight": weights}}, ckpt)
    with pytest.raises(ValueError, match=r"is a train\.py checkpoint, not a diffusers .* ckpt_path=.*ddpm\.export"):
        main([str(ckpt), str(tmp_path / "out.safetensors")])
    assert not (tmp_path / "out.safetensors").exists()


def test_a_train_run_given_as_pretrained_says_ckpt_path(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"holds none of .*: it is a train\.py run, which the commands read as "
                                                r"ckpt_path=\.\.\. \(python -m ddpm\.export RUN OUT"):
        load_diffusers_unet(run)
    with pytest.raises(FileNotFoundError, match=r"holds none of .*: expected a diffusers folder"):
        load_diffusers_unet(tmp_path)


def test_config_validation():
    ok = unet_kwargs_from_diffusers_config(CIFAR10_CONFIG)
    assert ok == {
        "in_channels": 3,
        "out_channels": 3,
        "ch": 128,
        "ch_mult": [1, 2, 2, 2],
        "num_res_blocks": 2,
        "attn_resolutions": [16],
        "dropout": 0.0,
        "resolution": 32,
        "resamp_with_conv": True,
    }
    big = unet_kwargs_from_diffusers_config(CONFIG_256)
    assert big["ch_mult"] == [1, 1, 2, 2, 4, 4] and big["attn_resolutions"] == [16]
    for key, bad in [
        ("norm_eps", 1e-5),
        ("flip_sin_to_cos", True),
        ("freq_shift", 0),
        ("downsample_padding", 1),
        ("attention_head_dim", 8),
    ]:
        with pytest.raises(ValueError, match=key):
            unet_kwargs_from_diffusers_config(dict(CIFAR10_CONFIG, **{key: bad}))
    incomplete = {k: v for k, v in CIFAR10_CONFIG.items() if k != "freq_shift"}  # diffusers default 0
    with pytest.raises(ValueError, match="freq_shift"):
        unet_kwargs_from_diffusers_config(incomplete)


def test_resolve_pretrained_never_downloads_by_default(tmp_path):
    assert resolve_pretrained(tmp_path) == tmp_path
    assert "google/ddpm-cifar10-32" in PRETRAINED and len(PRETRAINED) == 5
    with pytest.raises(FileNotFoundError, match="allow_download"):
        resolve_pretrained("google/ddpm-cifar10-32")
    with pytest.raises(FileNotFoundError, match="local path"):
        resolve_pretrained(str(tmp_path / "nope" / "weights.safetensors"))
    # the bridge and its commands import huggingface_hub (and diffusers) lazily, never at module level
    files = [Path(ddpm.commands.convert.__file__), *Path(ddpm.services.interop.__file__).parent.glob("*.py")]
    assert len(files) >= 8
    for file in files:
        tree = ast.parse(file.read_text())
        top_level = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        names = {a.name for n in top_level for a in n.names}
        names |= {n.module for n in top_level if isinstance(n, ast.ImportFrom) and n.module}
        assert not {"huggingface_hub", "diffusers"} & {name.split(".")[0] for name in names}, file


def test_save_and_cli_roundtrip(cifar, converted, tmp_path, capsys):
    _, root = cifar
    out = tmp_path / "out" / "cifar10.safetensors"
    main([str(root / "st"), str(out)])
    assert out.is_file() and "35,746,307" in capsys.readouterr().out
    assert not [p for p in out.parent.iterdir() if p.name != out.name], "temp files left behind"
    unet, diffusion = load_converted(out)
    assert diffusion["var_type"] == "fixed_large" and diffusion["num_timesteps"] == 1000
    _assert_same_weights(unet, converted[0])

    # save_converted overwrites atomically and keeps what it was given
    ref, info = converted
    save_converted(ref, dict(info, var_type="fixed_small"), out)
    _, diffusion = load_converted(out)
    assert diffusion["var_type"] == "fixed_small"

    with pytest.raises(FileNotFoundError, match="--download"):
        main(["google/ddpm-church-256", str(tmp_path / "church.safetensors")])


@pytest.mark.slow
def test_256_config_matches_diffusers(tmp_path):
    with torch_threads(os.cpu_count() or 1):  # a 113M-parameter network at 256x256: not a tiny-tensor test
        theirs = _diffusers_unet(CONFIG_256, seed=3)
        theirs.save_pretrained(tmp_path, safe_serialization=True)
        ours, info = load_diffusers_unet(tmp_path)
        assert sum(p.numel() for p in ours.parameters()) == 113_673_219
        assert info["var_type"] == "fixed_small"
        _assert_same_outputs(ours, theirs, batch=1, size=256, timesteps=[[7], [900]])
