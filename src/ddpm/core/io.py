"""Files: a writable-folder check before any work, one atomic writer (a temporary file in the destination
folder, then ``os.replace``) behind every output this project writes (JSON, npz, PNG, CSV, checkpoints), and
the one safe checkpoint reader (``torch.load(weights_only=True)`` with errors that say what is wrong).

An interrupted process therefore never leaves a half-written file, and a crash never replaces a good one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch


class CheckpointError(ValueError):
    """A file that cannot be used as a checkpoint of this project (its message says why and what to do)."""


class DownloadError(ConnectionError):
    """Something asked to be downloaded could not be (offline, moved); the message names the offline fix."""


class MissingDependencyError(ImportError):
    """An optional package that a feature needs is not installed; the message says what to install."""


class DiskFullError(OSError):
    """A write that ran out of space (ENOSPC) or quota (EDQUOT). One line names the file, the space it needed
    and the space free; a command may add how to go on (:meth:`with_hint`). Build it with :func:`disk_full`."""

    def __init__(self, message: str, code: int, filename: str) -> None:
        super().__init__(message)
        self.errno, self.filename = code, filename

    def with_hint(self, hint: str) -> DiskFullError:
        return DiskFullError(f"{self.args[0]} {hint}", self.errno, self.filename)


class RankFailedError(RuntimeError):
    """Another process of a multi-process (DDP) run died; the message says which, if known, and how to resume."""


_DISK_FULL = {errno.ENOSPC: "No space left on device (ENOSPC)", errno.EDQUOT: "Disk quota exceeded (EDQUOT)"}


def disk_full_code(e: BaseException) -> int | None:
    """``errno.ENOSPC`` / ``errno.EDQUOT`` when ``e`` or an exception it was raised from is a full disk or quota
    (torch reports an ``OSError`` raised in its writer as a ``RuntimeError`` *from* it; libraries written in
    other languages only in their message), else ``None``."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _DISK_FULL:
            return e.errno
        text = str(e)
        for code in _DISK_FULL:
            if os.strerror(code) in text or f"os error {code})" in text:
                return code
        e = e.__cause__ or e.__context__
    return None


def disk_full(e: BaseException, path: str | os.PathLike | None = None, needed: int | None = None,
              written: int = 0) -> DiskFullError | None:
    """``e`` as a :class:`DiskFullError` (``None`` if it is not a full disk or quota): the file being written
    (``path``, else the one the error names; a temporary name of :func:`atomic_write` is shown as the file it
    stands for), the space it needs (``needed`` bytes, an estimate, else more than the ``written`` bytes that
    fitted) and the space free on that file system."""
    if isinstance(e, DiskFullError):
        return e
    code = disk_full_code(e)
    if code is None:
        return None
    if path is None:
        cause = e
        while cause is not None and not (isinstance(cause, OSError) and cause.filename):
            cause = cause.__cause__ or cause.__context__
        path = cause.filename if cause is not None else None
    shown = destination(path) if path is not None else None
    folder = shown.parent if shown is not None else Path(".")
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = _human(shutil.disk_usage(folder).free)
    except OSError:
        free = "an unknown amount"
    if needed:
        need = f"about {_human(needed)}"
    elif written:
        need = f"more than the {_human(written)} written when it ran out"
    else:
        need = "more than was free"
    where = f"{free} is free on that file system" + (
        " (the quota, not the disk, ran out: `quota -s` shows yours)" if code == errno.EDQUOT else "")
    message = (f"{_DISK_FULL[code]} writing {shown or 'a file'}: it needs {need}, and {where}. Nothing was "
               "replaced and no temporary file is left. Free some space (or write somewhere else) and run again.")
    return DiskFullError(message, code, str(shown or ""))


def destination(path: str | os.PathLike) -> Path:
    """``path`` with each temporary name of :func:`atomic_write` (``.NAME.<random>.tmp[.ext]``, also a staging
    folder made the same way) replaced by the ``NAME`` it stands for: the file the user asked for."""
    parts = [_TMP_NAME.sub(r"\1", part) for part in Path(path).parts]
    return Path(*parts) if parts else Path(path)


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _nbytes(obj: Any) -> int:
    """The bytes of the tensors and arrays in ``obj`` (nested dicts, lists, tuples): a checkpoint's size."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_nbytes(v) for v in obj)
    return 0


def check_writable(
    out_dir: str | os.PathLike, option: str = "out_dir", fix: str = "Pass out_dir=A_WRITABLE_FOLDER."
) -> Path:
    """Create ``out_dir`` and check that files can be written there, before any sampling (or training).

    ``option`` names the setting in the error and ``fix`` says what to do (train.py: ``paths.output_dir``).
    """
    out = Path(str(out_dir)).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise PermissionError(
            f"{option}={str(out_dir)!r} cannot be created or written: not writable ({type(e).__name__}: {e}). {fix}"
        ) from e
    return out


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, suffix: str = "", size: int | None = None) -> Iterator[Path]:
    """``with atomic_write(path) as tmp:`` write ``tmp``; on success it replaces ``path`` in one step (after
    an fsync), on an exception it is removed and ``path`` is untouched. ``suffix`` keeps an extension that a
    writer insists on (``np.savez`` appends ``.npz``, PIL and matplotlib pick the format from it).

    A full disk or quota (ENOSPC / EDQUOT, at any point: the temporary file, a write, the fsync) raises
    :class:`DiskFullError` naming ``path``, ``size`` (the bytes it needs, an estimate; else what was written
    when the space ran out) and the space free."""
    import tempfile

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # a unique name in the destination folder (ranks on different nodes may share a pid and a file system)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f"{_TMP}{suffix}", dir=path.parent)
    except OSError as e:
        full = disk_full(e, path, size)
        if full is None:
            raise
        raise full from e
    os.close(fd)
    tmp = Path(name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the result gets the usual permissions
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except Exception as e:
        full = disk_full(e, path, size, written=tmp.stat().st_size if tmp.is_file() else 0)
        if full is None or full is e:
            raise
        raise full from e
    finally:
        tmp.unlink(missing_ok=True)


_TMP = ".tmp"  # atomic_write's temporary files: .<name>.<random>.tmp[<suffix>]
_TMP_NAME = re.compile(rf"^\.(.+)\.[^.]+{re.escape(_TMP)}(\.\w+)?$")


def temp_files(folder: str | os.PathLike) -> list[Path]:
    """The temporary files of :func:`atomic_write` in ``folder`` (left there only by a killed process)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _TMP_NAME.match(p.name) and p.is_file())


