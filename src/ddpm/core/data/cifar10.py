"""CIFAR-10 (32x32 RGB), as in the paper: train on the 50k training images with random horizontal flips.

The files are the standard python-pickle release in torchvision's layout::

    <root>/cifar-10-batches-py/data_batch_1 .. data_batch_5   (50 000 train images)
    <root>/cifar-10-batches-py/test_batch                     (10 000 test images)

Nothing is downloaded unless ``download=true``; then ``prepare_data`` (one process per node) fetches
the release archive at torchvision's address, checks its md5 and unpacks it (when the batches are not
there already). Reading never goes through torchvision (its loader insists on the release's md5 sums and
unpickles with no restriction); the batches are read directly into one uint8 tensor per split (150 MB for
the train split), so items are cheap.

The batches are pickles made by somebody else, so they are read with :class:`DataOnlyUnpickler`, which
builds dicts, lists, strings, numbers and numpy arrays and refuses every other global: a batch file that
would run code when unpickled raises an error instead.

Splits: ``train`` = the 50k training images (FID reference "train", paper 3.17); ``test`` = the 10k test
images (NLL in bits/dim, FID "test", paper 5.24); ``val`` = the test images too, or a seeded random subset
of ``val_size`` of them (validation loss during training; the paper has no separate validation set).
"""

from __future__ import annotations

import codecs
import contextlib
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ddpm.core.data.base import DatasetNotFoundError, ImageDataModule, TensorImages
from ddpm.core.io import DownloadError

BASE_FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)


def find_cifar10_dir(root: str | os.PathLike) -> Path:
    """``<root>/cifar-10-batches-py`` (or ``root`` itself when it already is that folder)."""
    root = Path(root).expanduser()
    if root.name == BASE_FOLDER and (root / TEST_FILES[0]).exists():
        return root
    return root / BASE_FOLDER


def _how_to_get(root: Path, problem: str) -> str:
    return (
        f"CIFAR-10 not found: {problem}. Expected the python-pickle release in "
        f"{root / BASE_FOLDER}/ (data_batch_1..5, test_batch). Either let it download once with "
        f"`data.download=true` (into data.root={root}), or point to an existing copy with "
        f"`data.root=/path/containing/cifar-10-batches-py` (the default root is $DDPM_DATA/cifar10, "
        f"DDPM_DATA defaulting to ./data)."
    )


class UnsafePickleError(pickle.UnpicklingError):
    """A data pickle references a global outside :class:`DataOnlyUnpickler`'s allow-list."""


class DataOnlyUnpickler(pickle.Unpickler):
    """An unpickler for data files: containers, strings, numbers and numpy arrays, nothing that runs code.

    The CIFAR-10 release references only numpy's array reconstruction (``_reconstruct``, ``ndarray``,
    ``dtype``); pickles written by Python 3 also use ``_codecs.encode`` for byte strings. Every other global
    (``os.system``, ``builtins.eval``, any class) raises :class:`pickle.UnpicklingError`.
    """

    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):
            return codecs.encode
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
            return getattr(_numpy_multiarray(), name)
        raise UnsafePickleError(
            f"refusing to unpickle global {module}.{name}: a data file should hold only arrays, lists and "
            f"strings, and this one could run code when loaded"
        )


def _numpy_multiarray():
    try:  # numpy >= 2
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    return multiarray


def _missing_batches(folder: Path, files: tuple[str, ...] = TRAIN_FILES + TEST_FILES) -> list[str]:
    return [f for f in files if not (folder / f).is_file()]


CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def read_cifar_batches(root: str | os.PathLike, files: tuple[str, ...]) -> torch.Tensor:
    """Read CIFAR pickle batches into one uint8 tensor ``[N, 3, 32, 32]`` (file order, then row order)."""
    return read_cifar(root, files)[0]


