"""``data=image_folder`` gives the network for its resolution (issue 30 item 4): ``model=for_resolution`` takes
the settings of the ``conf/model`` preset of ``data.resolution`` (32: the paper's CIFAR-10 network, 256: its
LSUN / CelebA-HQ network, 64: ``unet_64``, beyond the paper); other sizes are one clean error; the user's own
``model=`` or ``model.KEY=`` still wins. Everything is composed, nothing trains."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ddpm.core.config import compose, to_container

CONF = Path(__file__).resolve().parents[1] / "conf"


def model_of(*overrides: str) -> dict:
    cfg = compose("train", ["paths.output_dir=/unused", "data=image_folder", "data.root=/unused", *overrides])
    return to_container(cfg)["model"]


def preset_yaml(name: str) -> dict:
    return yaml.safe_load((CONF / "model" / f"{name}.yaml").read_text())


@pytest.mark.parametrize("resolution,preset", [(32, "unet_cifar32"), (64, "unet_64"), (256, "unet_256")])
def test_image_folder_trains_the_network_of_its_resolution(resolution, preset):
    assert model_of(f"data.resolution={resolution}") == preset_yaml(preset)


def test_the_default_folder_resolution_is_not_the_quickstart_network():
    """The bug: a 64x64 folder used to train unet_small (ch 32) for 800k steps."""
    model = model_of()  # data.resolution: 64 by default
    assert model["ch"] == 128 and model["ch_mult"] == [1, 2, 3, 4] and model != preset_yaml("unet_small")


def test_paper_networks_at_32_have_the_paper_size():
    """The 32x32 choice is the paper's 35.7M network (Appendix B), counted on the built module."""
    from hydra.utils import instantiate

    net = instantiate(model_of("data.resolution=32"), in_channels=3, out_channels=3, resolution=32)
    assert sum(p.numel() for p in net.parameters()) == 35_746_307


def test_the_unet_64_reaches_the_attention_resolution_and_8x8():
    """Four levels halve 64 three times (64, 32, 16, 8) and attention sits at 16x16 on level 2."""
    from hydra.utils import instantiate

    cfg = model_of("data.resolution=64")
    levels = [64 // 2 ** i for i in range(len(cfg["ch_mult"]))]
    assert levels == [64, 32, 16, 8] and set(cfg["attn_resolutions"]) <= set(levels)
    net = instantiate({**cfg, "ch": 32}, in_channels=3, out_channels=3, resolution=64)  # narrow: the layout only
    attn = [name for name, _ in net.named_modules() if name.endswith("attns.0") or ".attns." in name]
    assert attn, "no attention layer was placed"


def test_the_users_choice_still_wins():
    assert model_of("model=unet_small") == preset_yaml("unet_small")
    assert model_of("data.resolution=32", "model.dropout=0.0")["dropout"] == 0.0
    assert model_of("data.resolution=32", "model.dropout=0.0")["ch_mult"] == [1, 2, 2, 2]


@pytest.mark.parametrize("overrides,needles", [
    (["data=image_folder", "data.root=/unused", "data.resolution=48"],
     ["data.resolution=48", "32 -> model=unet_cifar32", "model=NAME"]),
    (["model=for_resolution"], ["no data.resolution", "model=NAME"]),  # digits: 8x8 without that key
])
def test_a_resolution_without_a_network_is_one_clean_error(overrides, needles, capsys, monkeypatch):
    from ddpm.core import cli

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as info:
        cli.preflight("train", ["paths.output_dir=/unused", *overrides])
    err = capsys.readouterr().err
    assert info.value.code == 1 and err.startswith("Error: ") and "full_key" not in err, err
    for needle in needles:
        assert needle in err, err
