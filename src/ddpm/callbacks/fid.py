"""FID / IS during training, DDP-safe.

Every ``every_n_steps`` optimizer steps each rank samples its share of ``num_samples`` images (image ``i``
seeded by ``seeds_for(seed, i, i+1)``, ranks take ``i = rank, rank + world, ...``, so the set of images is
the same as ``sample.py seed=SEED num_samples=N`` with the same sampler and weights), feeds them to a
:class:`~ddpm.metrics.streaming.StreamingFIDIS` (torchmetrics; its states are summed across ranks in
``compute()``), logs ``val/fid_<n>`` and ``val/is_<n>`` (with the sampler in the key when it is not the full
chain, e.g. ``val/fid_5k_ddim100``) and resets the metric. All ranks do the same work and meet only in the
metric's collective sync, so nothing waits on rank 0 (user-needs P5 / A20).

Reference statistics: ``ref_stats=PATH``, or built once from the datamodule's ``ref_split`` and cached under
``cache_dir`` with the canonical name (:func:`ddpm.metrics.refstats.ref_stats_path`). Each rank loads (or
builds) them itself; files are written atomically, so concurrent ranks are safe.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
import torch

from ddpm.generate import SamplerConfig, generate, seeds_for, to_uint8

log = logging.getLogger("ddpm.fid")


class FIDCallback(L.Callback):
    def __init__(
        self,
        every_n_steps: int = 10000,
        num_samples: int = 5000,
        batch_size: int = 256,
        seed: int = 0,
        sampler: str = "ddim",
        steps: int | None = 100,
        eta: float = 0.0,
        clip_denoised: bool = True,
        use_ema: bool = True,
        feature_extractor: str = "inception",
        inception_weights: str | None = None,
        ref_split: str = "train",
        ref_stats: str | None = None,
        cache_dir: str | None = None,
        is_splits: int = 10,
        on_train_end: bool = False,
        prefix: str = "val",
    ) -> None:
        if num_samples < 2:
            raise ValueError(f"fid.num_samples must be >= 2, got {num_samples}")
        self.every_n_steps = int(every_n_steps)
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.sampler = SamplerConfig(
            name=sampler,
            steps=None if sampler == "ancestral" else steps,
            eta=eta,
            clip_denoised=clip_denoised,
        )
        self.use_ema = use_ema
        self.feature_extractor = feature_extractor
        self.inception_weights = inception_weights
        self.ref_split = ref_split
        self.ref_stats = ref_stats
        self.cache_dir = cache_dir
        self.is_splits = int(is_splits)
        self.run_on_train_end = on_train_end
        self.prefix = prefix
        self.metric = None
        self._last_step = None
        self.last_result: dict | None = None

    # ------------------------------------------------------------------ setup
    def _build_metric(self, trainer, pl_module) -> None:
        from ddpm.metrics.extractors import get_extractor
        from ddpm.metrics.refstats import RefStats, reference_stats
        from ddpm.metrics.streaming import StreamingFIDIS

        device = pl_module.device
        extractor = get_extractor(self.feature_extractor, weights_path=self.inception_weights, device=device)
        if self.ref_stats:
            ref = RefStats.load(self.ref_stats, extractor=extractor.name)
        else:
            dm = trainer.datamodule
            if dm is None or not hasattr(dm, "iter_uint8"):
                raise ValueError("FIDCallback needs a datamodule with iter_uint8() or ref_stats=PATH")
            cache = Path(self.cache_dir) / "refstats" if self.cache_dir else None
            ref, _ = reference_stats(dm, self.ref_split, extractor, cache_dir=cache, device=device)
        # Sync through the trainer's process group; dist_sync_on_step off (we sync once in compute()).
        self.metric = StreamingFIDIS(extractor, ref, splits=self.is_splits).to(device)

    def key(self, name: str, num_timesteps: int) -> str:
        from ddpm.sampling import fid_key, sampler_label

        return f"{self.prefix}/{fid_key(name, self.num_samples, sampler_label(self.sampler, num_timesteps))}"

    # ------------------------------------------------------------------ hooks
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps <= 0 or step == 0 or step % self.every_n_steps != 0 or step == self._last_step:
            return
        self._last_step = step
        self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.run_on_train_end and trainer.global_step != self._last_step:
            self._last_step = trainer.global_step
            self.evaluate(trainer, pl_module)

    @torch.no_grad()
    def evaluate(self, trainer, pl_module) -> dict:
        """Sample this rank's images, update the metric, compute (collective), log, reset."""
        if self.metric is None:
            self._build_metric(trainer, pl_module)
        metric = self.metric
        metric.to(pl_module.device)
        rank, world = trainer.global_rank, trainer.world_size
        indices = list(range(rank, self.num_samples, world))
        was_training = pl_module.training
        pl_module.eval()
        start = time.time()
        model_fn = pl_module.model_fn(use_ema=self.use_ema)
        for k in range(0, len(indices), self.batch_size):
            idx = indices[k : k + self.batch_size]
            seeds = [seeds_for(self.seed, i, i + 1)[0] for i in idx]
            x = generate(model_fn, pl_module.diffusion, seeds, pl_module.image_shape, self.sampler,
                         device=pl_module.device)
            metric.update(to_uint8(x.float()), index=idx)  # IS splits follow the sample order
        result = metric.compute()  # all ranks: collective sum of the states
        metric.reset()
        if was_training:
            pl_module.train()
        T = pl_module.diffusion.num_timesteps
        from ddpm.metrics.fid import metric_key

        n = self.num_samples
        fid = float(result[metric_key("fid", n)])
        is_mean = float(result[metric_key("is", n)])
        logged = {self.key("fid", T): fid, self.key("is", T): is_mean}
        for k, v in logged.items():
            # identical on every rank (synced states): no further reduction
            pl_module.log(k, v, on_step=True, on_epoch=False, sync_dist=False, batch_size=1)
        self.last_result = {**logged, "seconds": time.time() - start, **result}
        if trainer.is_global_zero:
            log.info("step %d: %s (%.1f s)", trainer.global_step, logged, time.time() - start)
        return self.last_result
