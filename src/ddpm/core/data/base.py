"""Shared base of the DDPM data modules.

Every data module hands the model float32 images ``[C, H, W]`` scaled exactly as in the paper
(Ho et al. 2020, §3.3; official ``tpu_utils.normalize_data``): the integers ``0..255`` are mapped to
``x / 127.5 - 1``, so neighbouring levels are ``2/255`` apart and **no dequantisation noise** is added
(the discretised decoder L_0 makes the loss a lossless codelength of the integer data).

Subclasses only provide the real images as uint8 ``[C, H, W]`` tensors per split (``"train"``,
``"val"``, ``"test"``) by implementing :meth:`ImageDataModule._build_splits`. The base then provides:

* the global -> per-device batch split (``batch_size`` is the **global** batch, paper: 128 for CIFAR-10,
  64 at 256^2; each device gets ``batch_size // world_size``, and a batch that does not divide raises),
* the random horizontal flip, on the training split only and only when ``random_flip`` is true,
* the three dataloaders (batches are plain ``[B, C, H, W]`` tensors, not tuples); the training one is a
  :class:`ResumableDataLoader` over an :class:`EpochSampler`: the order and the flips of epoch ``e`` are a
  function of ``(shuffle_seed, e)`` alone, and Lightning saves and restores the position inside the epoch,
  so a resume from a mid-epoch checkpoint continues with exactly the batches the uninterrupted run sees,
* :meth:`ImageDataModule.iter_uint8`, the un-normalised real images in a fixed order (FID reference stats).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ddpm.core.seeds import derive_seed

SPLITS = ("train", "val", "test")


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is missing or empty; the message says how to get it."""


def uint8_to_model(x: torch.Tensor) -> torch.Tensor:
    """uint8 ``{0..255}`` -> float32 ``[-1, 1]`` via ``x / 127.5 - 1`` (paper scaling, no dequantisation)."""
    if x.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 image tensor, got {x.dtype}")
    return x.to(torch.float32) / 127.5 - 1.0


def model_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`uint8_to_model`: float ``[-1, 1]`` -> uint8 ``round((x + 1) * 127.5)``, clamped to 0..255.

    The one quantisation of model outputs (saved samples, grids, FID/IS): rounding to the nearest level is
    unbiased and inverts the data scaling exactly (``model_to_uint8(u / 127.5 - 1) == u`` for every uint8
    ``u``); the official TF code truncates instead, half a level lower on average, far below the noise of a
    50k FID. Arrays are accepted; uint8 input is returned unchanged.
    """
    if not torch.is_tensor(x):
        x = torch.as_tensor(x)
    if x.dtype == torch.uint8:
        return x
    return ((x.to(torch.float32) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


class TensorImages(Dataset):
    """Images held in memory as one uint8 tensor ``[N, C, H, W]``; item ``i`` is ``images[i]``.

    ``labels`` (int64 ``[N]``, optional): the class of each image, for class-conditional training
    (:class:`ModelImages` with ``with_labels=True``); items stay images only.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"expected uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if labels is not None and tuple(labels.shape) != (images.shape[0],):
            raise ValueError(f"expected labels of shape [{images.shape[0]}], got {tuple(labels.shape)}")
        self.images = images
        self.labels = None if labels is None else labels.to(torch.int64)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


class ModelImages(Dataset):
    """Wraps a uint8 image dataset: scales to ``[-1, 1]`` float32, horizontally flipped on request.

    Item ``i`` is image ``i``; item ``(i, True)`` is its mirror image. The training sampler
    (:class:`EpochSampler`) decides the flips, so they are a function of (seed, epoch, index) and not of
    an RNG's history: that is what makes a mid-epoch resume exact, with or without worker processes.

    ``with_labels=True`` (a class-conditional model): item ``i`` is ``(image, label)``, the label read from the
    source's ``labels`` at the same index, so a label always travels with its image (any order, any rank, any
    resume); batches are then ``[x, y]``.
    """

    def __init__(self, source: Dataset, with_labels: bool = False) -> None:
        self.source = source
        self.labels = getattr(source, "labels", None) if with_labels else None
        if with_labels and self.labels is None:
            raise ValueError(f"{type(source).__name__} has no class labels")

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, bool]) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        index, flip = key if isinstance(key, tuple) else (key, False)
        x = uint8_to_model(self.source[index])
        x = x.flip(-1) if flip else x
        return x if self.labels is None else (x, self.labels[index])


