"""Typed config schemas (Hydra's ConfigStore, group ``schema``) and the checks a schema cannot express.

Every YAML in ``conf/`` that has a schema names it first in its defaults list (``- /schema/objective@_here_``),
so a misspelt key or a value of the wrong type fails when the config is composed, before anything is built.
The YAML files hold the defaults (with their comments); the schemas hold only types, so no default is
written twice. :func:`validate_config`, run on every composed config, adds each command's value checks
(:mod:`ddpm.checks`).

* :class:`ObjectiveConfig`: one row of the paper's Table 2 (group ``objective``).
* :class:`SamplerConfig`: how to run the reverse process (group ``sampler``, free-form in the YAML because each
  sampler of the registry has its own keys; :meth:`SamplerConfig.from_node` checks them against the registry).
  The same description is used by ``sample.py``, the final samples and the sample grids of ``train.py``, the FID
  callback, the figures and the frontier.
* :class:`FIDConfig`: how FID/IS are measured (group ``fid``), for ``sample.py`` and the FID callback.
* One schema per command (:data:`SCHEMAS`: schema -> its conf/<name>.yaml and ddpm.checks.CHECKS), e.g.
  :class:`SampleConfig` (all of ``conf/sample.yaml``), :class:`TrainConfig` (the top level of train.yaml).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from ddpm.checks import check_command, is_int, is_num
from ddpm.diffusion import SAMPLERS, SamplerSpec
from ddpm.diffusion.types import LossType, MeanType, VarType, validate_objective
from ddpm.presets import check_model_resolves, register_resolver

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


@dataclass
class ObjectiveConfig:
    """One row of the paper's Table 2: what the network predicts, the variance, and the loss."""

    mean_type: MeanType = MISSING
    var_type: VarType = MISSING
    loss_type: LossType = MISSING
    # Class-conditional models only (model.num_classes=K, beyond the paper): the share of training labels replaced
    # by the null token, so one network also learns the unconditional model that classifier-free guidance needs
    # (Ho & Salimans 2022 use 0.1 or 0.2). Written here once for every Table 2 row; ignored without classes.
    cond_drop_prob: float = 0.1


@dataclass
class DiffusionConfig:
    """The forward process: the beta schedule and the number of steps T."""

    schedule: str = MISSING
    num_timesteps: int = MISSING


@dataclass
class SamplerConfig:
    """How to run the reverse process: a sampler of the registry (:data:`ddpm.diffusion.SAMPLERS`) and its
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

    def __post_init__(self) -> None:
        if self.name not in SAMPLERS:
            raise ValueError(f"sampler.name={self.name!r} is not a sampler; valid: {sampler_names()}")
        spec = SAMPLERS[self.name]
        if self.steps is not None and not is_int(self.steps):
            raise ValueError(f"sampler.steps={self.steps!r} must be an integer >= 1 (network evaluations per image)")
        if not spec.full_chain and (self.steps is None or int(self.steps) < 1):
            raise ValueError(
                f"sampler={self.name} needs sampler.steps >= 1 (network evaluations, e.g. sampler.steps=100), "
                f"got {self.steps}"
            )
        if self.var_type is not None and self.var_type not in [v.value for v in VarType]:
            raise ValueError(
                f"sampler.var_type={self.var_type!r} is not a variance type; valid: null (the model's own), "
                f"{sorted({v.value for v in VarType})}"
            )
        unknown = sorted(set(self.params) - set(spec.params))
        if unknown:
            raise ValueError(f"sampler.{unknown[0]} is not a setting of sampler={self.name}; valid: "
                             f"{sorted([*COMMON_SAMPLER_KEYS, *spec.params])}")
        self.params = {**sampler_defaults(self.name), **self.params}
        for key, kind in spec.params.items():
            value = self.params.get(key)
            ok = is_num(value) if kind is float else is_int(value) if kind is int else isinstance(value, kind)
            if not ok:
                raise ValueError(f"sampler.{key}={value!r} must be {'a number' if kind is float else 'an integer'} "
                                 f"(sampler={self.name}; see conf/sampler/{self.name}.yaml)")
            self.params[key] = kind(value)
        if spec.check is not None:  # what can be checked without the model (its T comes with check_sampler)
            spec.check(self.params, self.steps, None)

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
        """The paper's full chain: ``ancestral``, or an evenly respaced chain that keeps all T steps."""
        spec = self.spec
        return spec.full_chain or (spec.spacing == "even" and self.steps == num_timesteps)

    def label(self, num_timesteps: int) -> str:
        """``""`` for the paper's full chain, else e.g. ``ddim100``: the suffix of metric keys (``fid_5k_ddim100``),
        so a cheap figure is never mistaken for the paper's."""
        return "" if self.is_full_chain(num_timesteps) else f"{self.name}{self.steps}"

    def describe(self, num_timesteps: int) -> dict:
        """What ``metrics.json`` and the shard signature record: the settings, ``steps`` resolved."""
        return {
            "name": self.name,
            "steps": self.steps if self.steps is not None else num_timesteps,
            "clip_denoised": self.clip_denoised,
            "var_type": self.var_type,
            **self.params,
        }

    @property
    def num_steps_label(self) -> str:
        return f"{self.name}{self.steps}" if self.steps else self.name


