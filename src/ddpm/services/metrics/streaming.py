"""The streaming FID/IS metric of the training FID callback (torchmetrics, DDP-safe)."""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from ddpm.services.metrics.features import Extractor, to_nchw_uint8
from ddpm.services.metrics.fid import check_ref, fid_is_from_stats
from ddpm.services.metrics.refstats import RefStats

__all__ = ["StreamingFIDIS"]


class StreamingFIDIS(Metric):
    """torchmetrics FID/IS for the training callback; DDP-safe via summed float64 states.

    States (per rank, synced with ``dist_reduce_fx``): ``feat_sum`` [D] and ``feat_outer`` [D, D] (sums of
    features and of their outer products, float64, centred on ``ref.mu`` to avoid cancellation), ``count``,
    and all ``logits`` (concatenated; needed for IS splits) with the images' ``index`` when ``update`` is given
    one: IS splits the logits into contiguous chunks, so they are put back in index order first, and the IS
    does not depend on how the images were shared among ranks. ``compute()`` returns the same dict as
    :func:`compute_fid_is`. The extractor is kept outside the module tree (it is not saved in checkpoints);
    it is moved to the device of the images on first use. Call ``reset()`` after ``compute()``.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = False

    def __init__(self, extractor: Extractor, ref: RefStats, splits: int = 10, **kwargs):
        super().__init__(**kwargs)
        d = int(ref.dim)
        check_ref(ref, extractor.name, d)
        self.__dict__["_extractor"] = extractor.eval()
        self._ref = ref
        self.splits = splits
        # plain attribute, not a buffer: Module.half()/bfloat16() must never touch it
        self.__dict__["_shift"] = torch.as_tensor(ref.mu, dtype=torch.float64)
        self.add_state("feat_sum", default=torch.zeros(d, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("feat_outer", default=torch.zeros(d, d, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("logits", default=[], dist_reduce_fx="cat")
        self.add_state("index", default=[], dist_reduce_fx="cat")

    @property
    def extractor(self) -> Extractor:
        return self.__dict__["_extractor"]

    def update(self, images, index=None) -> None:
        """Add a batch of images; ``index`` (one int per image, e.g. its sample number) orders the IS splits."""
        x = to_nchw_uint8(images)
        ext = self.extractor
        if ext.device() != x.device:
            ext.to(x.device)
        with torch.no_grad():
            out = ext(x)
        f = out["features"].to(torch.float64)
        f = f - self.__dict__["_shift"].to(f.device)
        self.feat_sum += f.sum(dim=0)
        self.feat_outer += f.T @ f
        self.count += f.shape[0]
        self.logits.append(out["logits"].to(torch.float64))
        if index is not None:
            index = torch.as_tensor(index, dtype=torch.int64, device=f.device).reshape(-1)
            if index.numel() != f.shape[0]:
                raise ValueError(f"index has {index.numel()} entries for {f.shape[0]} images")
            self.index.append(index)

    def compute(self) -> dict:
        n = int(self.count)
        if n < 2:
            raise ValueError(f"FID needs at least 2 samples, got {n}")
        m = self.feat_sum / n
        sigma = (self.feat_outer - n * torch.outer(m, m)) / (n - 1)
        sigma = 0.5 * (sigma + sigma.T)
        mu = (m.cpu() + self.__dict__["_shift"]).numpy()
        logits = dim_zero_cat(self.logits)
        if len(self.index) > 0:  # sample order, whatever the ranks' shares
            index = dim_zero_cat(self.index)
            if index.numel() != logits.shape[0]:
                raise ValueError("update() was called with an index for some batches and without for others")
            logits = logits[torch.argsort(index.to(logits.device))]
        logits = logits.cpu().numpy()
        return fid_is_from_stats(
            mu, sigma.cpu().numpy(), n, logits, self._ref, self.extractor.name, splits=self.splits
        )
