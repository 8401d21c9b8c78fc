"""Diagnostics: ``+callbacks.ema_hash._target_=ddpm.services.callbacks.EMAHash`` writes each rank's EMA-weight hash."""

from __future__ import annotations

import hashlib
from pathlib import Path

import lightning as L


class EMAHash(L.Callback):
    """At the end of training every rank writes ``ema_sha_rank<r>.txt`` (sha256 of its EMA tensors) into the
    run directory: under DDP they must be identical (the EMA follows identical all-reduced weights)."""

    def on_train_end(self, trainer, pl_module) -> None:
        h = hashlib.sha256()
        for name, tensor in sorted(pl_module.ema.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        path = Path(trainer.default_root_dir) / f"ema_sha_rank{trainer.global_rank}.txt"
        path.write_text(h.hexdigest())
