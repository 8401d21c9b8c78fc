"""Sample from a trained (or published) DDPM.

``python sample.py ckpt_path=RUN/checkpoints/last.ckpt num_samples=N``

Writes ``samples.npz`` (``arr_0`` uint8 [N, H, W, 3]), ``samples.png`` and ``metrics.json`` to ``out_dir``.
See conf/sample.yaml for every option (``--help`` lists them) and README.md. The same command is the console
script ``ddpm-sample`` (:func:`ddpm.commands.shell.sample`); the NLL bound is ``python -m ddpm.nll``.
"""

from ddpm.commands.shell import sample

if __name__ == "__main__":
    sample()
