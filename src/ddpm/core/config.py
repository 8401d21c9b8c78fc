"""The settings of every command: their types, read from the YAML in ``conf/`` that writes them, and the one
validation pass over a composed config (:func:`validate_config`).

A setting's name, default and type are written once, in its YAML: every YAML of a command or of a typed group
names its schema first (``- /schema/sample@_here_``), and :func:`build_schemas` makes that schema from the
YAML's own keys and the types of their values (:func:`register_configs` stores it in Hydra's ConfigStore), so a
misspelt key or a value of the wrong type fails when the config is composed. A key that :mod:`ddpm.core.checks`
checks is typed by its check (``trainer.devices``: an integer, ``auto`` or a list). Adding a setting is one
line of YAML (and, for a range, one check).

* :class:`SamplerConfig`: how to run the reverse process (group ``sampler``, free-form in the YAML because each
  sampler of the registry has its own keys; :meth:`SamplerConfig.from_node` checks them against the registry).
  The same description is used by ``sample.py``, the final samples and the sample grids of ``train.py``, the FID
  callback, the figures and the frontier.
* :data:`SCHEMAS`: each command's schema -> its name (``conf/<name>.yaml`` and ``ddpm.core.checks.CHECKS[name]``).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from ddpm.core.checks import CHECKS, check_command, suggest
from ddpm.core.diffusion import SAMPLERS, SamplerSpec, validate_sampler
from ddpm.core.diffusion.registry import COMMON_SAMPLER_KEYS, check_steps_within
from ddpm.core.diffusion.types import LossType, MeanType, VarType, validate_objective
from ddpm.core.presets import check_model_resolves, register_resolver

CONF_DIR = Path(__file__).resolve().parents[3] / "conf"


@dataclass
class SamplerConfig:
    """How to run the reverse process: a sampler of the registry (:data:`ddpm.core.diffusion.SAMPLERS`) and its
    settings. Every script reads it from the ``sampler`` group (``sampler=NAME sampler.steps=S``).

    :param name: a registered sampler (:func:`sampler_names`): ``ancestral`` (the paper's Algorithm 2, all T
        steps), ``respaced``, ``ddim``, ``dpm_solver``, ``dpm_solver_sde``, ``restart``.
    :param steps: network evaluations per image (``None`` for ``ancestral``, which always runs all T).
    :param clip_denoised: clamp the predicted x_0 to [-1, 1] (official default).
    :param var_type: override the objective's variance type for sampling (``fixed_large``/``fixed_small``);
        ``None`` keeps the model's own.
    :param params: the sampler's own settings (DDIM's ``eta``, Restart's interval...), by the names the registry
        gives; those not given come from ``conf/sampler/NAME.yaml``, where every default is written.
    """

    name: str
    steps: int | None = None
    clip_denoised: bool = True
    var_type: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def named(cls, name: str, searchpath: Any = (), **common: Any) -> SamplerConfig:
        """The sampler ``name`` with its defaults as the command's Hydra search path finds them (a sampler registered
        outside ``src/`` with its YAML on ``hydra.searchpath``); ``common``: ``steps``, ``clip_denoised``..."""
        return cls(name=name, params=sampler_defaults(name, searchpath) if name in SAMPLERS else {}, **common)

    def __post_init__(self) -> None:  # what can be checked without the model (its T comes with check)
        # only settings left unset are looked up (a composed node, or SamplerConfig.named, has them all)
        missing = self.name in SAMPLERS and set(SAMPLERS[self.name].all_params) - set(self.params)
        defaults = sampler_defaults(self.name) if missing else {}
        self.params = validate_sampler(self.name, self.steps, {**defaults, **self.params}, self.var_type)

    def check(self, diffusion: Any) -> None:
        """Refuse, before any image is sampled, a sampler that the model of ``diffusion`` cannot run (steps against
        its T, the variance against its output): :func:`ddpm.core.diffusion.validate_sampler`, the one place."""
        validate_sampler(self.name, self.steps, self.params, self.var_type, diffusion)

    @classmethod
    def from_node(cls, node: Any) -> SamplerConfig:
        """A :class:`SamplerConfig` from a config node (``sampler.eta`` and the like at its top level), a mapping or
        a :class:`SamplerConfig`."""
        if isinstance(node, cls):
            return node
        if OmegaConf.is_config(node):
            node = OmegaConf.to_container(node, resolve=True)
        node = dict(node)
        if "name" not in node:
            raise ValueError(f"the sampler config has no name; valid: {sampler_names()}")
        common = {k: node.pop(k) for k in COMMON_SAMPLER_KEYS if k in node}
        return cls(**common, params={**node.pop("params", {}), **node})

    @property
    def spec(self) -> SamplerSpec:
        """The registry entry."""
        return SAMPLERS[self.name]

    def is_full_chain(self, num_timesteps: int) -> bool:
        """The paper's full chain: ``ancestral``, or an evenly respaced chain that keeps all T steps; its metric
        keys carry no sampler (``fid_50k``), every other's its :attr:`label` (``fid_5k_ddim100``), so a cheap
        figure is never mistaken for the paper's."""
        spec = self.spec
        return spec.full_chain or (spec.spacing == "even" and self.steps == num_timesteps)

    @property
    def label(self) -> str:
        """The sampler and its network evaluations, e.g. ``ddim100``; the name alone when ``steps`` is unset
        (``ancestral``). The one name of a sampler setting in metric keys, folders and logs."""
        return f"{self.name}{self.steps}" if self.steps else self.name

    def describe(self, num_timesteps: int) -> dict:
        """What ``metrics.json`` and the shard signature record: the settings, ``steps`` resolved."""
        return {
            "name": self.name,
            "steps": self.steps if self.steps is not None else num_timesteps,
            "clip_denoised": self.clip_denoised,
            "var_type": self.var_type,
            **self.params,
        }


