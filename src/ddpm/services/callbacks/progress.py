"""The training progress bar: optimizer steps out of the run's step budget (``trainer.max_steps``), with the
loss, the rate and an ETA; a plain line at every tenth of the run when the output is not a terminal."""

from __future__ import annotations

from lightning.pytorch.callbacks import ProgressBar

from ddpm.services.runtime import Progress


class StepProgressBar(ProgressBar):
    """Lightning's progress bars count batches per epoch (``Epoch 21/-2`` when only a step budget is set):
    this one counts optimizer steps of the whole run, from the resumed step, and ignores epochs."""

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._progress: Progress | None = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer, pl_module) -> None:
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else 0
        self._progress = Progress(total, self._enabled and trainer.is_global_zero, "training", unit="step",
                                  initial=trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._progress is None:
            return
        loss = self.get_metrics(trainer, pl_module).get("train/loss")
        self._progress.set(trainer.global_step, f"loss {float(loss):.4f}" if loss is not None else "")

    def on_train_end(self, trainer, pl_module) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