COMMON_SAMPLER_KEYS = ("name", "steps", "clip_denoised", "var_type")


def sampler_names() -> list[str]:
    """The registered samplers, in registration order."""
    return list(SAMPLERS)


@functools.cache
def _sampler_yaml(name: str) -> dict[str, Any]:
    import yaml

    path = CONF_DIR / "sampler" / f"{name}.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else {}


def sampler_defaults(name: str) -> dict[str, Any]:
    """The sampler's own settings as ``conf/sampler/NAME.yaml`` writes them (the one place of their defaults)."""
    yaml_node = _sampler_yaml(name)
    return {k: yaml_node[k] for k in SAMPLERS[name].params if k in yaml_node}


@dataclass
class FIDConfig:
    """How FID and IS are measured (reference statistics, feature extractor)."""

    feature_extractor: str = MISSING  # auto | inception | digits
    inception_weights: str | None = MISSING
    ref_split: str = MISSING
    ref_stats: str | None = MISSING
    is_splits: int = MISSING


class NanPolicy(str, Enum):
    stop = "stop"
    skip = "skip"


@dataclass
class SampleTrainerConfig:
    """The devices of ``sample.py`` and the NLL (Lightning Fabric arguments)."""

    accelerator: str = MISSING
    devices: Any = MISSING  # an int, "auto", or a list of device indices
    num_nodes: int = MISSING
    strategy: str = MISSING
    precision: str = MISSING
    dist_timeout_s: int = MISSING


@dataclass
class SampleConfig:
    """``conf/sample.yaml``: every option of ``python sample.py`` (defaults and comments are in the YAML)."""

    task_name: str = MISSING
    ckpt_path: str | None = MISSING
    pretrained: str | None = MISSING
    use_ema: bool = MISSING
    num_samples: int = MISSING
    batch_size: int = MISSING
    seed: int = MISSING
    shard_size: int = MISSING
    out_dir: str = MISSING
    save_images: bool = MISSING
    grid_images: int = MISSING
    grid_upscale: int | None = MISSING
    progress: bool = MISSING
    compile: bool = MISSING
    compile_backend: str = MISSING
    compile_mode: str | None = MISSING
    compile_freeze: bool = MISSING
    compute_fid: bool = MISSING
    fid_backend: str = MISSING
    min_fid_samples: int = MISSING
    labels: Any = MISSING  # null | balanced | random | a class index | a list of them (ddpm.checks.LABELS)
    guidance_scale: float = MISSING
    trainer: SampleTrainerConfig = MISSING
    sampler: Any = MISSING  # free-form: each sampler has its own keys (SamplerConfig.from_node checks them)
    fid: FIDConfig = MISSING
    data: Any = None
    paths: Any = None


