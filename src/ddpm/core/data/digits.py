"""scikit-learn's bundled 8x8 digits: the offline quickstart dataset (no download, nothing on disk).

``sklearn.datasets.load_digits`` ships 1797 grayscale 8x8 images with integer values ``0..16``. They are
mapped to uint8 by ``round(v * 255 / 16)`` and then scaled like every other dataset (``x / 127.5 - 1``).
The shuffled set (fixed generator seeded by ``seed``) is split into train / val / test, 80 / 10 / 10 by
default; the three splits are disjoint.

Random flips are OFF by default: digits are not symmetric under a horizontal flip (a flipped 3 is not a 3).

:func:`digits_split_indices` is THE train/val/test split of the digits used across the project: the data
module, the digits classifier behind the quality score (``ddpm.services.metrics.digits_classifier``) and its reference
statistics all take it from here, so they agree on which images are held out.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ddpm.core.data.base import ImageDataModule, TensorImages

N_DIGITS = 1797
SPLIT_SEED = 0


def digits_split_indices(
    n: int = N_DIGITS, seed: int = SPLIT_SEED, val_fraction: float = 0.1, test_fraction: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train_idx, val_idx, test_idx)``: ``torch.randperm(n,
    generator=torch.Generator().manual_seed(seed))``, then the first ``floor((1 - val - test) n)`` are train,
    the next ``floor(val n)`` val and the rest test.

    For the 1797 sklearn digits with the defaults: 1437 / 179 / 181.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"data.val_fraction={val_fraction}, data.test_fraction={test_fraction} is not valid: expected "
                         "two fractions in [0, 1) that sum to less than 1 (the held-out shares; the rest trains)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_train, n_val = int((1.0 - val_fraction - test_fraction) * n + 1e-9), int(val_fraction * n)
    return perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]


@lru_cache(maxsize=1)
def _load_digits_cached() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # [1797, 8, 8]
    return images, d.target.astype(np.int64)


def load_digits_uint8() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits as uint8 ``[N, 1, 8, 8]`` (``round(v * 255 / 16)``) and int64 labels ``[N]``."""
    images, labels = _load_digits_cached()
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.copy())


def digits_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images ``[n, 1, 8, 8]`` and labels of ``split`` (``train | val | test | all``) of the default split."""
    x, y = load_digits_uint8()
    if split == "all":
        return x, y
    idx = dict(zip(("train", "val", "test"), digits_split_indices(x.shape[0])))
    if split not in idx:
        raise ValueError(f"unknown digits split {split!r} (train, val, test, all)")
    return x[idx[split]], y[idx[split]]


class DigitsDataModule(ImageDataModule):
    """scikit-learn digits, 1 channel, 8x8 (or ``8*upscale`` with nearest-neighbour upscaling).

    Args:
        upscale: integer nearest-neighbour upscaling factor (2 -> 16x16); 1 keeps 8x8.
        val_fraction, test_fraction: held-out fractions of the seeded shuffle (default 0.1 each).
        random_flip: default False (digits are not flip-symmetric).
        Other args (``batch_size`` default 128, ``seed`` of the split, ...): see
        :class:`~ddpm.core.data.base.ImageDataModule`.
    """

    def __init__(
        self,
        upscale: int = 1,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        random_flip: bool = False,
        **loader: Any,
    ) -> None:
        super().__init__(random_flip=random_flip, **loader)
        if int(upscale) < 1:
            raise ValueError(f"data.upscale must be an integer >= 1, got {upscale}")
        self.upscale = int(upscale)
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        size = 8 * self.upscale
        self.image_shape = (1, size, size)
        self.name = "digits" if self.upscale == 1 else f"digits_{size}"

    def _build_splits(self) -> dict[str, Dataset]:
        images, labels = load_digits_uint8()  # the same loader (and split rule) as the quality classifier
        if self.upscale > 1:
            images = images.repeat_interleave(self.upscale, dim=2).repeat_interleave(self.upscale, dim=3)
        # The same split as the digits classifier behind the quality score, so its "real held-out digits"
        # are never in the diffusion model's training set.
        train, val, test = digits_split_indices(images.shape[0], self.seed, self.val_fraction, self.test_fraction)
        idx = {"train": train.sort().values, "val": val.sort().values, "test": test.sort().values}
        return {k: TensorImages(images[v].contiguous(), labels[v].contiguous()) for k, v in idx.items()}

    def class_names(self) -> list[str]:
        """The ten digits, label ``i`` = digit ``i`` (sklearn's targets)."""
        return [str(i) for i in range(10)]
