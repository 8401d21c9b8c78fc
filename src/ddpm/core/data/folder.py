"""Folders of image files: any folder (``image_folder``); CelebA-HQ 256 and LSUN 256 (church, bedroom, cat) are
the same reader with the settings of their YAML files (``conf/data/``).

**What is read.** Every file under ``root`` (nested folders included, symlinks followed, hidden files and
folders skipped) whose extension is one of ``.png .jpg .jpeg .webp .bmp`` (any case). Other files are
ignored. Files are listed in sorted relative-path order, so splits and ``iter_uint8`` are deterministic.

**Splits.**

* If ``root/train/`` exists, the folders are the splits: ``train/`` is the training set, ``val/`` (or
  ``valid/``, ``validation/``) the validation set and ``test/`` the test set; a missing ``val/`` uses
  ``test/`` and a missing ``test/`` uses ``val/``. When neither exists, they are carved out of ``train/``
  as below.
* Otherwise all images are shuffled with a generator seeded by ``seed`` and ``test_fraction`` and
  ``val_fraction`` of them (at least one image each when > 0) are held out; the rest is the training set.
  The defaults hold out 1% each (for CelebA-HQ's 30k images: 300 val, 300 test, 29 400 train).

**Preprocessing** (per image, when it is read):

1. decode with Pillow; a file that cannot be decoded raises :class:`ImageDecodeError` naming the file (a
   file that is really an HTML page, e.g. a Google-Drive quota page saved under an image name, is
   reported as such);
2. convert to RGB: grayscale (``L``, 16-bit ``I;16``), palette (``P``), CMYK etc. are converted to RGB;
   images with transparency (``RGBA``, ``LA``, ``P`` with a transparent colour) are composited onto a
   white background;
3. resize so that the SHORT side equals ``resolution`` with bicubic interpolation (Pillow's resize is
   antialiased, so large downscales do not alias), then center crop to ``resolution x resolution``.
   Images that are already ``resolution x resolution`` are left untouched; smaller images are upscaled.

This is the usual DDPM-style preprocessing (improved-diffusion ``image_datasets.py``: downscale the short
side, bicubic, then center crop; StyleGAN's ``dataset_tool`` for LSUN: center crop then resize). Data
already prepared at 256x256 (as the paper used) pass through unchanged.

Images are read lazily (LSUN is too large to keep in memory); use ``num_workers`` to decode in parallel.

**Classes** (class-conditional training, ``model.num_classes=K``; torchvision's ``ImageFolder`` convention): when
every image of a split lies in a subfolder of the split's folder (``root/`` or ``root/train/``...), the
subfolders are the classes, label ``i`` = the ``i``-th name in sorted order (written into the checkpoint). A
folder with images directly in it, or ``class_folders=false`` (CelebA-HQ, LSUN), is unlabelled.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ddpm.core.data.base import DatasetNotFoundError, ImageDataModule, seeded_split

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VAL_DIR_NAMES = ("val", "valid", "validation")


class ImageDecodeError(RuntimeError):
    """An image file could not be decoded; the message names the file."""


def list_images(root: str | os.PathLike) -> list[Path]:
    """Image files under ``root`` (recursive, case-insensitive extensions, hidden entries skipped), sorted."""
    root = Path(root)
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(dirpath) / f)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _looks_like_html(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(512).lstrip().lower()
    except OSError:
        return False
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")) or b"<html" in head


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; transparency is composited onto white."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 / 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 1.0
        img = Image.fromarray(np.clip(np.round(arr * scale), 0, 255).astype(np.uint8), mode="L")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def resize_center_crop(img: Image.Image, resolution: int) -> Image.Image:
    """Resize the short side to ``resolution`` (bicubic, antialiased), then center crop to a square."""
    w, h = img.size
    if (w, h) == (resolution, resolution):
        return img
    scale = resolution / min(w, h)
    new_w, new_h = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
    left, top = (new_w - resolution) // 2, (new_h - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


def load_image(path: str | os.PathLike, resolution: int) -> torch.Tensor:
    """Read one file -> uint8 ``[3, resolution, resolution]`` (RGB, short-side resize, center crop)."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            img = to_rgb(img)
    except Exception as e:  # Pillow raises several types (UnidentifiedImageError, OSError, SyntaxError, ...)
        hint = ""
        if _looks_like_html(path):
            hint = (
                " The file is an HTML/XML page, not an image: the download probably hit a quota or an "
                "error page (common with Google Drive); download it again."
            )
        raise ImageDecodeError(
            f"Could not decode image file {path}: {type(e).__name__}: {e}.{hint} Remove or replace it."
        ) from e
    img = resize_center_crop(img, resolution)
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def _check_header(path: Path) -> str | None:
    """``None`` when Pillow recognises ``path`` as an image (its header only), else why not."""
    try:
        with Image.open(path) as img:
            img.size  # noqa: B018 - parsed from the header
        return None
    except Exception as e:  # noqa: BLE001 - Pillow raises several types
        hint = " (an HTML/XML page, not an image: download it again)" if _looks_like_html(path) else ""
        return f"{path}: {type(e).__name__}: {str(e)[:120]}{hint}"


