"""Each default is written once (issue 21): what a user configures has its default in ``conf/``.

* The callbacks (``_target_: ddpm.services.callbacks...``) have no Python default for an argument that their YAML sets
  (it is a required argument): checked on every option of every config group of every command.
* Any other Python default of a class that a config instantiates (``_target_: ddpm...``: the UNet, the data
  modules) and of the sampler's dataclass (``ddpm.core.config.SamplerConfig``) equals the YAML value where both exist, on the
  paper's configurations (``train.py data=cifar10``, with ``callbacks=fid``; ``sample.py``; the tools'
  defaults): the code's defaults are the paper's, as the presets that differ (the quickstart's small UNet)
  say in their own YAML."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest
from omegaconf import DictConfig, ListConfig, OmegaConf

from ddpm.core.config import CONF_DIR, compose

# the primaries, and the group options each one takes (the rest of conf/ is reached through them)
PRIMARIES = {"train": ("data", "model", "objective", "diffusion", "optim", "trainer", "sampler", "callbacks",
                       "logger", "sweep"),
             "sample": ("sampler", "fid", "data"),
             "frontier": ("fid", "data"),
             "figures": ("figure", "sampler", "data"),
             "nll": ("data",),
             "build_refstats": ("data",),
             "report": ("sampler",)}
# sample.py's "the checkpoint's own data": not a dataset for training or reference statistics
HIDDEN = {("train", "data", "checkpoint"), ("build_refstats", "data", "checkpoint")}
# options that need another choice: the network for data.resolution needs data that has one
NEEDS = {("train", "model", "for_resolution"): ["data=image_folder", "data.root=/unused"],
         # its required folder (root: ???), refused by the validation pass when missing
         **{(primary, "data", "image_folder"): ["data.root=/unused"] for primary in
            ("train", "sample", "frontier", "figures", "nll", "build_refstats")}}


def compositions() -> list[tuple[str, list[str]]]:
    out = []
    for primary, groups in PRIMARIES.items():
        out.append((primary, []))
        for group in groups:
            for option in sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")):
                if (primary, group, option) not in HIDDEN:
                    out.append((primary, [f"{group}={option}", *NEEDS.get((primary, group, option), [])]))
    return out


def _resolved(node: Any, key: Any) -> Any:
    """``node[key]`` resolved, or the unresolved marker when it needs Hydra's runtime (``${hydra:...}``)."""
    try:
        value = node[key]
    except Exception:  # noqa: BLE001 - an interpolation only a running Hydra job resolves
        return _UNRESOLVED
    if isinstance(value, DictConfig | ListConfig):
        try:
            return OmegaConf.to_container(value, resolve=True, enum_to_str=True)
        except Exception:  # noqa: BLE001
            return _UNRESOLVED
    return getattr(value, "value", value)


_UNRESOLVED = object()


def _python_defaults(target: str, prefix: str = "ddpm") -> dict[str, Any]:
    """The defaults of ``target``'s own signature (none when it inherits a library's, e.g. ModelCheckpoint's)."""
    from hydra.utils import get_object

    obj = get_object(target)
    fn = obj.__init__ if inspect.isclass(obj) else obj
    if not getattr(fn, "__module__", "").startswith(prefix):
        return {}
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _targets(cfg: DictConfig, where: str = "", prefix: str = "ddpm") -> list[tuple[str, DictConfig]]:
    """``(key, node)`` of every node of ``cfg`` with a ``ddpm`` ``_target_`` (recursively)."""
    out = []
    target = cfg.get("_target_")
    if isinstance(target, str) and target.startswith(prefix + "."):
        out.append((where, cfg))
    for key in cfg.keys():
        if key == "hydra":
            continue
        child = OmegaConf.select(cfg, str(key), throw_on_missing=False, throw_on_resolution_failure=False)
        if isinstance(child, DictConfig):
            out += _targets(child, f"{where}{key}.", prefix)
    return out


