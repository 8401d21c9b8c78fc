"""Typed config schemas (registered in Hydra's ConfigStore) and config validation.

The ``objective`` group's options use :class:`ObjectiveConfig` as their schema, so a misspelt value
(``objective.mean_type=epz``) fails when the config is composed, with OmegaConf listing the valid names.
:func:`validate_config` checks what a schema cannot: combinations of fields. The entry points call it
right after composition, before anything is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from ddpm.diffusion.types import LossType, MeanType, VarType, validate_objective

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


@dataclass
class ObjectiveConfig:
    """One row of the paper's Table 2: what the network predicts, the variance, and the loss."""

    mean_type: MeanType = MeanType.eps
    var_type: VarType = VarType.fixed_large
    loss_type: LossType = LossType.mse


@dataclass
class DiffusionConfig:
    schedule: str = "linear"
    num_timesteps: int = 1000


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(group="objective", name="objective_schema", node=ObjectiveConfig)
    cs.store(group="diffusion", name="diffusion_schema", node=DiffusionConfig)


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