def verify_images(files: list[Path], threads: int = 8) -> None:
    """Open every file's header; raise :class:`ImageDecodeError` listing the files that are no images."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=threads) as pool:
        bad = [b for b in pool.map(_check_header, files, chunksize=256) if b is not None]
    if bad:
        shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ImageDecodeError(
            f"{len(bad)} of {len(files)} files under data.root are not readable images: {shown}. Remove or "
            "replace them (data.verify=false skips this check, and such a file then stops training when read)."
        )


class ImageFiles(Dataset):
    """Dataset of image files; item ``i`` is :func:`load_image` of ``files[i]`` (uint8 ``[3, R, R]``);
    ``labels`` (int64 ``[N]``, optional) the class of each file."""

    def __init__(self, files: list[Path], resolution: int, labels: torch.Tensor | None = None) -> None:
        self.files = list(files)
        self.resolution = int(resolution)
        self.labels = labels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        return load_image(self.files[index], self.resolution)


class ImageFolderDataModule(ImageDataModule):
    """Any folder tree of images, RGB, ``resolution x resolution``; see the module docstring for the rules.

    CelebA-HQ and LSUN are this class with their own settings (``conf/data/celebahq256.yaml``,
    ``conf/data/lsun_*256.yaml``): resolution, name, flips and ``how_to_get``.

    Args:
        root: the folder (searched recursively).
        resolution: output side length (short-side bicubic resize + center crop).
        val_fraction, test_fraction: held-out fractions when there is no ``train/`` subfolder (default 0.01).
        name: dataset name (FID reference-stats cache key); default ``image_folder_<resolution>``.
        how_to_get: how to obtain the data, appended to the "not found" message.
        class_folders: read the classes from the subfolders (see the module docstring); false: unlabelled.
        verify: open every file's header when the splits are built (threads; about a minute per million
            files), so that a file that is no image stops the run before training, naming the file.
        batch_size: GLOBAL training batch (default 64).
        Other args (``num_workers``, ``random_flip``, ...): see :class:`~ddpm.core.data.base.ImageDataModule`.
    """

    def __init__(
        self,
        root: str,
        resolution: int = 64,
        val_fraction: float = 0.01,
        test_fraction: float = 0.01,
        name: str | None = None,
        how_to_get: str = "",
        verify: bool = True,
        batch_size: int = 64,
        class_folders: bool = True,
        **loader: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, **loader)
        if root is None or str(root) in ("", "???"):
            raise ValueError("data.root must be set to a folder of images (e.g. data.root=/path/to/images)")
        if int(resolution) < 1:
            raise ValueError(f"data.resolution must be >= 1, got {resolution}")
        self.root = str(root)
        self.resolution = int(resolution)
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.how_to_get = str(how_to_get or "").strip()
        self.verify = bool(verify)
        self.class_folders = bool(class_folders)
        self._classes: list[str] | None = None
        self.image_shape = (3, self.resolution, self.resolution)
        self.name = name if name else f"image_folder_{self.resolution}"

    def _not_found(self, problem: str) -> DatasetNotFoundError:
        ext = " ".join(IMAGE_EXTENSIONS)
        msg = (
            f"{self.name}: {problem}. Expected image files ({ext}, any case, nested folders allowed) under "
            f"data.root={Path(self.root).expanduser().resolve()} -- either directly (a seeded "
            f"val_fraction/test_fraction is held out) or in train/ [val/] [test/] subfolders. Set "
            f"data.root=/path/to/images (default roots live under $DDPM_DATA, which defaults to ./data)."
        )
        if self.how_to_get:
            msg += " " + self.how_to_get
        return DatasetNotFoundError(msg)

    def _list(self, folder: Path) -> list[Path]:
        files = list_images(folder)
        if not files:
            raise self._not_found(f"no image files found in {folder.resolve()}")
        return files

    def _build_splits(self) -> dict[str, Dataset]:
        root = Path(self.root).expanduser()
        if not root.is_dir():
            raise self._not_found(f"the folder {root.resolve()} does not exist")
        fractions = {"test": self.test_fraction, "val": self.val_fraction}
        bases = {k: root for k in ("train", "val", "test")}
        if (root / "train").is_dir():
            train = self._list(root / "train")
            val_dir = next((root / d for d in VAL_DIR_NAMES if (root / d).is_dir()), None)
            test_dir = root / "test" if (root / "test").is_dir() else None
            val = self._list(val_dir) if val_dir is not None else None
            test = self._list(test_dir) if test_dir is not None else None
            if val is None and test is None:
                files = {
                    k: [train[i] for i in v.tolist()]
                    for k, v in seeded_split(len(train), fractions, self.seed).items()
                }
            else:
                files = {
                    "train": train,
                    "val": val if val is not None else test,
                    "test": test if test is not None else val,
                }
                bases = {"train": root / "train", "val": val_dir or test_dir, "test": test_dir or val_dir}
            if val is None and test is None:
                bases = {k: root / "train" for k in bases}
        else:
            all_files = self._list(root)
            idx = seeded_split(len(all_files), fractions, self.seed)
            files = {k: [all_files[i] for i in v.tolist()] for k, v in idx.items()}
        if self.verify:
            verify_images(sorted({f for v in files.values() for f in v}))
        labels = self._labels(files, bases) if self.class_folders else None  # type: ignore[arg-type]
        return {k: ImageFiles(v, self.resolution, None if labels is None else labels[k])  # type: ignore[arg-type]
                for k, v in files.items()}

    def _labels(self, files: dict[str, list[Path]], bases: dict[str, Path]) -> dict[str, torch.Tensor] | None:
        """Each split's labels from the first folder under its base, or ``None`` when some image has none."""
        names = {k: [f.relative_to(bases[k]).parts for f in v] for k, v in files.items()}
        if any(len(p) < 2 for parts in names.values() for p in parts):
            return None
        classes = sorted({p[0] for p in names["train"]})
        index = {c: i for i, c in enumerate(classes)}
        for k, parts in names.items():
            if unknown := sorted({p[0] for p in parts} - set(index)):
                raise ValueError(f"{self.name}: the {k} split has class folders {unknown[:5]} that the train split "
                                 f"lacks (its classes: {classes[:10]}); every class needs training images.")
        self._classes = classes
        return {k: torch.tensor([index[p[0]] for p in parts], dtype=torch.int64) for k, parts in names.items()}

    def class_names(self) -> list[str] | None:
        """The class subfolders in label order, ``None`` when the folder is unlabelled (reads the listing)."""
        self.splits()
        return self._classes