class EpochSampler(DistributedSampler):
    """Training sampler: epoch ``e``'s order and flips depend only on ``(seed, e)``; it can start mid-epoch.

    Every epoch draws a permutation of the ``n`` items and one flip coin per item (probability ``flip_p``,
    the official ``tf.image.random_flip_left_right``'s 0.5 when flips are on) from a generator seeded with
    ``(seed, e)``; the same on every rank. Rank ``r`` of ``R`` takes positions ``r, r+R, ...`` of the
    permutation, the tail cut so that all ranks get ``n // R`` items (no item is repeated to pad). Items
    are indices ``i``, or ``(i, flip)`` when flips are on (see :class:`ModelImages`).

    It is a :class:`~torch.utils.data.DistributedSampler`, so Lightning uses it as it is under DDP and
    calls :meth:`set_epoch` at every epoch start. ``start`` items of this rank's share are skipped by the
    next iteration (set by :class:`ResumableDataLoader` when it resumes inside an epoch). The order is
    drawn lazily, at the first item, so the epoch set just before iterating is the one used.
    """

    def __init__(
        self, dataset: Dataset, seed: int = 0, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
        flip_p: float = 0.0,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        if not 0.0 <= flip_p <= 1.0:
            raise ValueError(f"flip_p must be in [0, 1], got {flip_p}")
        self.flip_p = float(flip_p)
        self.start = 0

    def __iter__(self) -> Iterator[Any]:
        n = len(self.dataset)  # type: ignore[arg-type]
        gen = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        flips = (torch.rand(n, generator=gen) < self.flip_p).tolist() if self.flip_p > 0 else None
        mine = order[: self.total_size][self.rank :: self.num_replicas][self.start :].tolist()
        if flips is None:
            yield from mine
        else:
            for i in mine:
                yield (i, flips[i])


class ResumableDataLoader(DataLoader):
    """The training DataLoader: Lightning saves its position in the epoch and restores it on resume.

    Lightning 2.x calls :meth:`state_dict` when it writes a checkpoint (stored under the fit loop's
    ``combined_loader``) and :meth:`load_state_dict` before the first iteration of a resumed run. The state
    is ``{"epoch", "batches"}``: the batches of that epoch already handed to the training loop (Lightning
    does not prefetch from a loader with a length, so handed out = trained on). On resume, the sampler
    skips those batches if Lightning continues the same epoch; a checkpoint written at the end of an epoch
    resumes with the next epoch, whole. Iterating is lazy: nothing is decided (the epoch, the skip, worker
    prefetch) before the first batch is asked for, after Lightning's ``set_epoch``.

    The constructor is DataLoader's own (so Lightning can rebuild it with another sampler, as
    ``trainer.overfit_batches`` does); the position is only skipped with an :class:`EpochSampler`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._resume: dict[str, int] | None = None
        self._epoch = 0
        self._batches = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self._epoch), "batches": int(self._batches)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}
        self._epoch, self._batches = self._resume["epoch"], self._resume["batches"]

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        sampler = self.sampler if isinstance(self.sampler, EpochSampler) else None
        epoch, skip = (int(sampler.epoch) if sampler is not None else self._epoch), 0
        if self._resume is not None:
            if self._resume["epoch"] == epoch and sampler is not None:
                skip = self._resume["batches"]
            self._resume = None
        self._epoch, self._batches = epoch, skip
        if sampler is not None:
            sampler.start = skip * int(self.batch_size or 1)
        try:
            for batch in super().__iter__():
                self._batches += 1
                yield batch
        finally:
            if sampler is not None:
                sampler.start = 0


def seeded_split(n: int, fractions: dict[str, float], seed: int) -> dict[str, torch.Tensor]:
    """Split ``range(n)`` at random (fixed generator) into the named fractions; ``"train"`` gets the rest.

    Each fraction > 0 gets at least one item. The index lists are sorted, so reading a split is sequential.
    """
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    out: dict[str, torch.Tensor] = {}
    start = 0
    for name, frac in fractions.items():
        if not 0.0 <= frac < 1.0:
            raise ValueError(f"{name}_fraction must be in [0, 1), got {frac}")
        k = 0 if frac == 0 else max(1, round(frac * n))
        out[name] = perm[start : start + k].sort().values
        start += k
    if start >= n:
        held = ", ".join(f"data.{name}_fraction={frac}" for name, frac in fractions.items())
        raise ValueError(f"only {n} image{'s' if n != 1 else ''}: nothing is left for training after the held-out "
                         f"splits ({held}, at least one image each); add images, or set the fractions to 0")
    out["train"] = perm[start:].sort().values
    return out


def usable_workers(num_workers: int) -> int:
    """``num_workers``, at most the CPUs this process may use (more workers than CPUs only compete)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    return min(int(num_workers), cpus)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def per_device_batch(global_batch: int, world_size: int, what: str = "batch_size") -> int:
    """``global_batch // world_size``; raises a ValueError naming the valid choices if it does not divide."""
    if global_batch < 1:
        raise ValueError(f"data.{what} must be >= 1, got {global_batch}")
    if global_batch % world_size:
        lower = global_batch - global_batch % world_size
        upper = lower + world_size
        sizes = f"{lower} or {upper}" if lower > 0 else f"{upper}"
        raise ValueError(
            f"data.{what}={global_batch} is the GLOBAL batch and must be divisible by the world size "
            f"(devices x nodes) = {world_size}. Valid device counts for {global_batch}: "
            f"{_divisors(global_batch)}; or use a global batch that is a multiple of {world_size} "
            f"(e.g. data.{what}={sizes})."
        )
    return global_batch // world_size


class ImageDataModule(L.LightningDataModule):
    """Base LightningDataModule for image datasets (unconditional; labelled ones also give class labels).

    Args:
        batch_size: GLOBAL training batch (paper: 128 for CIFAR-10, 64 at 256^2); every device gets
            ``batch_size // world_size``.
        num_workers: dataloader worker processes.
        random_flip: random horizontal flips (p = 0.5) on the training split only.
        eval_batch_size: GLOBAL batch of the val/test loaders; defaults to ``batch_size``.
        seed: seed of the train/val/test split (datasets that split at random).
        pin_memory: ``DataLoader(pin_memory=...)``.
        persistent_workers: keep workers alive between epochs (only used when ``num_workers > 0``).

    ``shuffle_seed`` (attribute, default 0; ``train.py`` sets it to the run's ``seed``) seeds the epochs'
    order and flips (:class:`EpochSampler`); ``seed`` is only the split's.

    Subclasses set ``self.name`` and ``self.image_shape`` (``(C, H, W)``) in ``__init__``, before
    ``setup``, because the model is sized from them, and implement :meth:`_build_splits`.
    """

    name: str = "images"
    image_shape: tuple[int, int, int] = (3, 32, 32)
    # Class-conditional training (model.num_classes=K): ``train.py`` sets ``with_labels`` before ``setup``, and
    # the datasets then yield ``(image, label)``. :meth:`class_names` says whether the data have classes.
    with_labels: bool = False
    shuffle_seed: int = 0
    flip_p: float = 0.5  # tf.image.random_flip_left_right

    def __init__(
        self,
        batch_size: int = 128,
        num_workers: int = 0,
        random_flip: bool = True,
        eval_batch_size: int | None = None,
        seed: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size) if eval_batch_size is not None else int(batch_size)
        self.num_workers = int(num_workers)
        self.random_flip = bool(random_flip)
        self.seed = int(seed)
        self.pin_memory = bool(pin_memory)
        self.persistent_workers = bool(persistent_workers)
        self._splits: dict[str, Dataset] | None = None
        self.train_dataset: ModelImages | None = None
        self.val_dataset: ModelImages | None = None
        self.test_dataset: ModelImages | None = None

    # ----------------------------------------------------------------- to implement in subclasses
    def _build_splits(self) -> dict[str, Dataset]:
        """Return ``{"train", "val", "test"}`` -> datasets whose items are uint8 ``[C, H, W]`` tensors.

        Raise :class:`DatasetNotFoundError` when the data are missing or empty.
        """
        raise NotImplementedError

    def class_names(self) -> list[str] | None:
        """The classes of a labelled dataset, in label order (label ``i`` is ``class_names()[i]``); ``None`` for an
        unlabelled one. Subclasses with labels override it; it may read the data (a folder's subfolders)."""
        return None

    # ----------------------------------------------------------------- batch sizes
    @property
    def world_size(self) -> int:
        """Number of processes sharing the global batch: ``trainer.world_size``, or 1 without a trainer."""
        trainer = getattr(self, "trainer", None)
        return int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1

    @property
    def per_device_batch_size(self) -> int:
        """Training batch of one device: ``batch_size // world_size`` (raises if it does not divide)."""
        return per_device_batch(self.batch_size, self.world_size, "batch_size")

    @property
    def per_device_eval_batch_size(self) -> int:
        """Val/test batch of one device: ``eval_batch_size // world_size`` (raises if it does not divide)."""
        return per_device_batch(self.eval_batch_size, self.world_size, "eval_batch_size")

    # ----------------------------------------------------------------- Lightning hooks
    def splits(self) -> dict[str, Dataset]:
        """The uint8 datasets per split, built once (reads the data on first call)."""
        if self._splits is None:
            splits = self._build_splits()
            missing = [s for s in SPLITS if s not in splits]
            if missing:
                raise RuntimeError(f"{type(self).__name__}._build_splits() did not return splits {missing}")
            self._splits = splits
        return self._splits

    def setup(self, stage: str | None = None) -> None:
        # Check the batch split first: it fails fast, before any data are read.
        per_device = self.per_device_batch_size
        _ = self.per_device_eval_batch_size
        splits = self.splits()
        if stage in (None, "fit"):
            n_train = len(splits["train"])  # type: ignore[arg-type]
            if n_train < per_device * self.world_size:
                raise ValueError(
                    f"{self.name}: the train split has {n_train} images, fewer than one global batch "
                    f"(data.batch_size={self.batch_size}); with drop_last=True there would be no training "
                    f"step. Lower data.batch_size or add images."
                )
        if self.train_dataset is None:
            labels = bool(self.with_labels)
            self.train_dataset = ModelImages(splits["train"], labels)
            self.val_dataset = ModelImages(splits["val"], labels)
            self.test_dataset = ModelImages(splits["test"], labels)

    def _loader_kwargs(self) -> dict[str, Any]:
        return {
            "num_workers": usable_workers(self.num_workers),
            "pin_memory": self.pin_memory and torch.cuda.is_available(),
            "persistent_workers": self.persistent_workers and self.num_workers > 0,
        }

    def train_sampler(self) -> EpochSampler:
        """The training sampler of this process: seeded by ``shuffle_seed``, this rank's share."""
        assert self.train_dataset is not None
        trainer = getattr(self, "trainer", None)
        rank = int(getattr(trainer, "global_rank", 0) or 0) if trainer is not None else 0
        return EpochSampler(
            self.train_dataset, seed=int(self.shuffle_seed), num_replicas=self.world_size, rank=rank,
            flip_p=self.flip_p if self.random_flip else 0.0,
        )

    def _require_setup(self) -> None:
        if self.train_dataset is None:
            self.setup(None)

    def train_dataloader(self) -> DataLoader:
        self._require_setup()
        assert self.train_dataset is not None
        return ResumableDataLoader(
            self.train_dataset, batch_size=self.per_device_batch_size, sampler=self.train_sampler(), drop_last=True,
            **self._loader_kwargs(),
        )

    def val_dataloader(self) -> DataLoader:
        self._require_setup()
        assert self.val_dataset is not None
        return DataLoader(self.val_dataset, batch_size=self.per_device_eval_batch_size, **self._loader_kwargs())

    def test_dataloader(self) -> DataLoader:
        self._require_setup()
        assert self.test_dataset is not None
        return DataLoader(self.test_dataset, batch_size=self.per_device_eval_batch_size, **self._loader_kwargs())

    # ----------------------------------------------------------------- real images for FID
    def num_images(self, split: str) -> int:
        """Number of images in ``split``."""
        return len(self._split(split))  # type: ignore[arg-type]

    def _split(self, split: str) -> Dataset:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return self.splits()[split]

    def labels(self, split: str = "train") -> torch.Tensor | None:
        """int64 class labels of ``split`` in :meth:`iter_uint8`'s order; ``None`` for unlabelled data."""
        return getattr(self._split(split), "labels", None)

    def iter_uint8(
        self, split: str = "train", max_items: int | None = None, batch_size: int = 256
    ) -> Iterator[torch.Tensor]:
        """Yield the real images of ``split`` as uint8 ``[B, C, H, W]`` batches.

        No flip, no shuffling: the order is fixed (the split's order), so reference statistics are
        reproducible. ``max_items`` keeps the first ``max_items`` images.
        """
        source = self._split(split)
        n = len(source)  # type: ignore[arg-type]
        if max_items is not None:
            n = min(n, int(max_items))
        if n <= 0:
            return
        if isinstance(source, TensorImages):
            for start in range(0, n, batch_size):
                yield source.images[start : min(start + batch_size, n)]
            return
        subset: Any = source if n == len(source) else torch.utils.data.Subset(source, range(n))  # type: ignore[arg-type]
        loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=usable_workers(self.num_workers))
        yield from loader
