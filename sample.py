"""Sample from a trained (or published) DDPM.

``python sample.py ckpt_path=RUN/checkpoints/last.ckpt num_samples=N``

Writes ``samples.npz`` (``arr_0`` uint8 [N, H, W, 3]), ``samples.png`` and ``metrics.json`` to ``out_dir``;
``nll=true`` computes test-split bits/dim instead. See conf/sample.yaml for every option and README.md.
"""

import hydra
from omegaconf import DictConfig

import ddpm.config  # noqa: F401  (registers the structured-config schemas)
from ddpm.cli import preflight, run


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    if cfg.nll:
        from ddpm.nll import evaluate_nll

        run(lambda: evaluate_nll(cfg))
    else:
        from ddpm.sampling import sample

        run(lambda: sample(cfg))


if __name__ == "__main__":
    preflight("sample")
    main()