def read_cifar(root: str | os.PathLike, files: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The images of :func:`read_cifar_batches` and their int64 class labels ``[N]`` (the batches' ``labels``,
    0..9 in the release's order, :data:`CLASS_NAMES`)."""
    folder = find_cifar10_dir(root)
    missing = _missing_batches(folder, files)
    if missing:
        raise DatasetNotFoundError(_how_to_get(Path(root).expanduser(), f"missing {missing} in {folder}"))
    arrays, labels = [], []
    for f in files:
        path = folder / f
        try:
            with open(path, "rb") as fh:
                entry = DataOnlyUnpickler(fh, encoding="latin1").load()
            data = entry["data"] if "data" in entry else entry[b"data"]
            data = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32)
            label = entry["labels"] if "labels" in entry else entry[b"labels"]
            label = np.asarray(label, dtype=np.int64).reshape(-1)
            if label.shape[0] != data.shape[0]:
                raise ValueError(f"{label.shape[0]} labels for {data.shape[0]} images")
        except UnsafePickleError as e:
            raise UnsafePickleError(
                f"{path}: {e}. Delete {folder} and get CIFAR-10 again from its official release (data.download=true)."
            ) from None
        except Exception as e:  # re-raised with the file name
            raise DatasetNotFoundError(
                f"Could not read CIFAR-10 batch {path}: {type(e).__name__}: {e}. The file looks corrupted; "
                f"delete {folder} and re-download with data.download=true."
            ) from e
        arrays.append(data)
        labels.append(label)
    images = torch.from_numpy(np.concatenate(arrays, axis=0))
    if images.shape[0] == 0:
        raise DatasetNotFoundError(_how_to_get(Path(root).expanduser(), f"the batches in {folder} are empty"))
    return images.contiguous(), torch.from_numpy(np.concatenate(labels))


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10, image_shape ``(3, 32, 32)``; paper: global batch 128, random flips.

    Args:
        root: folder containing ``cifar-10-batches-py`` (yaml default ``$DDPM_DATA/cifar10``).
        download: download with torchvision in ``prepare_data`` when true; never otherwise.
        val_size: size of the validation subset drawn (seeded) from the test split; None = all 10k.
        Other args (``batch_size`` default 128, ``random_flip`` default True, ``seed`` of the val subset, ...):
        see :class:`~ddpm.core.data.base.ImageDataModule`.
    """

    def __init__(
        self, root: str = "./data/cifar10", download: bool = False, val_size: int | None = None, **loader: Any
    ) -> None:
        super().__init__(**loader)
        self.root = str(root)
        self.download = bool(download)
        if val_size is not None and int(val_size) < 1:
            raise ValueError(f"data.val_size must be >= 1 or null, got {val_size}")
        self.val_size = None if val_size is None else int(val_size)
        self.image_shape = (3, 32, 32)
        self.name = "cifar10"

    def prepare_data(self) -> None:
        # Download only when asked (data.download=true). Runs on one process per node.
        if not self.download:
            return
        root = Path(self.root).expanduser()
        folder = find_cifar10_dir(root)
        if not _missing_batches(folder):
            return
        # torchvision's address and md5 of the release; not its CIFAR10 class, which unpickles without limits
        from torchvision.datasets import CIFAR10
        from torchvision.datasets.utils import download_and_extract_archive

        created = [p for p in (root, *root.parents) if not p.exists()]
        os.makedirs(root, exist_ok=True)
        try:
            download_and_extract_archive(CIFAR10.url, str(root), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)
        except Exception as e:  # no network, a proxy's HTML page instead of the archive (md5 mismatch), ...
            (root / CIFAR10.filename).unlink(missing_ok=True)  # a partial archive
            for p in created:  # the folders this attempt made, if still empty: nothing left behind
                with contextlib.suppress(OSError):
                    p.rmdir()
            raise DownloadError(
                f"Downloading CIFAR-10 into {root} failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
                f"On a machine without internet, copy {CIFAR10.filename} (md5 {CIFAR10.tgz_md5}) or its unpacked "
                f"{BASE_FOLDER}/ folder there yourself and run with data.root={root} (data.download=false)."
            ) from e
        missing = _missing_batches(folder)
        if missing:
            raise DatasetNotFoundError(_how_to_get(root, f"the downloaded archive did not contain {missing}"))

    def _build_splits(self) -> dict[str, Dataset]:
        train, train_y = read_cifar(self.root, TRAIN_FILES)
        test, test_y = read_cifar(self.root, TEST_FILES)
        if self.val_size is None or self.val_size >= test.shape[0]:
            val, val_y = test, test_y
        else:
            g = torch.Generator().manual_seed(self.seed)
            idx = torch.randperm(test.shape[0], generator=g)[: self.val_size].sort().values
            val, val_y = test[idx].contiguous(), test_y[idx].contiguous()
        return {"train": TensorImages(train, train_y), "val": TensorImages(val, val_y),
                "test": TensorImages(test, test_y)}

    def class_names(self) -> list[str]:
        """The ten CIFAR-10 classes in the release's label order."""
        return list(CLASS_NAMES)
