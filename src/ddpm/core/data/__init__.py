"""Data modules: one LightningDataModule per dataset, sharing :class:`ImageDataModule`.

All of them yield float32 ``[B, C, H, W]`` batches scaled as in the paper (``x / 127.5 - 1``, no
dequantisation noise), take the GLOBAL ``batch_size`` and split it per device, and expose ``name`` and
``image_shape`` right after ``__init__``. ``iter_uint8(split)`` gives the real uint8 images for FID stats.

The Hydra options (``conf/data/<name>.yaml``) target these classes; CelebA-HQ and LSUN are
:class:`ImageFolderDataModule` with their own settings.
"""

from ddpm.core.data.base import (
    DatasetNotFoundError,
    EpochSampler,
    ImageDataModule,
    ModelImages,
    ResumableDataLoader,
    TensorImages,
    model_to_uint8,
    per_device_batch,
    uint8_to_model,
)
from ddpm.core.data.cifar10 import CIFAR10DataModule
from ddpm.core.data.digits import DigitsDataModule
from ddpm.core.data.folder import ImageDecodeError, ImageFolderDataModule

__all__ = [
    "CIFAR10DataModule",
    "DatasetNotFoundError",
    "DigitsDataModule",
    "EpochSampler",
    "ImageDataModule",
    "ImageDecodeError",
    "ImageFolderDataModule",
    "ModelImages",
    "ResumableDataLoader",
    "TensorImages",
    "model_to_uint8",
    "per_device_batch",
    "uint8_to_model",
]
