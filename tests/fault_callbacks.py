"""Callbacks that tests add to a real ``train.py`` run (``+callbacks.NAME._target_=fault_callbacks.X``, with tests/ on
PYTHONPATH: ``conftest.DDP_ENV``): each rank's pid and weights, a non-finite loss on one rank, each batch's labels."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import lightning as L
import torch


class RankInfo(L.Callback):
    """Each rank writes ``pid_rank<r>.txt`` when training starts and ``weights_sha_rank<r>.txt`` (sha256 of the
    whole module state: raw weights, EMA weights, EMA update count) when it ends."""

    def on_train_start(self, trainer, pl_module) -> None:
        Path(trainer.default_root_dir, f"pid_rank{trainer.global_rank}.txt").write_text(str(os.getpid()))

    def on_train_end(self, trainer, pl_module) -> None:
        h = hashlib.sha256()
        for name, tensor in sorted(pl_module.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        Path(trainer.default_root_dir, f"weights_sha_rank{trainer.global_rank}.txt").write_text(h.hexdigest())


class NaNLossOnRank(L.Callback):
    """On rank ``rank`` only, the loss of optimizer step ``step`` is NaN while its gradients stay finite (a NaN
    constant added to the loss: what a masked or overflowed loss term does)."""

    def __init__(self, rank: int, step: int) -> None:
        self.rank, self.step = rank, step

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.global_rank != self.rank:
            return
        original = pl_module.training_step

        def training_step(batch, batch_idx):
            loss = original(batch, batch_idx)
            return loss + float("nan") if pl_module.global_step == self.step else loss

        pl_module.training_step = training_step


class LabelLog(L.Callback):
    """Each rank writes ``labels_rank<r>.jsonl``: per training batch, the step and each image's bytes (uint8, hex)
    with the label it came with, and the labels after the null-token dropout that the step trained on."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        x, y = pl_module.split_batch(batch)
        images = ((x.detach().cpu() + 1) * 127.5).round().to(torch.uint8)
        dropped = pl_module.drop_labels(y, batch_idx)
        line = {"step": int(trainer.global_step), "images": [im.numpy().tobytes().hex() for im in images],
                "labels": y.tolist(), "trained": dropped.tolist()}
        with open(Path(trainer.default_root_dir, f"labels_rank{trainer.global_rank}.jsonl"), "a") as f:
            f.write(json.dumps(line) + "\n")