def sampler_names() -> list[str]:
    """The registered samplers, in registration order."""
    return list(SAMPLERS)


@functools.cache
def _sampler_option(name: str, searchpath: tuple[str, ...]) -> dict[str, Any]:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import MissingConfigException

    overrides = [f"+sampler={name}", *([f"hydra.searchpath=[{','.join(searchpath)}]"] if searchpath else [])]
    try:
        if GlobalHydra.instance().is_initialized():  # inside a command: its own config loader
            cfg = hydra_compose(overrides=overrides)
        else:
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                cfg = hydra_compose(overrides=overrides)
    except MissingConfigException:
        return {}
    return OmegaConf.to_container(cfg.sampler, resolve=True) if "sampler" in cfg else {}


def sampler_defaults(name: str, searchpath: Any = ()) -> dict[str, Any]:
    """The sampler's own settings as Hydra composes its option of the ``sampler`` group (``conf/sampler/NAME.yaml``,
    the one place of their defaults); ``searchpath``: the command's ``hydra.searchpath`` (:func:`searchpath_of`),
    where a sampler added outside ``src/`` keeps its YAML."""
    node = _sampler_option(name, tuple(str(p) for p in searchpath))
    return {k: node[k] for k in SAMPLERS[name].all_params if k in node}


def searchpath_of(cfg: Any) -> tuple[str, ...]:
    """The ``hydra.searchpath`` a command's config was composed with (its ``hydra`` node, or the running app's)."""
    found = OmegaConf.select(cfg, "hydra.searchpath") if isinstance(cfg, DictConfig) and "hydra" in cfg else None
    if found is None:
        from hydra.core.hydra_config import HydraConfig

        found = HydraConfig.get().searchpath if HydraConfig.initialized() else []
    return tuple(str(p) for p in found)


# ------------------------------------------------------------------------------------------------ the schemas
# A schema is written nowhere: it is read from the YAML that names it (``- /schema/NAME@_here_``), so each
# setting's name, default and type are the YAML's key, value and the value's type. A key with a value check
# in ddpm.core.checks.CHECKS is typed by that check (``trainer.devices``: an integer, ``auto`` or a list); ``null``
# types a key as an optional string.
GROUP_DEFAULTS = "group_defaults"  # conf/group_defaults/NAME.yaml: a group's keys that only some options write
SCHEMA_LINE = re.compile(r"^\s*-\s*/schema/(\w+)@_here_\s*(?:#.*)?$", re.M)