@dataclass
class NLLConfig:
    """``conf/nll.yaml``: ``python -m ddpm.nll`` (the NLL bound in bits/dim, the paper's Tables 1, 2 and 4)."""

    task_name: str = MISSING
    ckpt_path: str | None = MISSING
    pretrained: str | None = MISSING
    use_ema: bool = MISSING
    split: str = MISSING
    max_images: int | None = MISSING
    batch_size: int = MISSING
    t_batch: int = MISSING
    seed: int = MISSING
    out_dir: str = MISSING
    progress: bool = MISSING
    trainer: SampleTrainerConfig = MISSING
    data: Any = None
    paths: Any = None


@dataclass
class FrontierConfig:
    """``conf/frontier.yaml``: ``python -m ddpm.frontier`` (quality against network evaluations)."""

    task_name: str = MISSING
    ckpt_path: str | None = MISSING
    pretrained: str | None = MISSING
    use_ema: bool = MISSING
    samplers: list[str] | None = MISSING
    steps: list[int] = MISSING
    num_samples: int = MISSING
    seed_sets: int = MISSING
    batch_size: int = MISSING
    seed: int = MISSING
    num_boot: int = MISSING
    clip_denoised: bool = MISSING
    tolerance: float = MISSING
    out_dir: str | None = MISSING
    device: str = MISSING
    progress: bool = MISSING
    labels: Any = MISSING  # a conditional model's labels, as SampleConfig.labels
    guidance_scale: float = MISSING
    fid: FIDConfig = MISSING
    data: Any = None
    paths: Any = None


@dataclass
class ProgressiveFigure:
    """``conf/figure/progressive.yaml`` (Figure 6)."""

    name: str = MISSING
    num_images: int = MISSING
    frames: int = MISSING


@dataclass
class InterpolationFigure:
    """``conf/figure/interpolation.yaml`` (Figures 8 and 9)."""

    name: str = MISSING
    pair: list[int] = MISSING
    split: str = MISSING
    t: float = MISSING
    lambdas: int = MISSING
    sweep: bool = MISSING


@dataclass
class SharedXtFigure:
    """``conf/figure/shared_xt.yaml`` (Figure 7)."""

    name: str = MISSING
    splits: list[float] = MISSING
    continuations: int = MISSING


@dataclass
class ClassesFigure:
    """``conf/figure/classes.yaml`` (a class-conditional model: rows = classes)."""

    name: str = MISSING
    seeds: int = MISSING
    guidance_scales: list[float] = MISSING


@dataclass
class FiguresConfig:
    """``conf/figures.yaml``: ``python -m ddpm.figures`` (the paper's qualitative figures)."""

    task_name: str = MISSING
    ckpt_path: str | None = MISSING
    pretrained: str | None = MISSING
    use_ema: bool = MISSING
    seed: int = MISSING
    upscale: int | None = MISSING
    device: str = MISSING
    out: str | None = MISSING
    figure: Any = MISSING
    sampler: Any = MISSING  # free-form: each sampler has its own keys (SamplerConfig.from_node checks them)
    data: Any = None
    paths: Any = None


@dataclass
class BuildRefstatsConfig:
    """``conf/build_refstats.yaml``: ``python -m ddpm.build_refstats`` (FID reference statistics)."""

    task_name: str = MISSING
    split: str = MISSING
    feature_extractor: str = MISSING
    inception_weights: str | None = MISSING
    out_dir: str | None = MISSING
    max_items: int | None = MISSING
    batch_size: int = MISSING
    device: str = MISSING
    data: Any = MISSING
    paths: Any = None


@dataclass
class ReportConfig:
    """``conf/report.yaml``: ``python -m ddpm.report`` (the Table 2 report of a multirun)."""

    task_name: str = MISSING
    multirun_dir: str = MISSING
    out: str | None = MISSING
    evaluate: bool = MISSING
    seed_sets: int | None = MISSING
    fid_samples: int | None = MISSING
    nll_images: int | None = MISSING
    protocols: Any = MISSING  # {data name: {seed_sets, fid_samples, nll_images}}, checked by ddpm.report.options
    sampler: Any = MISSING  # free-form: each sampler has its own keys (SamplerConfig.from_node checks them)
    batch_size: int = MISSING
    devices: int = MISSING
    sample_args: list[str] = MISSING
    num_boot: int = MISSING
    rows: list[str] | None = MISSING
    paths: Any = None


