"""scikit-learn's bundled 8x8 digits: the offline quickstart dataset (no download, nothing on disk).

``sklearn.datasets.load_digits`` ships 1797 grayscale 8x8 images with integer values ``0..16``. They are
mapped to uint8 by ``round(v * 255 / 16)`` and then scaled like every other dataset (``x / 127.5 - 1``).
The shuffled set (fixed generator seeded by ``seed``) is split into train / val / test, 80 / 10 / 10 by
default; the three splits are disjoint.

Random flips are OFF by default: digits are not symmetric under a horizontal flip (a flipped 3 is not a 3).
"""

from __future__ import annotations

from torch.utils.data import Dataset

from ddpm.data.base import ImageDataModule, TensorImages


class DigitsDataModule(ImageDataModule):
    """scikit-learn digits, 1 channel, 8x8 (or ``8*upscale`` with nearest-neighbour upscaling).

    Args:
        batch_size: GLOBAL training batch (default 128).
        random_flip: default False (digits are not flip-symmetric).
        upscale: integer nearest-neighbour upscaling factor (2 -> 16x16); 1 keeps 8x8.
        val_fraction, test_fraction: held-out fractions of the seeded shuffle (default 0.1 each).
        Other args: see :class:`~ddpm.data.base.ImageDataModule`.
    """

    def __init__(
        self,
        batch_size: int = 128,
        num_workers: int = 0,
        random_flip: bool = False,
        eval_batch_size: int | None = None,
        seed: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        upscale: int = 1,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            random_flip=random_flip,
            eval_batch_size=eval_batch_size,
            seed=seed,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
        )
        if int(upscale) < 1:
            raise ValueError(f"data.upscale must be an integer >= 1, got {upscale}")
        self.upscale = int(upscale)
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        size = 8 * self.upscale
        self.image_shape = (1, size, size)
        self.name = "digits" if self.upscale == 1 else f"digits_{size}"

    def _build_splits(self) -> dict[str, Dataset]:
        from ddpm.metrics.digits import digits_split_indices, load_digits_uint8

        images, _ = load_digits_uint8()  # the same loader (and split rule) as the quality classifier
        if self.upscale > 1:
            images = images.repeat_interleave(self.upscale, dim=2).repeat_interleave(self.upscale, dim=3)
        # The same split as the digits classifier behind the quality score (ddpm.metrics.digits), so its
        # "real held-out digits" are never in the diffusion model's training set.
        train, val, test = digits_split_indices(images.shape[0], self.seed, self.val_fraction, self.test_fraction)
        idx = {"train": train.sort().values, "val": val.sort().values, "test": test.sort().values}
        return {k: TensorImages(images[v].contiguous()) for k, v in idx.items()}