def _checked_keys() -> set[str]:
    return {key for checks in CHECKS.values() for key, _, _ in checks}


def _type_of(value: Any, key: str, checked: set[str]) -> tuple[Any, Any]:
    """``(type, default)`` of the field for the YAML ``value`` of ``key`` (its dotted path in the command)."""
    if key in checked or (isinstance(value, str) and "${" in value):
        return Any, field(default_factory=lambda: value) if isinstance(value, list | dict) else value
    if value is None:
        return str | None, None
    if isinstance(value, dict):
        node = _dataclass(key.rpartition(".")[2], value, checked, key + ".")
        return node, field(default_factory=node)
    if isinstance(value, list):
        kinds = {type(v) for v in value}
        kind = kinds.pop() if len(kinds) == 1 and not {dict, list} & {type(v) for v in value} else Any
        return list[kind], field(default_factory=lambda: list(value))
    return type(value), MISSING if value == "???" else value


def _dataclass(name: str, node: dict, checked: set[str], prefix: str = "") -> type:
    fields = [(k, *_type_of(v, prefix + k, checked)) for k, v in node.items()]
    return make_dataclass(name.title().replace("_", "") + "Schema", fields)


UNTYPED = object()  # a group's node (its own YAML types it, or nothing does)


def _yaml_keys(path: Path, conf_dir: Path, typed: bool = True) -> dict[str, Any]:
    """The settings a YAML file writes, in its order: its own keys, the files it merges at its level
    (``NAME@_global_: OPTION``; every option of an interpolated ``NAME@_global_: ${group}``, untyped) and the
    groups it chooses (:data:`UNTYPED`)."""
    node = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
    out: dict[str, Any] = {}
    for entry in node.pop("defaults", []):
        if isinstance(entry, str) or len(entry) != 1:
            continue  # _self_, /schema/...@_here_ (this schema)
        (group, option), = entry.items()
        group = group.removeprefix("optional ").removeprefix("override ").strip()
        name = group.split("@")[0].lstrip("/")
        if group.endswith(("@_global_", "@_here_")) and option is not None:
            options = sorted((conf_dir / name).glob("*.yaml")) if "${" in str(option) else [
                conf_dir / name / f"{option}.yaml"]
            for opt in options:
                out.update(_yaml_keys(opt, conf_dir, typed and "${" not in str(option)))
        elif "@" not in group and name != "hydra" and option is not None:
            out[name] = UNTYPED
    own = {k: v if typed else UNTYPED for k, v in node.items()}
    first = {k: v for k, v in out.items() if v is not UNTYPED and k not in own}  # merged before _self_
    return {**first, **own, **{k: v for k, v in out.items() if k not in own and k not in first}}


def _schema_files(conf_dir: Path) -> dict[str, list[Path]]:
    """``{schema name: the YAML files that name it}`` (a group's schema takes the keys of all its options)."""
    out: dict[str, list[Path]] = {}
    for path in sorted(conf_dir.rglob("*.yaml")):
        for name in SCHEMA_LINE.findall(path.read_text()):
            out.setdefault(name, []).append(path)
    return out


