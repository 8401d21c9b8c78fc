"""Data modules: one LightningDataModule per dataset, sharing :class:`ImageDataModule`.

All of them yield float32 ``[B, C, H, W]`` batches scaled as in the paper (``x / 127.5 - 1``, no
dequantisation noise), take the GLOBAL ``batch_size`` and split it per device, and expose ``name`` and
``image_shape`` right after ``__init__``. ``iter_uint8(split)`` gives the real uint8 images for FID stats.

``DATASETS`` maps the Hydra option names (``conf/data/<name>.yaml``) to their classes.
"""

from ddpm.data.base import (
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
from ddpm.data.cifar10 import CIFAR10DataModule
from ddpm.data.digits import DigitsDataModule
from ddpm.data.folder import (
    CelebAHQDataModule,
    ImageDecodeError,
    ImageFolderDataModule,
    LSUNBedroomDataModule,
    LSUNCatDataModule,
    LSUNChurchDataModule,
    LSUNDataModule,
)

DATASETS: dict[str, type[ImageDataModule]] = {
    "digits": DigitsDataModule,
    "cifar10": CIFAR10DataModule,
    "image_folder": ImageFolderDataModule,
    "celebahq256": CelebAHQDataModule,
    "lsun_church256": LSUNChurchDataModule,
    "lsun_bedroom256": LSUNBedroomDataModule,
    "lsun_cat256": LSUNCatDataModule,
}

__all__ = [
    "DATASETS",
    "CIFAR10DataModule",
    "CelebAHQDataModule",
    "DatasetNotFoundError",
    "DigitsDataModule",
    "EpochSampler",
    "ImageDataModule",
    "ImageDecodeError",
    "ImageFolderDataModule",
    "LSUNBedroomDataModule",
    "LSUNCatDataModule",
    "LSUNChurchDataModule",
    "LSUNDataModule",
    "ModelImages",
    "ResumableDataLoader",
    "TensorImages",
    "model_to_uint8",
    "per_device_batch",
    "uint8_to_model",
]