def disagreements(cfg: DictConfig, prefix: str = "ddpm") -> list[str]:
    """``key: Python default X != YAML Y`` for every ``ddpm`` target's argument in ``cfg``."""
    bad = []
    for where, node in _targets(cfg, prefix=prefix):
        for name, default in _python_defaults(node._target_, prefix).items():
            if name in node:
                value = _resolved(node, name)
                if value is not _UNRESOLVED and _plain(default) != value:
                    bad.append(f"{where}{name}: {node._target_} default {default!r} != YAML {value!r}")
    return bad


def written_twice(cfg: DictConfig) -> list[str]:
    """``key: target`` for every argument of a ``ddpm.services.callbacks`` target that its YAML sets and that also has a
    Python default."""
    return [f"{where}{name}: {node._target_} has a default ({default!r}) for a setting its YAML holds"
            for where, node in _targets(cfg) if node._target_.startswith("ddpm.services.callbacks.")
            for name, default in _python_defaults(node._target_).items() if name in node]


def schema_disagreements(cfg: DictConfig) -> list[str]:
    """The same for the dataclass with Python defaults that types a node of ``cfg`` (the sampler's; the other
    schemas are read from the YAML itself, ``ddpm.core.config.build_schemas``, so they cannot drift)."""
    from ddpm.core import config as C

    bad = []
    schemas = {"sampler": C.SamplerConfig}
    for key, schema in schemas.items():
        node = OmegaConf.select(cfg, key, throw_on_missing=False)
        if not isinstance(node, DictConfig):
            continue
        for f in dataclasses.fields(schema):
            if f.default is dataclasses.MISSING or f.default == "???" or f.name not in node:
                continue
            value = _resolved(node, f.name)
            if value is not _UNRESOLVED and _plain(f.default) != value:
                bad.append(f"{key}.{f.name}: {schema.__name__} default {f.default!r} != YAML {value!r}")
    return bad


def _plain(x: Any) -> Any:
    if isinstance(x, tuple):
        return [_plain(v) for v in x]
    return getattr(x, "value", x)


PAPER = [("train", ["data=cifar10"]), ("train", ["data=cifar10", "callbacks=fid"]), ("sample", []),
         ("frontier", []), ("figures", []), ("nll", []), ("build_refstats", ["data=cifar10"])]


@pytest.mark.parametrize(("primary", "overrides"), compositions(), ids=lambda v: v if isinstance(v, str) else
                         " ".join(v) or "defaults")
@pytest.mark.slow  # over 2 s on 2 cores: the fast tier stays under 3 minutes
def test_callback_settings_have_their_default_only_in_yaml(primary, overrides):
    cfg = compose(primary, ["paths.output_dir=/unused", *overrides])
    assert written_twice(cfg) == []


@pytest.mark.parametrize(("primary", "overrides"), PAPER, ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_python_defaults_are_the_yaml_values_of_the_paper_configs(primary, overrides):
    cfg = compose(primary, ["paths.output_dir=/unused", *overrides])
    assert disagreements(cfg) + schema_disagreements(cfg) == []


def test_the_check_fails_on_a_drifted_default():
    """A class whose default says 5000 under a YAML that says 10000 (SampleGrid's every_n_steps before this
    test existed) is reported, naming the key and both values."""
    cfg = OmegaConf.create({"grid": {"_target_": f"{__name__}.Drifted", "every_n_steps": 10000, "seed": 0}})
    assert disagreements(cfg, prefix=__name__) == [
        f"grid.every_n_steps: {__name__}.Drifted default 5000 != YAML 10000"]
    assert written_twice(OmegaConf.create({"cb": {"_target_": "ddpm.services.callbacks.SampleGrid", "seed": 0}})) == []
    sampler = compose("sample", ["paths.output_dir=/unused", "sampler.clip_denoised=false"])
    assert any("sampler.clip_denoised" in d for d in schema_disagreements(sampler))
    unet = compose("train", ["paths.output_dir=/unused", "data=cifar10", "model.dropout=0.2"])
    assert any("model.dropout: ddpm.core.nets.UNet default 0.1 != YAML 0.2" in d for d in disagreements(unet))


class Drifted:
    def __init__(self, every_n_steps: int = 5000, seed: int = 0) -> None:
        pass