def build_schemas(conf_dir: Path = CONF_DIR) -> dict[str, type]:
    """Every schema of ``conf_dir``, from its YAML files (:func:`register_configs` stores them)."""
    checked, schemas = _checked_keys(), {}
    for name, paths in _schema_files(conf_dir).items():
        defaults = [p for p in paths if p.parent.name == GROUP_DEFAULTS]
        paths = [p for p in paths if p not in defaults]
        command = paths[0].parent == conf_dir  # conf/<command>.yaml; else a group's options (conf/fid/...)
        prefix = "" if command else paths[0].parent.name + "."
        node: dict[str, Any] = {}
        options = [_yaml_keys(path, conf_dir) for path in paths]
        for keys in options:
            node.update(keys)
        fixed = {k: v for path in defaults for k, v in _yaml_keys(path, conf_dir).items()}
        partial = sorted(k for k in node if k not in fixed and any(k not in o for o in options))
        if partial and not command:  # its default would be whichever option comes last, in every option
            raise ValueError(f"conf/{paths[0].parent.name}: {', '.join(partial)} written by only some options: "
                             f"write its default once in conf/{GROUP_DEFAULTS}/{name}.yaml")
        node.update(fixed)
        schema = _dataclass(name, {k: v for k, v in node.items() if v is not UNTYPED}, checked, prefix)
        groups = [(k, Any, None) for k, v in node.items() if v is UNTYPED]
        schemas[name] = make_dataclass(schema.__name__, groups, bases=(schema,))
    return schemas


SCHEMAS: dict[type, str] = {}  # a command's schema -> its name (conf/<name>.yaml, ddpm.core.checks.CHECKS[name])


def register_configs(conf_dir: Path = CONF_DIR) -> dict[str, type]:
    """Store the schemas of ``conf_dir`` in Hydra's ConfigStore (group ``schema``); :data:`SCHEMAS` maps each
    command's to its name."""
    cs, schemas = ConfigStore.instance(), build_schemas(conf_dir)
    SCHEMAS.clear()
    for name, node in schemas.items():
        cs.store(group="schema", name=name, node=node)
        if (conf_dir / f"{name}.yaml").is_file():
            SCHEMAS[node] = name
    return schemas


def setting_files(command: str, conf_dir: Path = CONF_DIR) -> list[Path]:
    """The files that write the top-level settings of ``conf/<command>.yaml``: those it merges at its level
    (the model source, ``conf/model_source/default.yaml``), then itself (``--help`` shows their comments)."""
    path = conf_dir / f"{command}.yaml"
    node = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
    here = [(g.split("@")[0].lstrip("/"), o) for e in node.get("defaults", []) if isinstance(e, dict) for g, o in
            e.items() if g.endswith("@_global_") and o is not None and "${" not in str(o)]
    return [*(conf_dir / g / f"{o}.yaml" for g, o in here), path]


def settings_of(command: str) -> set[str]:
    """The top-level keys of ``conf/<command>.yaml`` (its settings and groups)."""
    return {f.name for node, name in SCHEMAS.items() if name == command for f in dataclasses.fields(node)}


register_configs()
register_resolver()  # model=for_resolution's ${ddpm_unet:...}


def objective_kwargs(objective: Any) -> dict[str, Any]:
    """``{mean_type, var_type, loss_type}`` as plain strings from a config node or mapping, and the loss weight's
    settings (``loss_weight``, ``snr_gamma``, ``p2_k``, ``p2_gamma``) where the node has them."""
    get = objective.get if hasattr(objective, "get") else lambda k, d=None: getattr(objective, k, d)
    out: dict[str, Any] = {}
    for key, enum in (("mean_type", MeanType), ("var_type", VarType), ("loss_type", LossType)):
        value = get(key)
        value = value.value if isinstance(value, enum) else value
        if value not in [e.value for e in enum]:
            raise ValueError(f"objective.{key}={value!r} is not valid; valid: {' | '.join(e.value for e in enum)} "
                             "(or objective=NAME, a row of the paper's Table 2: conf/objective/)")
        out[key] = enum(value).value
    for key in ("loss_weight", "snr_gamma", "p2_k", "p2_gamma"):
        if (value := get(key, None)) is not None:
            out[key] = value
    return out


def check_sampler_settings(node: Any, key: str = "sampler", num_timesteps: int | None = None) -> None:
    """The sampler registry's own check of the sampler node at ``key`` (its name, steps and parameters): the
    one call of it in the validation pass. ``num_timesteps``: the T of the model the config trains (train.py), so
    that steps above it are refused before training, not found after it."""
    try:
        sampler = SamplerConfig.from_node(node)
        if num_timesteps is not None:
            check_steps_within(sampler.name, sampler.steps, num_timesteps)
    except ValueError as e:
        raise ValueError(str(e) if key == "sampler" else f"{key}: {e}") from None


