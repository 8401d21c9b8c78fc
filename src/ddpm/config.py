"""Typed config schemas (Hydra's ConfigStore, group ``schema``) and the checks a schema cannot express.

Every YAML in ``conf/`` that has a schema names it first in its defaults list (``- /schema/sampler@_here_``),
so a misspelt key or a value of the wrong type fails when the config is composed, before anything is built.
The YAML files hold the defaults (with their comments); the schemas hold only types, so no default is
written twice. :func:`validate_config` checks combinations of fields; the entry points call it right after
composition.

* :class:`ObjectiveConfig`: one row of the paper's Table 2 (group ``objective``).
* :class:`SamplerConfig`: how to run the reverse process (group ``sampler``). The same description is used
  by ``sample.py``, the final samples and the sample grids of ``train.py``, and the FID callback.
* :class:`FIDConfig`: how FID/IS are measured (group ``fid``), for ``sample.py`` and the FID callback.
* :class:`SampleConfig`: the whole of ``conf/sample.yaml``; :class:`TrainConfig`: the top level of
  ``conf/train.yaml`` (its groups are free-form: each is instantiated by its ``_target_``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from ddpm.diffusion.types import LossType, MeanType, VarType, validate_objective

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

SAMPLERS = ("ancestral", "respaced", "ddim")


@dataclass
class ObjectiveConfig:
    """One row of the paper's Table 2: what the network predicts, the variance, and the loss."""

    mean_type: MeanType = MISSING
    var_type: VarType = MISSING
    loss_type: LossType = MISSING


@dataclass
class DiffusionConfig:
    """The forward process: the beta schedule and the number of steps T."""

    schedule: str = MISSING
    num_timesteps: int = MISSING


@dataclass
class SamplerConfig:
    """How to run the reverse process.

    :param name: ``ancestral`` (the paper's Algorithm 2, all T steps), ``respaced`` (ancestral on a subset of
        ``steps`` timesteps with recomputed betas) or ``ddim`` (``steps`` DDIM steps with ``eta``).
    :param steps: network evaluations for the non-ancestral samplers (``None`` for ``ancestral``).
    :param eta: DDIM's noise scale (0 = deterministic); ignored by the other samplers.
    :param clip_denoised: clamp the predicted x_0 to [-1, 1] before forming the mean (official default).
    :param var_type: override the objective's variance type for sampling (``fixed_large``/``fixed_small``);
        ``None`` keeps the model's own.
    """

    name: str = MISSING
    steps: int | None = None
    eta: float = 0.0
    clip_denoised: bool = True
    var_type: str | None = None

    def __post_init__(self) -> None:
        if self.name not in SAMPLERS:
            raise ValueError(f"sampler.name={self.name!r} is not a sampler; valid: {list(SAMPLERS)}")
        if self.name != "ancestral" and (self.steps is None or int(self.steps) < 1):
            raise ValueError(
                f"sampler={self.name} needs sampler.steps >= 1 (network evaluations, e.g. sampler.steps=100), "
                f"got {self.steps}"
            )
        if self.var_type is not None and self.var_type not in [v.value for v in VarType]:
            raise ValueError(
                f"sampler.var_type={self.var_type!r} is not a variance type; valid: null (the model's own), "
                f"{sorted({v.value for v in VarType})}"
            )

    @classmethod
    def from_node(cls, node: Any) -> SamplerConfig:
        """A :class:`SamplerConfig` from a config node, a mapping or a :class:`SamplerConfig`."""
        if isinstance(node, cls):
            return node
        if OmegaConf.is_config(node):
            node = OmegaConf.to_container(node, resolve=True)
        return cls(**dict(node))

    def label(self, num_timesteps: int) -> str:
        """``""`` for the paper's full chain (ancestral, or respaced with all T steps), else e.g. ``ddim100``:
        the suffix of metric keys (``fid_5k_ddim100``), so a cheap figure is never mistaken for the paper's."""
        if self.name == "ancestral" or (self.name == "respaced" and self.steps == num_timesteps):
            return ""
        return f"{self.name}{self.steps}"

    def describe(self, num_timesteps: int) -> dict:
        """What ``metrics.json`` and the shard signature record: the settings, ``steps`` resolved."""
        return {
            "name": self.name,
            "steps": self.steps if self.steps is not None else num_timesteps,
            "eta": self.eta if self.name == "ddim" else None,
            "clip_denoised": self.clip_denoised,
            "var_type": self.var_type,
        }

    @property
    def num_steps_label(self) -> str:
        return f"{self.name}{self.steps}" if self.steps else self.name


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
    """``sample.py``'s devices (Lightning Fabric arguments)."""

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
    nll: bool = MISSING
    nll_split: str = MISSING
    nll_max_images: int | None = MISSING
    nll_batch_size: int = MISSING
    nll_t_batch: int = MISSING
    nll_seed: int = MISSING
    trainer: SampleTrainerConfig = MISSING
    sampler: SamplerConfig = MISSING
    fid: FIDConfig = MISSING
    data: Any = None
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
    sampler: SamplerConfig = MISSING


def register_configs() -> None:
    cs = ConfigStore.instance()
    for name, node in (("objective", ObjectiveConfig), ("diffusion", DiffusionConfig), ("sampler", SamplerConfig),
                       ("fid", FIDConfig), ("sample", SampleConfig), ("train", TrainConfig)):
        cs.store(group="schema", name=name, node=node)


register_configs()


def objective_kwargs(objective: Any) -> dict[str, str]:
    """``{mean_type, var_type, loss_type}`` as plain strings from a config node or mapping."""
    get = objective.get if hasattr(objective, "get") else lambda k: getattr(objective, k)
    out = {}
    for key, enum in (("mean_type", MeanType), ("var_type", VarType), ("loss_type", LossType)):
        value = get(key)
        out[key] = enum(value.value if isinstance(value, enum) else value).value
    return out


def validate_config(cfg: DictConfig) -> None:
    """Fail early, with a message naming the valid values, on a config that cannot work."""
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
