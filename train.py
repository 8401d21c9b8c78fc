"""Train a DDPM. ``python train.py`` runs the offline digits quickstart; see README.md for the paper's runs.

The Hydra app of conf/train.yaml (``--help`` lists its settings); the same command is the console script
``ddpm-train`` (:func:`ddpm.commands.shell.train`)."""

from ddpm.commands.shell import train

if __name__ == "__main__":
    train()
