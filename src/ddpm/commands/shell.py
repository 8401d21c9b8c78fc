"""The entry points of the two commands whose scripts sit at the repository root: ``python train.py`` and
``python sample.py`` (console scripts ``ddpm-train`` and ``ddpm-sample``). Each is the shared Hydra shell
(:func:`ddpm.core.cli.hydra_app`: ``--help``, the command line checked before anything heavy is imported, user
errors as one ``Error:`` line) around its application, imported only once the settings are good. The other
commands are ``python -m ddpm.<tool>``, each with its ``main`` in its own module."""

from __future__ import annotations

from typing import Any

from ddpm.core.cli import hydra_app, setup_console

__all__ = ["sample", "train"]


def _train(cfg: Any) -> float | None:
    from ddpm.commands.training import train as run_training

    setup_console()  # again: importing Lightning (only now) gave it its own console handler, each line twice
    metrics, _ = run_training(cfg)
    return metrics.get("val/bpd")  # what a Hydra sweeper (e.g. Optuna) minimises


def _sample(cfg: Any) -> dict:
    from ddpm.commands.sampling import sample as run_sampling

    setup_console()  # as in _train
    return run_sampling(cfg)


def train() -> None:
    """``python train.py`` / ``ddpm-train``: the Hydra app of conf/train.yaml."""
    hydra_app("train", _train)


def sample() -> None:
    """``python sample.py`` / ``ddpm-sample``: the Hydra app of conf/sample.yaml."""
    hydra_app("sample", _sample)
