"""Train a DDPM. ``python train.py`` runs the offline digits quickstart; see README.md for the paper's runs."""

import hydra
from omegaconf import DictConfig

import ddpm.config  # noqa: F401  (registers the structured-config schemas)
from ddpm.cli import preflight, run


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from ddpm.training import train

    metrics, _ = run(lambda: train(cfg))
    return metrics.get("val/bpd")


if __name__ == "__main__":
    preflight("train")
    main()