@dataclass
class TrainConfig:
    """The top level of ``conf/train.yaml`` (the groups are instantiated from their ``_target_``)."""

    task_name: str = MISSING
    seed: int = MISSING
    ckpt_path: str | None = MISSING
    final_samples: int = MISSING
    nan_policy: NanPolicy = MISSING
    nan_max_consecutive: int = MISSING
    preemption_signals: list[str] = field(default_factory=list)
    channels_last: bool = MISSING
    compile: bool = MISSING
    compile_backend: str = MISSING
    compile_mode: str | None = MISSING
    model: Any = MISSING
    diffusion: DiffusionConfig = MISSING
    objective: ObjectiveConfig = MISSING
    optim: Any = MISSING
    trainer: Any = MISSING
    callbacks: Any = MISSING
    logger: Any = MISSING
    paths: Any = MISSING
    data: Any = MISSING
    sampler: Any = MISSING  # free-form: each sampler has its own keys (SamplerConfig.from_node checks them)


SCHEMAS: dict[type, str] = {TrainConfig: "train", SampleConfig: "sample", NLLConfig: "nll", FiguresConfig: "figures",
                            FrontierConfig: "frontier", ReportConfig: "report", BuildRefstatsConfig: "build_refstats"}


def register_configs() -> None:
    cs = ConfigStore.instance()
    for name, node in (("objective", ObjectiveConfig), ("diffusion", DiffusionConfig), ("fid", FIDConfig),
                       ("figure_progressive", ProgressiveFigure), ("figure_interpolation", InterpolationFigure),
                       ("figure_shared_xt", SharedXtFigure), ("figure_classes", ClassesFigure),
                       *((n, c) for c, n in SCHEMAS.items())):
        cs.store(group="schema", name=name, node=node)


register_configs()
register_resolver()  # model=for_resolution's ${ddpm_unet:...}


def objective_kwargs(objective: Any) -> dict[str, str]:
    """``{mean_type, var_type, loss_type}`` as plain strings from a config node or mapping."""
    get = objective.get if hasattr(objective, "get") else lambda k: getattr(objective, k)
    out = {}
    for key, enum in (("mean_type", MeanType), ("var_type", VarType), ("loss_type", LossType)):
        value = get(key)
        out[key] = enum(value.value if isinstance(value, enum) else value).value
    return out


def validate_config(cfg: DictConfig) -> None:
    """Fail early, with a message naming the key and the valid values, on a config that cannot work: the one
    validation pass over the composed config of every command (its values: :data:`ddpm.checks.CHECKS`)."""
    if "model" in cfg:  # model=for_resolution: its resolver's message as it is, not wrapped by OmegaConf
        check_model_resolves(cfg.model)
    if "objective" in cfg:
        validate_objective(**objective_kwargs(cfg.objective))
    if "diffusion" in cfg:
        from ddpm.diffusion.schedules import SCHEDULE_NAMES

        if cfg.diffusion.schedule not in SCHEDULE_NAMES:
            raise ValueError(
                f"diffusion.schedule={cfg.diffusion.schedule!r} is not a known schedule; "
                f"valid: {list(SCHEDULE_NAMES)}"
            )
        if int(cfg.diffusion.num_timesteps) < 1:
            raise ValueError(f"diffusion.num_timesteps must be >= 1, got {cfg.diffusion.num_timesteps}")
    if "sampler" in cfg:
        SamplerConfig.from_node(cfg.sampler)
    if (name := SCHEMAS.get(OmegaConf.get_type(cfg))) is not None:  # a command's config: its values (ddpm.checks)
        check_command(name, cfg)


def compose(config_name: str = "train", overrides: list[str] | None = None) -> DictConfig:
    """Compose and validate a config from ``conf/`` outside of ``@hydra.main`` (tests, notebooks)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides or []), return_hydra_config=True)
    validate_config(cfg)
    return cfg


def to_container(cfg: DictConfig) -> dict:
    """The resolved config as plain Python (enums as strings), without the ``hydra`` node."""
    cfg = cfg.copy()
    with_hydra = "hydra" in cfg
    if with_hydra:
        OmegaConf.set_struct(cfg, False)
        cfg.pop("hydra")
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
