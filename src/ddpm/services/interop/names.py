"""The one name table between this project and diffusers: schedules, prediction (mean) types, variance types.

Each :class:`NameTable` is read both ways, by the exporter (``ours -> diffusers``) and by the converter
(``diffusers -> ours``), so a name written by one is read back by the other. ``aliases`` are diffusers names
read as one of ours but never written (diffusers' ``*_log`` variants sample the same distribution);
``refused`` names, on either side, carry the reason they cannot cross (shown as one line to the user).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


class NotExportableError(ValueError):
    """The model has no exact diffusers equivalent (a user error: one line, exit status 1)."""


@dataclass(frozen=True)
class NameTable:
    """``ours <-> diffusers`` names of one concept, stored under the diffusers config key ``key``."""

    ours_key: str  # our setting (objective.mean_type, ...), named in the exporter's refusals
    key: str  # the diffusers scheduler_config.json key
    ours_to_theirs: Mapping[str, str]
    aliases: Mapping[str, str] = field(default_factory=dict)  # diffusers name -> ours, read only
    refused: Mapping[str, str] = field(default_factory=dict)  # a name (ours or theirs) -> why it cannot cross

    def __post_init__(self) -> None:
        theirs = list(self.ours_to_theirs.values())
        assert len(set(theirs)) == len(theirs), f"{self.key}: two of our names map to one diffusers name"
        assert not set(self.aliases) & set(theirs), f"{self.key}: an alias is also a written name"
        assert set(self.aliases.values()) <= set(self.ours_to_theirs), f"{self.key}: an alias reads as no name"
        object.__setattr__(self, "ours_to_theirs", MappingProxyType(dict(self.ours_to_theirs)))
        object.__setattr__(self, "aliases", MappingProxyType(dict(self.aliases)))
        object.__setattr__(self, "refused", MappingProxyType(dict(self.refused)))

    @property
    def theirs_to_ours(self) -> dict[str, str]:
        """Every diffusers name this project reads, written names and aliases."""
        return {**{t: o for o, t in self.ours_to_theirs.items()}, **self.aliases}

    def to_diffusers(self, ours: str) -> str:
        """The diffusers name of ``ours``; :class:`NotExportableError` with the reason for one that cannot cross."""
        ours = str(getattr(ours, "value", ours))
        if ours in self.ours_to_theirs:
            return self.ours_to_theirs[ours]
        why = self.refused.get(ours, f"diffusers has no {self.key} for it")
        raise NotExportableError(f"{self.ours_key}={ours} cannot be exported to diffusers: {why}")

    def from_diffusers(self, theirs: str) -> str:
        """Our name of the diffusers name ``theirs``; ``ValueError`` naming the key and the names that are read."""
        if theirs in self.theirs_to_ours:
            return self.theirs_to_ours[theirs]
        why = self.refused.get(theirs)
        raise ValueError(f"scheduler {self.key} {theirs!r} is not supported ({why + '; ' if why else ''}"
                         f"supported: {sorted(self.theirs_to_ours)})")


#: Beta schedules (``ddpm.core.diffusion.get_beta_schedule``): the same formulas. Our linear and quad endpoints are
#: 1e-4 -> 0.02 scaled by 1000/T; diffusers takes them as ``beta_start`` / ``beta_end``. The exact float64 betas
#: also travel as ``trained_betas``, which diffusers uses in preference to the name.
SCHEDULES = NameTable(
    "schedule", "beta_schedule", {"linear": "linear", "cosine": "squaredcos_cap_v2", "quad": "scaled_linear"},
    refused={"sigmoid": "this project has no sigmoid schedule", "laplace": "this project has no laplace schedule"},
)
#: What the network's (first C) output channels predict.
PREDICTIONS = NameTable(
    "mean_type", "prediction_type", {"eps": "epsilon", "x0": "sample", "v": "v_prediction"},
    refused={
        "mu": "the network predicts the posterior mean mu~ (Table 2's mu rows): diffusers' schedulers take only "
              "epsilon, sample or v_prediction outputs, so a pipeline would sample it wrongly",
    },
)
#: How the reverse-process variance is chosen.
VARIANCES = NameTable(
    "var_type", "variance_type",
    {"fixed_large": "fixed_large", "fixed_small": "fixed_small", "learned_range": "learned_range"},
    aliases={"fixed_large_log": "fixed_large", "fixed_small_log": "fixed_small"},
    refused={
        "learned": "this project's learned variance outputs log sigma^2, while diffusers' 'learned' reads the "
                   "extra channels as a variance and 'learned_range' as an interpolation weight, so neither "
                   "samples the other's model correctly",
    },
)