def write_json(path: str | os.PathLike, data: dict) -> None:
    """Write ``data`` as indented, key-sorted JSON, atomically."""
    text = json.dumps(data, indent=2, sort_keys=True, default=str)
    with atomic_write(path, size=len(text.encode())) as tmp:
        tmp.write_text(text)


def atomic_savez(path: str | os.PathLike, **arrays) -> None:
    """``np.savez`` to ``path``, atomically."""
    with atomic_write(path, suffix=".npz", size=_nbytes(list(arrays.values()))) as tmp:
        np.savez(tmp, **arrays)


def save_png(image_hwc: torch.Tensor | np.ndarray, path: str | os.PathLike) -> None:
    """Write a uint8 ``[H, W, C]`` image (C = 1 or 3) as PNG, atomically."""
    from PIL import Image

    arr = image_hwc.cpu().numpy() if torch.is_tensor(image_hwc) else np.asarray(image_hwc)
    with atomic_write(path, suffix=".png") as tmp:
        Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(tmp, format="PNG")


def make_grid_uint8(images: torch.Tensor, nrow: int | None = None, pad: int = 2, upscale: int = 1) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` -> one uint8 grid ``[H', W', C]`` (C = 1 or 3), nearest-upscaled by ``upscale``,
    ``nrow`` images per row (default: a square), white padding."""
    import math

    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    if upscale > 1:
        images = images.repeat_interleave(upscale, dim=2).repeat_interleave(upscale, dim=3)
        h, w = h * upscale, w * upscale
    rows = math.ceil(n / nrow)
    grid = torch.full((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), 255, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, y : y + h, x : x + w] = images[i]
    return grid.permute(1, 2, 0).contiguous()


# ------------------------------------------------------------------------------------------- checkpoints
def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path``, atomically: a kill -9 at any moment leaves the previous file intact."""
    with atomic_write(path, size=_nbytes(obj)) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def safe_load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """``torch.load(weights_only=True)``; a file that is not a readable torch checkpoint (text, empty,
    truncated, another framework's, or one holding Python objects) raises :class:`CheckpointError` with one
    line that says which."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): not a checkpoint. {_RETRY}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if _is_forbidden_object(e):
            raise CheckpointError(
                f"Refusing to load {path}: it contains Python objects beyond tensors and plain containers, "
                "which could run code when unpickled (loaded with weights_only=True). Only load checkpoints "
                f"you created. Details: {_weights_only_detail(e)}"
            ) from e
        raise CheckpointError(f"{path} is not a checkpoint ({_file_kind(path)}). {_RETRY}") from e
    except Exception as e:  # torch raises KeyError/IndexError/RuntimeError/EOFError on foreign bytes
        raise CheckpointError(f"{path} is not a checkpoint ({_file_kind(path)}). {_RETRY}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dictionary. {_RETRY}")
    return obj


_RETRY = "Pass a .ckpt file written by train.py (or an earlier one from the same checkpoints/ folder)."


def _file_kind(path: Path) -> str:
    """A few words on what the file looks like, for the error message."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive that torch cannot read: truncated or corrupt"
    if head[:1] == b"\x80":
        return "a pickle that torch cannot read: truncated, corrupt or from another program"
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file (Keras/TensorFlow?)"
    if len(head) >= 8 and int.from_bytes(head[:8], "little") < 1 << 24 and head[8:9] == b"{":
        return "a safetensors file: use pretrained=PATH for published weights"
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return "unrecognised bytes"


def _is_forbidden_object(e: Exception) -> bool:
    text = str(e)
    return "Unsupported global" in text or "Unsupported class" in text


def _weights_only_detail(e: Exception) -> str:
    """The part of torch's weights_only message that names the problem (not its advice to load unsafely)."""
    found = re.search(r"Unsupported (?:global|class|operand)[^\n]*?(?= Please use|\.\s|$)", str(e), re.M)
    if found:
        return found.group(0)
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0][:200] if lines else type(e).__name__
