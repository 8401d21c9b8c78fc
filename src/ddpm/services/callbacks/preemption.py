"""Preemption: on SIGTERM / SIGUSR1 (configurable) write ``last.ckpt`` at the next step boundary and stop.

SLURM sends SIGUSR1 (``--signal=USR1@90``) or SIGTERM before killing a job. The run started again in the same
directory with ``ckpt_path=last`` continues from that checkpoint.
"""

from __future__ import annotations

import signal
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from ddpm.core.rundir import LAST, last_checkpoint


class Preemption(L.Callback):
    def __init__(self, signals: list[str] | tuple[str, ...], dirpath: str | None = None):
        """``signals``: conf/train.yaml's ``preemption_signals``; ``dirpath``: where last.ckpt goes (default: the
        run directory's checkpoints/)."""
        valid = sorted(s for s in dir(signal) if s.startswith("SIG") and not s.startswith("SIG_"))
        for name in signals:
            if name not in valid:
                raise ValueError(f"preemption signal {name!r} is not a signal name; valid: {valid}")
        self.signals = list(signals)
        self.dirpath = dirpath
        self.received: str | None = None
        self.saved_step: int | None = None  # train() does not write last.ckpt again after fit
        self.step_at_batch_start: int | None = None
        self._previous: dict = {}

    def _handler(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name

    def on_train_start(self, trainer, pl_module) -> None:
        for name in self.signals:
            sig = getattr(signal, name)
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread (e.g. a spawned worker): leave signals alone
                pass

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.step_at_batch_start = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Act at an optimizer-step boundary only (this batch ended with an optimizer step): mid-way through a
        # gradient-accumulation window the checkpoint would hold step N's weights but a resume would not redo
        # the lost micro-batches of step N+1 alike.
        if trainer.global_step == self.step_at_batch_start:
            return
        # The flag is set on whichever ranks got the signal; agree across ranks before acting.
        flag = trainer.strategy.reduce_boolean_decision(self.received is not None, all=False)
        if not flag:
            return
        path = Path(self.dirpath) / LAST if self.dirpath else last_checkpoint(trainer.default_root_dir)
        if self.saved_step != trainer.global_step:
            trainer.save_checkpoint(path, weights_only=False)
            self.saved_step = trainer.global_step
        rank_zero_info(f"[ddpm] received {self.received}: wrote {path} at step {trainer.global_step}; exiting.")
        trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous.clear()
