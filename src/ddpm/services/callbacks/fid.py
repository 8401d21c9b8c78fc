"""FID / IS during training, DDP-safe.

Every ``every_n_steps`` optimizer steps each rank samples its share of ``num_samples`` images (image ``i``
seeded by ``seeds_for(seed, i, i+1)``, ranks take ``i = rank, rank + world, ...``, so the set of images is
the same as ``sample.py seed=SEED num_samples=N`` with the same sampler and weights), feeds them to a
:class:`~ddpm.services.metrics.streaming.StreamingFIDIS` (torchmetrics; its states are summed across ranks in
``compute()``), logs ``val/fid_<n>`` and ``val/is_<n>`` (with the sampler in the key when it is not the full
chain, e.g. ``val/fid_5k_ddim100``) and resets the metric. All ranks do the same work and meet only in the
metric's collective sync, so nothing waits on rank 0.

Reference statistics: ``ref_stats=PATH``, or built once from the datamodule's ``ref_split`` and cached under
``cache_dir`` with the canonical name (:func:`ddpm.services.metrics.refstats.ref_stats_path`). Each rank loads (or
builds) them itself; files are written atomically, so concurrent ranks are safe.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L
import torch
from omegaconf import OmegaConf

from ddpm.core.config import SamplerConfig
from ddpm.core.data import model_to_uint8
from ddpm.services.generate import check_labels, class_labels, generate, seeds_for

log = logging.getLogger("ddpm.fid")


class FIDCallback(L.Callback):
    """The settings and their defaults are in conf/callbacks/fid.yaml (``sampler``: a ``sampler`` group option,
    ``metric``: the ``fid`` group); ``prefix``: the metric keys' (``val/fid_5k``)."""

    def __init__(
        self,
        *,
        every_n_steps: int,
        num_samples: int,
        batch_size: int,
        seed: int,
        sampler: dict | SamplerConfig,
        metric: dict,
        use_ema: bool,
        cache_dir: str | None,
        on_train_end: bool,
        labels: Any,
        guidance_scale: float,
        prefix: str = "val",
    ) -> None:
        if num_samples < 2:
            raise ValueError(f"fid.num_samples must be >= 2, got {num_samples}")
        self.every_n_steps = int(every_n_steps)
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.sampler = SamplerConfig.from_node(sampler)
        self.fid_cfg = OmegaConf.create(OmegaConf.to_container(metric, resolve=True)
                                        if OmegaConf.is_config(metric) else dict(metric))
        self.use_ema = use_ema
        self.cache_dir = cache_dir
        self.run_on_train_end = on_train_end
        self.labels = OmegaConf.to_container(labels) if OmegaConf.is_config(labels) else labels
        self.guidance_scale = float(guidance_scale)
        self.prefix = prefix
        self.metric = None
        self._last_step = None
        self.last_result: dict | None = None

    # ------------------------------------------------------------------ setup
    def _build_metric(self, trainer, pl_module) -> None:
        from ddpm.services.metrics.samples import load_extractor, reference_for
        from ddpm.services.metrics.streaming import StreamingFIDIS

        device = pl_module.device
        dm = trainer.datamodule
        if not self.fid_cfg.ref_stats and (dm is None or not hasattr(dm, "iter_uint8")):
            raise ValueError("FIDCallback needs a datamodule with iter_uint8() or ref_stats=PATH")
        extractor = load_extractor(self.fid_cfg, getattr(dm, "name", None), device)
        ref = reference_for(self.fid_cfg, extractor, dm, self.cache_dir, device)
        # Sync through the trainer's process group; dist_sync_on_step off (we sync once in compute()).
        self.metric = StreamingFIDIS(extractor, ref, splits=int(self.fid_cfg.is_splits)).to(device)

    def key(self, name: str, num_timesteps: int) -> str:
        from ddpm.services.metrics.samples import fid_key

        label = "" if self.sampler.is_full_chain(num_timesteps) else self.sampler.label  # the paper's chain: none
        return f"{self.prefix}/{fid_key(name, self.num_samples, label)}"

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
        num_classes = getattr(pl_module, "num_classes", None)
        check_labels(self.labels, self.guidance_scale, num_classes)
        for k in range(0, len(indices), self.batch_size):
            idx = indices[k : k + self.batch_size]
            seeds = [seeds_for(self.seed, i, i + 1)[0] for i in idx]
            cond = {} if not num_classes else {  # a conditional model: image i's class from (labels, seed, i)
                "labels": torch.cat([class_labels(self.labels, self.seed, i, i + 1, num_classes) for i in idx]),
                "guidance_scale": self.guidance_scale, "num_classes": num_classes}
            x = generate(model_fn, pl_module.diffusion, seeds, pl_module.image_shape, self.sampler,
                         device=pl_module.device, **cond)
            metric.update(model_to_uint8(x.float()), index=idx)  # IS splits follow the sample order
        result = metric.compute()  # all ranks: collective sum of the states
        metric.reset()
        if was_training:
            pl_module.train()
        T = pl_module.diffusion.num_timesteps
        from ddpm.services.metrics.fid import metric_key

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