def validate_config(cfg: DictConfig) -> None:
    """Fail early, with a message naming the key and the valid values, on a config that cannot work: the one
    validation pass over the composed config of every command (its values: :data:`ddpm.core.checks.CHECKS`)."""
    if "data" in cfg and (missing := sorted(OmegaConf.missing_keys(cfg.data))):  # a `???` the option asks for
        choice = OmegaConf.select(cfg, "hydra.runtime.choices.data", default=None)
        where = f" (conf/data/{choice}.yaml says what it is)" if choice else ""
        key = missing[0]  # the full path, data.root
        example = "/path/to/images" if key == "data.root" else "..."
        raise ValueError(f"{key} is required and not set: pass {key}={example}{where}")
    if "model" in cfg:  # model=for_resolution: its resolver's message as it is, not wrapped by OmegaConf
        check_model_resolves(cfg.model)
    if "objective" in cfg:
        validate_objective(**objective_kwargs(cfg.objective))
    T = OmegaConf.select(cfg, "diffusion.num_timesteps", default=None)  # the T of the model it trains; a T that
    T = T if isinstance(T, int) and not isinstance(T, bool) and T >= 1 else None  # is not one: CHECKS names it below
    for key in ("sampler", *(f"callbacks.{name}.sampler" for name in cfg.get("callbacks") or {})):
        if OmegaConf.select(cfg, key, default=None) is not None:
            check_sampler_settings(OmegaConf.select(cfg, key), key, T)
    if (name := SCHEMAS.get(OmegaConf.get_type(cfg))) is not None:  # a command's config: its values (ddpm.core.checks)
        check_command(name, cfg)


def compose(config_name: str = "train", overrides: list[str] | None = None, conf_dir: Path = CONF_DIR,
            validate: bool = True) -> DictConfig:
    """Compose and validate a config from ``conf_dir`` outside of ``@hydra.main`` (tests, notebooks);
    ``validate=False``: as Hydra composes it, unchecked (what the settings' defaults are)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides or []), return_hydra_config=True)
        if validate:
            _check_optional_choices(cfg, config_name, list(overrides or []), conf_dir)
    if validate:
        validate_config(cfg)
    return cfg


@functools.lru_cache(maxsize=None)
def _optional_groups(config_name: str, conf_dir: Path) -> tuple[str, ...]:
    """The groups that ``conf/<config_name>.yaml`` lists as ``optional GROUP: ...`` in its defaults."""
    path = conf_dir / f"{config_name}.yaml"
    node = OmegaConf.to_container(OmegaConf.load(path), resolve=False) if path.is_file() else {}
    return tuple(next(iter(e)).removeprefix("optional ").strip() for e in (node or {}).get("defaults", [])
                 if isinstance(e, dict) and len(e) == 1 and next(iter(e)).startswith("optional "))


def _check_optional_choices(cfg: DictConfig, config_name: str, overrides: list[str], conf_dir: Path) -> None:
    """Hydra skips an ``optional`` group's option that does not exist (``optional sweep: null`` in conf/train.yaml),
    so ``sweep=tabel2`` would silently run the default: refuse it with the valid options (on the search path)."""
    from hydra.core.global_hydra import GlobalHydra

    choices = cfg.hydra.runtime.choices
    for group in _optional_groups(config_name, conf_dir):
        option = choices.get(group)
        if option is None:
            continue
        valid = GlobalHydra.instance().config_loader().get_group_options(
            group, config_name=config_name, overrides=overrides)
        if option not in valid:
            raise ValueError(f"{group}={option}: no such option. Valid {group} options: {', '.join(valid)}."
                             f"{suggest(option, valid)}")


def to_container(cfg: DictConfig) -> dict:
    """The resolved config as plain Python (enums as strings), without the ``hydra`` node."""
    cfg = cfg.copy()
    with_hydra = "hydra" in cfg
    if with_hydra:
        OmegaConf.set_struct(cfg, False)
        cfg.pop("hydra")
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
